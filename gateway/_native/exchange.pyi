"""One request/response exchange (native/exchange.pyx): admission, request
buffering, the upstream attempt, relaying the response, tunnels.

Import through `gateway.proxy.exchange`, whose docstring describes the
lifecycle and invariants. A cdef class: attributes cannot be added to it,
and a Python subclass overrides a method only where the method is `cpdef`.
"""

from typing import Any

from gateway._native.head import RequestHead, ResponseHead
from gateway._native.link import ClientLink, ExchangeLink
from gateway._native.upstream import UpstreamConnection, UpstreamServer

# Exchange states (Exchange.state).
WAITING: int
ADMITTING: int
CONNECTING: int
SENT: int
RESPONDING: int
TUNNEL: int
DONE: int
RECEIVING: int

CONTINUE_100: bytes
LAST_CHUNK: bytes
CRLF: bytes

# Reasons a client connection's reading is paused (bits of pause_mask).
PAUSE_BUFFER: int
PAUSE_UPSTREAM: int
PAUSE_PIPELINE: int
PAUSE_ADMISSION: int
PAUSE_TUNNEL: int

TUNNEL_CLIENT_EOF: int
TUNNEL_UPSTREAM_EOF: int

class Exchange(ExchangeLink):
    """One request/response exchange between a client connection and an upstream."""

    client: ClientLink
    head: RequestHead | None
    school: Any
    klass: int
    state: int
    upstream: UpstreamConnection | None
    server: UpstreamServer | None
    body_buf: list[bytes] | None
    body_buffered: int
    request_done: bool
    keep_alive: bool
    is_head: bool
    is_connect: bool
    out_chunked: bool
    continue_sent: bool
    attempts: int
    sent_at: float
    touched: float
    local: bytes | None
    tunnel_buf: list[bytes] | None
    tunnel_eof: int
    pending: list[bytes] | None
    ticket: Any
    response_headers: list[tuple[bytes, bytes]] | None
    """Headers the gateway adds to the upstream's response head (None: none)."""
    spool: Any
    """The body held at the gateway (gateway.proxy.spool.BodySpool) from
    receive_body() until it has been forwarded; None otherwise."""
    body_received: bool
    """The client has sent the whole body (request_done: it has also been
    written to the upstream, or is complete in body_buf)."""
    up_chunked: bool
    body_since: float
    arrived_at: float
    """Unix time of the first admission request, when the request gave its
    slot back to read its body (0.0 otherwise)."""
    wait_left: float
    # The access log's fields (gateway._native.accesslog), recorded once at the end.
    decision: int
    """accesslog.WAITING/REFUSED/LOCAL for an answer the gateway made itself
    (set by whoever made it); -1: the admission's (ADMITTED or QUEUED)."""
    reason: str | None
    """Why the gateway answered itself, short (the log's "reason")."""
    status: int
    """The status sent to the client (0: nothing yet)."""
    queued: bool
    queue_time: float
    """Seconds the request waited in line for admission."""
    bytes_in: int
    bytes_out: int
    logged: bool
    replaces: Exchange | None
    """For a refusal: the half-read request it cut short (named in its line)."""
    def __init__(self, client: ClientLink, head: RequestHead | None, school: Any,
                 klass: int) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...
    def body_first(self) -> bool:
        """Whether the body is to be received whole before the request asks
        for a slot (its school has request_buffering, a body is announced,
        and it is neither all here nor being received)."""
    def receive_body(self) -> None:
        """Read the body into a spool without a slot (state RECEIVING), with
        100 Continue if asked; the request asks for admission once the body
        is complete or outgrows the school's request_buffer_max."""
    def body_deadline(self, timeouts: Any) -> float:
        """Monotonic time by which a body being received must be complete:
        client_body_total plus one second per client_body_min_rate bytes."""
    def start(self) -> None: ...
    def admitted(self) -> None: ...
    def rejected(self, response: bytes) -> None: ...
    def settle_keep_alive(self) -> bool: ...
    def on_interim_response(self, conn: UpstreamConnection, head: ResponseHead) -> None: ...
    def on_response_head(self, conn: UpstreamConnection, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self, conn: UpstreamConnection, reusable: bool) -> None: ...
    def on_upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None: ...
    def on_upstream_write_paused(self) -> None: ...
    def on_upstream_write_resumed(self) -> None: ...
    def timed_out(self) -> None: ...
    def on_upstream_upgraded(self, rest: bytes) -> None: ...
    def on_tunnel_established(self, conn: UpstreamConnection, head: ResponseHead) -> None:
        """A 2xx answer to CONNECT: the tunnel starts after its head (RFC 9110 9.3.6)."""
    def on_tunnel_client_data(self, data: bytes) -> None: ...
    def on_tunnel_upstream_data(self, data: bytes) -> None: ...
    def on_tunnel_upstream_eof(self) -> None: ...
    def on_tunnel_client_eof(self) -> None: ...
    def on_tunnel_upstream_lost(self) -> None: ...
    def on_client_lost(self) -> None: ...
