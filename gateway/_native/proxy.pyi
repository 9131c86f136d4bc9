"""The proxy's per-request protocol objects (native/proxy.pyx).

Import through `gateway.proxy.client`, `gateway.proxy.exchange` and
`gateway.proxy.upstream`, whose docstrings describe the lifecycles and
invariants. These are cdef classes: attributes cannot be added to them, and
a Python subclass overrides a method only where the method is `cpdef`.
"""

import asyncio
from collections import deque
from typing import Any

from gateway._native.head import RequestHead, ResponseHead
from gateway.proxy.chunks import ChunkedFraming

# Client connection phases (ClientProtocol.phase); every phase from BROKEN on
# means "stop parsing".
IDLE: int
HEAD: int
BODY: int
UPGRADE_WAIT: int
BROKEN: int
LINGER: int
UPGRADED: int
CLOSED: int
LINGER_SECONDS: float

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

FAIL_THRESHOLD: int
"""Consecutive connect failures before a server is taken out of rotation."""
FAIL_COOLDOWN: float
"""Seconds a failing server stays out before one request probes it."""
REUSE_MARGIN: float
"""Seconds kept below a learned keep-alive timeout before a pooled connection
is no longer reused (or REUSE_MARGIN_SHARE of the timeout, if more)."""
REUSE_MARGIN_SHARE: float
"""Share of a learned keep-alive timeout kept as margin, if more than REUSE_MARGIN."""
UNPROVEN_IDLE: float
"""Idle seconds after which a pooled connection is reused while nothing is
known of its upstream's keep-alive timeout, unless one was seen to survive longer."""

class ClientProtocol:
    """One accepted client connection (an asyncio protocol, duck-typed): parses
    requests with httptools and queues one Exchange per request head."""

    app: Any
    proto: bytes
    transport: asyncio.Transport | None
    parser: Any
    queue: deque[Exchange]
    out: list[bytes]
    current: Exchange | None
    tunnel: Exchange | None
    phase: int
    since: float
    touched: float
    pause_mask: int
    write_paused: bool
    eof: bool
    error: Exception | None
    client_ip: bytes
    client_key: bytes
    school: int
    trusted_peer: bool
    chunks: ChunkedFraming
    """The verdict on where the current chunked request body ends."""
    def __init__(self, app: Any, proto: bytes = b"http") -> None: ...
    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def on_message_begin(self) -> None: ...
    def on_url(self, url: bytes) -> None: ...
    def on_header(self, name: bytes, value: bytes) -> None: ...
    def on_headers_complete(self) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_message_complete(self) -> None: ...
    def write(self, data: bytes) -> None: ...
    def writelines(self, parts: list[bytes]) -> None: ...
    def cork(self, data: bytes) -> None: ...
    def corklines(self, parts: list[bytes]) -> None: ...
    def flush(self) -> None: ...
    def write_eof(self) -> None: ...
    def pause_reading_for(self, reason: int) -> None: ...
    def resume_reading_for(self, reason: int) -> None: ...
    def exchange_done(self, ex: Exchange) -> None: ...
    def enter_tunnel(self, ex: Exchange) -> list[bytes]: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def check_timeouts(self, now: float) -> None: ...

class Exchange:
    """One request/response exchange between a client connection and an upstream."""

    client: ClientProtocol
    head: RequestHead | None
    school: Any
    klass: int
    state: int
    upstream: UpstreamConnection | None
    server: UpstreamServer | None
    body_buf: list[bytes]
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
    def __init__(self, client: ClientProtocol, head: RequestHead | None, school: Any,
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

class UpstreamConnection:
    """One upstream TCP connection (an asyncio protocol, duck-typed): idle in its
    server's pool or busy with exactly one Exchange, never pipelined.

    A response is read up to its end and no further: bytes after it mean the
    connection is closed, never pooled. Heads, chunk lines and trailers are
    held to the server's limits; over one, the connection is aborted and the
    exchange is told the upstream failed (see gateway/proxy/upstream.py)."""

    server: UpstreamServer
    transport: asyncio.Transport | None
    parser: Any
    exchange: Exchange | None
    closed: bool
    tunnel: bool
    reading_paused: bool
    idle_since: float
    """When it last went back to the pool (monotonic seconds)."""
    requests: int
    """Times it went back to the pool; above 0, a request on it is a reuse."""
    error: Exception | None
    """A limit broken inside an httptools callback, until data_received handles it."""
    def __init__(self, server: UpstreamServer) -> None: ...
    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def on_message_begin(self) -> None: ...
    def on_status(self, reason: bytes) -> None: ...
    def on_header(self, name: bytes, value: bytes) -> None: ...
    def on_headers_complete(self) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_message_complete(self) -> None: ...
    def write(self, data: bytes) -> None: ...
    def writelines(self, parts: list[bytes]) -> None: ...
    def write_eof(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...

class UpstreamServer:
    """One upstream host:port: its idle keep-alive pool (LIFO), what is known of
    its keep-alive timeout, the limits on what it may send, and health state.

    Times are monotonic seconds; `now` is passed in by the caller."""

    host: str
    port: int
    addr: str
    keepalive: int
    """Idle connections kept at most ([limits] upstream_keepalive)."""
    connect_timeout: float
    idle_timeout: float
    """Idle connections are closed after this ([timeouts] upstream_idle)."""
    max_buffer: int
    max_status_line: int
    """Bytes of a status line ([limits] max_request_line)."""
    max_header_bytes: int
    """Bytes of one head's or trailer section's fields, counted as name +
    value + 4 ([limits] max_header_bytes)."""
    max_headers: int
    """Fields in one head or trailer section ([limits] max_headers)."""
    max_chunk_ext: int
    """Bytes of a chunk-size or trailer line ([limits] max_chunk_ext)."""
    head_budget: int
    """Raw bytes all heads of one exchange (1xx ones included) may take:
    max_status_line + max_header_bytes."""
    idle: deque[UpstreamConnection]
    inflight: int
    total: set[UpstreamConnection]
    failures: int
    down_until: float
    loop: asyncio.AbstractEventLoop | None
    keep_alive_timeout: float
    """Seconds from its last Keep-Alive: timeout=N header; negative: none seen."""
    closed_idle: float
    """Shortest idle time at which it closed a pooled connection; negative: none
    (or forgotten, when a connection later outlived it)."""
    open_idle: float
    """Longest idle time at which a pooled connection was seen still open
    (lowered to any shorter closed_idle)."""
    def __init__(self, host: str, port: int, *, keepalive: int, connect_timeout: float,
                 idle_timeout: float, max_buffer: int, max_status_line: int,
                 max_header_bytes: int, max_headers: int, max_chunk_ext: int) -> None: ...
    def set_limits(self, max_status_line: int, max_header_bytes: int, max_headers: int,
                   max_chunk_ext: int) -> None:
        """Bound what this upstream may send (a reload passes its new [limits])."""
    def available(self, now: float) -> bool: ...
    def learn_keep_alive(self, value: bytes) -> None:
        """Note the timeout parameter (whole seconds) of a Keep-Alive header value,
        e.g. b"timeout=5, max=100" (RFC 2068 section 19.7.1.1); other values are
        ignored."""
    def observe_closed(self, idle: float) -> None:
        """The upstream closed a pooled connection idle for `idle` seconds (or one
        failed under a request before any answer): its timeout is at most that."""
    def observe_open(self, idle: float) -> None:
        """A pooled connection is still open after `idle` seconds: its timeout is
        longer, and a shorter closed_idle came from something else (a restart)."""
    def reuse_limit(self) -> float:
        """Idle seconds up to which a pooled connection is reused: the lowest of
        idle_timeout, keep_alive_timeout and closed_idle, each less its margin;
        with neither of the two known, open_idle less its margin but at least
        UNPROVEN_IDLE. Negative: no connection is reused."""
    def take_idle(self, now: float) -> UpstreamConnection | None:
        """The most recently pooled open connection if idle below reuse_limit(),
        else None (older ones stay pooled until they close or are reaped)."""
    async def connect(self) -> UpstreamConnection: ...
    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Return a connection whose exchange finished cleanly (the oldest idle
        one is closed if the pool is full)."""
    def forget(self, conn: UpstreamConnection) -> bool:
        """Drop a closed connection; whether it was idle in the pool."""
    def reap_idle(self, now: float) -> None:
        """Close connections idle for idle_timeout; the oldest one left is
        observed open."""
    def record_success(self) -> None: ...
    def record_failure(self, now: float) -> None: ...
    def close_all(self) -> None: ...

class Balancer:
    """Chooses among a school's upstream servers: round-robin or least in-flight,
    skipping servers taken out of rotation unless all of them are."""

    servers: list[UpstreamServer]
    least_inflight: bool
    def __init__(self, servers: list[UpstreamServer], least_inflight: bool) -> None: ...
    def pick(self, exclude: UpstreamServer | None = None) -> UpstreamServer: ...
