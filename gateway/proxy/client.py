"""Client side of the proxy: one Protocol per accepted connection.

httptools parses straight into this object's callbacks from data_received;
each complete request head becomes an Exchange queued on the connection.
The exchange at the head of the queue is the only one talking to an
upstream, which keeps pipelined responses in order without buffering them.

Limits httptools does not enforce itself are enforced here, as bytes arrive:
request-line length (414), header count and header-block size (431), chunk
extension size (400), and the total-header and keep-alive deadlines (408 /
close) through the worker's reaper, which calls check_timeouts().

The implementation is compiled: native/client.pyx (gateway._native.client), as
cdef classes so the per-request calls between them are C calls. A request
walks down native/client.pyx -> exchange.pyx -> upstream.pyx; calls back up
go through the base classes of native/link.pyx (ClientLink, ExchangeLink).
"""

from gateway._native.client import (
    BODY,
    BROKEN,
    CLOSED,
    HEAD,
    IDLE,
    LINGER,
    LINGER_SECONDS,
    UPGRADE_WAIT,
    UPGRADED,
    ClientProtocol,
)

__all__ = [
    "BODY", "BROKEN", "CLOSED", "HEAD", "IDLE", "LINGER", "LINGER_SECONDS", "UPGRADED",
    "UPGRADE_WAIT", "ClientProtocol",
]
