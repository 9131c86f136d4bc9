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
  last chunk and trailers, via ChunkedFraming), so nothing after the end of a
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

Reusing a pooled connection (UpstreamServer.reuse_limit): a request sent just
as the upstream closes an idle connection is lost, and a POST cannot be sent
again. So a connection is reused only while its idle time is below what is
known of the upstream's keep-alive timeout, less max(REUSE_MARGIN,
REUSE_MARGIN_SHARE of it):
- the `timeout` parameter of its `Keep-Alive` response header (RFC 2068
  section 19.7.1.1; read before the hop-by-hop header is dropped);
- the shortest idle time at which it closed a pooled connection (that close
  says its timeout is at most that), forgotten when another connection is
  seen still open after a longer idle time (then the close was a restart or
  a crash, not the timeout);
- with neither, the longest idle time a pooled connection was seen to
  survive, but at least UNPROVEN_IDLE.
Connections too idle to reuse stay in the pool, unused, until the upstream
or upstream_idle closes them: when the upstream does is what keeps the
estimate current. A request that fails on a reused connection before any
byte of an answer dates the timeout too, and is retried (if replayable) on
a new connection, never on another pooled one.

The implementation is compiled: native/upstream.pyx (gateway._native.upstream), as
cdef classes so the per-request calls between them are C calls. A request
walks down native/client.pyx -> exchange.pyx -> upstream.pyx; calls back up
go through the base classes of native/link.pyx (ClientLink, ExchangeLink).
"""

from gateway._native.upstream import (
    FAIL_COOLDOWN,
    FAIL_THRESHOLD,
    REUSE_MARGIN,
    REUSE_MARGIN_SHARE,
    UNPROVEN_IDLE,
    Balancer,
    UpstreamConnection,
    UpstreamServer,
)

__all__ = ["FAIL_COOLDOWN", "FAIL_THRESHOLD", "REUSE_MARGIN", "REUSE_MARGIN_SHARE",
           "UNPROVEN_IDLE", "Balancer", "UpstreamConnection", "UpstreamServer"]
