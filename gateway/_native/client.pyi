"""The client side of the proxy (native/client.pyx): one accepted client
connection and the framing verdict on each request it sends.

Import through `gateway.proxy.client`, whose docstring describes the limits
and timeouts. A cdef class: attributes cannot be added to it, and a Python
subclass overrides a method only where the method is `cpdef`.
"""

import asyncio
from typing import Any

from gateway._native.exchange import Exchange
from gateway._native.link import ClientLink
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


class ClientProtocol(ClientLink):
    """One accepted client connection (an asyncio protocol, duck-typed): parses
    requests with httptools and queues one Exchange per request head."""

    # app, ctx, client_key, proto, transport, touched, write_paused,
    # upstream_held, flushes, client_ip: ClientLink's.
    parser: Any
    """The httptools request parser; None on a connection the reaper found
    idle between requests (its next bytes make a new one)."""
    queue: list[Exchange]
    out: list[bytes] | None
    """Corked response bytes not yet flushed (None: none)."""
    current: Exchange | None
    tunnel: Exchange | None
    phase: int
    since: float
    pause_mask: int
    # Response spooling: bytes the transport could not take yet (a BodySpool
    # counted in spool.RESPONSE_STATS, None while the client keeps up), its
    # memory part (bytes, the school's response_buffer) and its bound before
    # the upstream is paused (bytes, response_buffer_max; 0: never spool).
    outspool: Any
    resp_memory: int
    resp_max: int
    eof: bool
    error: Exception | None
    school: int
    trusted_peer: bool
    chunks: ChunkedFraming | None
    """The verdict on where the current chunked request body ends (None until
    the connection's first chunked body)."""
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
    # write ... abort: ClientLink's (gateway/_native/link.pyi).
    def check_timeouts(self, now: float) -> None: ...
