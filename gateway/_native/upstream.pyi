"""The upstream side of the proxy (native/upstream.pyx): upstream
connections (response framing), each server's keep-alive pool and health,
and the balancer over a school's servers.

Import through `gateway.proxy.upstream`, whose docstring describes pooling
and reuse. These are cdef classes: attributes cannot be added to them.
"""

import asyncio
from collections import deque
from typing import Any

from gateway._native.link import ExchangeLink

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
    exchange: ExchangeLink | None
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
    connect_failures: int
    """Connects that failed or timed out (upstream_connect), ever."""
    retries: int
    """Requests sent to another attempt after this server failed them."""
    timeouts: int
    """Connect (upstream_connect) and read (upstream_read) timeouts, ever."""
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
    def learn_keep_alive(self, value: bytes | None) -> None:
        """The latest response's Keep-Alive header value (None: it had none), e.g.
        b"timeout=5, max=100" (RFC 2068 section 19.7.1.1): its timeout parameter
        (whole seconds) is the idle timeout learned from headers until the next
        response; a value without a readable timeout, or no header, clears it."""
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
