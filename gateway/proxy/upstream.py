"""Upstream side of the proxy: one Protocol per upstream TCP connection,
a keep-alive pool per upstream server, and the balancer over a school's servers.

Ownership: an UpstreamConnection belongs either to its pool (idle, reading
enabled so a close by the upstream is noticed at once) or to exactly one
Exchange (busy). It never carries two requests at once: we do not pipeline
to upstreams, so any byte arriving while idle is a protocol violation and
the connection is dropped rather than risk handing a stale response to the
next client.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from gateway.http import HeadError, parse_response_head

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange

# Consecutive connect failures before a server is taken out of rotation, and
# how long it stays out before one request is let through as a probe.
FAIL_THRESHOLD = 3
FAIL_COOLDOWN = 5.0


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_head_only", "_head_seen", "_headers", "_interim", "_reason", "_until_close", "closed",
        "exchange", "idle_since", "parser", "reading_paused", "requests", "server",
        "transport", "tunnel",
    )

    def __init__(self, server: UpstreamServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.tunnel = False
        self.reading_paused = False
        self.idle_since = 0.0
        self.requests = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        # True while the current response is delimited by the upstream closing.
        self._until_close = False
        # HEAD: llhttp would wait for Content-Length body bytes that never
        # come, so the response ends at its head and the parser is replaced.
        self._head_only = False
        self._head_seen = False
        # Inside a 1xx (or the 101 before the tunnel): its message end is not
        # the end of the exchange.
        self._interim = False

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        limit = self.server.max_buffer
        transport.set_write_buffer_limits(high=limit, low=limit // 4)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            # Bytes on an idle connection: the upstream is confused or closing.
            self.abort()
            return
        if self.tunnel:
            ex.on_tunnel_upstream_data(data)
            return
        client = ex.client
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upg:
            offset = upg.args[0]
            if self.exchange is not None:
                self.exchange.on_upstream_upgraded(data[offset:])
        except httptools.HttpParserError as exc:
            self._fail(HeadError(502, f"invalid response from upstream: {exc}"))
        else:
            if self._head_seen and self.exchange is ex:
                self._finish_head_only()
        client.flush()

    def eof_received(self) -> bool:
        ex = self.exchange
        if ex is not None and self._until_close and not self.tunnel:
            self._until_close = False
            self.exchange = None
            self.closed = True
            ex.on_response_end(self, reusable=False)
            ex.client.flush()
        elif ex is not None and self.tunnel:
            ex.on_tunnel_upstream_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.forget(self)
        ex = self.exchange
        if ex is None:
            return
        self.exchange = None
        if self.tunnel:
            ex.on_tunnel_upstream_lost()
        elif self._until_close:
            self._until_close = False
            ex.on_response_end(self, reusable=False)
        else:
            ex.on_upstream_lost(self, exc)
        ex.client.flush()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.on_upstream_write_paused()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.on_upstream_write_resumed()

    # -- httptools callbacks ----------------------------------------------
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self.parser
        headers, self._headers = self._headers, []
        reason, self._reason = self._reason, b""
        ex = self.exchange
        if ex is None:
            return
        head = parse_response_head(p.get_status_code(), reason, p.get_http_version(), headers)
        status = head.status
        if status < 200:
            self._interim = True
            ex.on_interim_response(self, head)
            return
        if status >= 200 and status not in (204, 304):
            if ex.is_head:
                self._head_only = True
            elif head.content_length < 0 and not head.chunked:
                self._until_close = True
        ex.on_response_head(self, head)
        if self._head_only:
            self._head_seen = True

    def on_body(self, data: bytes) -> None:
        if self._head_only:
            if data:
                # A body after a HEAD response: never reuse this connection.
                self._head_only = False
                self.abort()
            return
        ex = self.exchange
        if ex is not None and data:
            ex.on_response_body(data)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is None or self._head_only:
            return
        if self._interim:
            self._interim = False
            return
        self._until_close = False
        self.exchange = None
        ex.on_response_end(self, reusable=self.parser.should_keep_alive())

    # -- used by the exchange ---------------------------------------------
    def _finish_head_only(self) -> None:
        self._head_only = self._head_seen = False
        ex = self.exchange
        self.exchange = None
        reusable = self.parser.should_keep_alive()
        self.parser = httptools.HttpResponseParser(self)
        if ex is not None:
            ex.on_response_end(self, reusable=reusable)

    def _fail(self, err: HeadError) -> None:
        ex = self.exchange
        self.exchange = None
        self.abort()
        if ex is not None:
            ex.on_upstream_lost(self, err)

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def writelines(self, parts: list[bytes]) -> None:
        self.transport.writelines(parts)  # type: ignore[union-attr]

    def write_eof(self) -> None:
        t = self.transport
        if t is not None and t.can_write_eof():
            t.write_eof()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamServer:
    """One upstream host:port: its idle keep-alive pool and health state."""

    __slots__ = (
        "addr", "connect_timeout", "down_until", "failures", "host", "idle", "idle_timeout",
        "inflight", "keepalive", "loop", "max_buffer", "port", "total",
    )

    def __init__(self, host: str, port: int, *, keepalive: int, connect_timeout: float,
                 idle_timeout: float, max_buffer: int) -> None:
        self.host = host
        self.port = port
        self.addr = f"{host}:{port}"
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_buffer = max_buffer
        # LIFO: the most recently used connection is the least likely to
        # have been closed by the upstream's own idle timeout.
        self.idle: deque[UpstreamConnection] = deque()
        self.inflight = 0
        self.total: set[UpstreamConnection] = set()
        self.failures = 0
        self.down_until = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None

    def available(self, now: float) -> bool:
        return now >= self.down_until

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        loop = self.loop or asyncio.get_running_loop()
        conn = UpstreamConnection(self)
        await asyncio.wait_for(
            loop.create_connection(lambda: conn, self.host, self.port),
            self.connect_timeout,
        )
        self.total.add(conn)
        return conn

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Return a connection whose exchange finished cleanly."""
        if conn.closed or len(self.idle) >= self.keepalive:
            conn.close()
            return
        conn.requests += 1
        conn.idle_since = now
        conn.resume_reading()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self.total.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def reap_idle(self, now: float) -> None:
        deadline = now - self.idle_timeout
        idle = self.idle
        # Oldest first (left end); stop at the first one still fresh.
        while idle and idle[0].idle_since < deadline:
            idle.popleft().close()

    def record_success(self) -> None:
        self.failures = 0
        self.down_until = 0.0

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.failures >= FAIL_THRESHOLD:
            self.down_until = now + FAIL_COOLDOWN

    def close_all(self) -> None:
        for conn in list(self.total):
            conn.close()
        self.idle.clear()


class Balancer:
    """Chooses among a school's upstream servers: round-robin or least in-flight,
    skipping servers taken out of rotation unless all of them are."""

    __slots__ = ("_next", "least_inflight", "servers")

    def __init__(self, servers: list[UpstreamServer], least_inflight: bool) -> None:
        self.servers = servers
        self.least_inflight = least_inflight
        self._next = 0

    def pick(self, exclude: UpstreamServer | None = None) -> UpstreamServer:
        servers = self.servers
        n = len(servers)
        if n == 1:
            return servers[0]
        now = time.monotonic()
        if self.least_inflight:
            best = None
            for s in servers:
                if s is exclude or not s.available(now):
                    continue
                if best is None or s.inflight < best.inflight:
                    best = s
            if best is not None:
                return best
        else:
            start = self._next
            for i in range(n):
                s = servers[(start + i) % n]
                if s is not exclude and s.available(now):
                    self._next = (start + i + 1) % n
                    return s
        # Everything is excluded or cooling down: probe the next one anyway
        # rather than fail without trying.
        for s in servers:
            if s is not exclude:
                return s
        return servers[0]
