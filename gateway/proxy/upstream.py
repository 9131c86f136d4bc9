"""Upstream side of the proxy: one Protocol per upstream TCP connection,
a keep-alive pool per upstream server, and the balancer over a school's servers.

Ownership: an UpstreamConnection belongs either to its pool (idle, reading
enabled so a close by the upstream is noticed at once) or to exactly one
Exchange (busy). It never carries two requests at once: we do not pipeline
to upstreams, so any byte arriving while idle is a protocol violation and
the connection is dropped rather than risk handing a stale response to the
next client.

Reading a response:
- llhttp is fed one piece at a time, each ending where the response's own
  framing says a head or body ends (the end of a head, Content-Length, the
  last chunk and trailers, via ChunkLimiter), so nothing after the end of a
  response is parsed as part of it. Bytes after the end, in the same read
  or while idle, mean the connection is closed, never pooled; so do a second
  response inside one read and a body after a HEAD answer. 1xx responses
  before the final one, in the same read or not, are part of the exchange.
- What an upstream sends is bounded like what a client sends ([limits]):
  the status line by max_request_line, each head's fields by max_headers
  and max_header_bytes, the raw bytes of an exchange's heads (1xx ones
  included) by max_request_line + max_header_bytes (counted before llhttp
  buffers an unfinished line), chunk-size and trailer lines by
  max_chunk_ext, trailer fields like head fields. Over a limit the upstream
  connection is aborted and the exchange goes on as if the upstream had
  failed: the "not answering" page (or one retry of a replayable request on
  a new connection) if nothing of the response reached the client yet, else
  the client's connection is cut.

The implementation is compiled: native/proxy.pyx (gateway._native.proxy),
as cdef classes so the per-request calls between them are C calls.
"""

from gateway._native.proxy import (
    FAIL_COOLDOWN,
    FAIL_THRESHOLD,
    Balancer,
    UpstreamConnection,
    UpstreamServer,
)

__all__ = ["FAIL_COOLDOWN", "FAIL_THRESHOLD", "Balancer", "UpstreamConnection", "UpstreamServer"]
