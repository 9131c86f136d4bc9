"""Upstream side of the proxy: one Protocol per upstream TCP connection,
a keep-alive pool per upstream server, and the balancer over a school's servers.

Ownership: an UpstreamConnection belongs either to its pool (idle, reading
enabled so a close by the upstream is noticed at once) or to exactly one
Exchange (busy). It never carries two requests at once: we do not pipeline
to upstreams, so any byte arriving while idle is a protocol violation and
the connection is dropped rather than risk handing a stale response to the
next client.

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
