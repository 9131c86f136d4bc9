"""Client side of the proxy: one Protocol per accepted connection.

httptools parses straight into this object's callbacks from data_received;
each complete request head becomes an Exchange queued on the connection.
The exchange at the head of the queue is the only one talking to an
upstream, which keeps pipelined responses in order without buffering them.

Limits httptools does not enforce itself are enforced here, as bytes arrive:
request-line length (414), header count and header-block size (431), chunk
extension size (400), and the total-header and keep-alive deadlines (408 /
close) through the worker's reaper, which calls check_timeouts().
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

import httptools

from gateway.http import HeadError, parse_request_head
from gateway.proxy.chunks import ChunkLimiter
from gateway.proxy.exchange import (
    ADMITTING,
    PAUSE_PIPELINE,
    PAUSE_TUNNEL,
    RESPONDING,
    SENT,
    Exchange,
)

if TYPE_CHECKING:
    from gateway.proxy.app import App

# Connection phases. Order matters: data_received treats every phase from
# BROKEN on as "stop parsing".
IDLE, HEAD, BODY, UPGRADE_WAIT, BROKEN, LINGER, UPGRADED, CLOSED = range(8)
LINGER_SECONDS = 2.0


class ClientProtocol(asyncio.Protocol):
    __slots__ = (
        "_body_left", "_hdr_bytes", "_headers", "_n_headers", "_raw_head", "_tail", "_url",
        "app", "chunks", "client_ip", "client_key", "current", "eof", "error", "parser",
        "pause_mask", "phase", "out", "proto", "queue", "school", "since", "touched",
        "transport", "trusted_peer", "tunnel", "write_paused",
    )

    def __init__(self, app: App, proto: bytes = b"http") -> None:
        self.app = app
        self.proto = proto
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        # Response bytes produced while handling one upstream read, sent as
        # one writev by flush(): a head and its body leave in one syscall.
        self.out: list[bytes] = []
        # The exchange whose request body is still being parsed.
        self.current: Exchange | None = None
        self.tunnel: Exchange | None = None
        self.phase = IDLE
        self.since = 0.0
        self.touched = 0.0
        self.pause_mask = 0
        self.write_paused = False
        self.eof = False
        self.error: HeadError | None = None
        self.client_ip = b""
        self.client_key = b""
        # The school this connection counts against (max_connections), -1
        # until its first routed request.
        self.school = -1
        self.trusted_peer = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._n_headers = 0
        self._raw_head = 0
        self._hdr_bytes = 0
        self._body_left = -1
        self._tail = b""
        self.chunks = ChunkLimiter(app.limits.max_chunk_ext)

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0].encode() if isinstance(peer, tuple) else b"unix"
        self.client_key = self.client_ip
        limit = self.app.limits.max_buffer
        transport.set_write_buffer_limits(high=limit, low=limit // 4)  # type: ignore[attr-defined]
        self.since = time.monotonic()
        if not self.app.connection_opened(self):
            return
        self.app.connections.add(self)

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase >= BROKEN:
            if phase == UPGRADED and self.tunnel is not None:
                self.touched = time.monotonic()
                self.tunnel.on_tunnel_client_data(data)
            return  # otherwise lingering after an error: read and drop
        if phase == UPGRADE_WAIT:
            # Bytes after an upgrade request wait for the upstream's 101.
            ex = self.queue[-1] if self.queue else None
            if ex is not None and ex.pending is not None:
                ex.pending.append(data)
            return
        self.touched = time.monotonic()
        while data:
            phase = self.phase
            cut = len(data)
            if phase == BODY:
                cur = self.current
                if cur is not None and cur.head.chunked:
                    cut = self.chunks.feed(data)
                    if cut < 0:
                        self._protocol_error(HeadError(400, "chunk extension too long"))
                        return
            else:  # IDLE or HEAD
                # Feed a head on its own when more follows it, so that a
                # chunked body is measured before llhttp consumes it. The
                # previous read's tail catches a CRLFCRLF split across reads.
                tail = self._tail
                end = (tail + data).find(b"\r\n\r\n") if tail else data.find(b"\r\n\r\n")
                if end >= 0:
                    end += 4 - len(tail)
                    if end < cut:
                        cut = end
                # httptools holds a header line internally until it ends, so
                # a line that never ends is bounded here, by the raw bytes of
                # the current head (reset when a head completes).
                raw = self._raw_head + cut
                self._raw_head = raw
                if raw > self.app.head_budget:
                    self._protocol_error(HeadError(431, "request header block too large"))
                    return
            if cut < len(data):
                piece, data = data[:cut], data[cut:]
            else:
                piece, data = data, b""
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade as upg:
                data = piece[upg.args[0]:] + data
                if not self._upgrade(data):
                    return
                self._tail = b""
                continue
            except httptools.HttpParserError as exc:
                err = self.error
                if err is None:
                    ctx = exc.__context__
                    err = ctx if isinstance(ctx, HeadError) else _parser_error(exc)
                self._protocol_error(err)
                return
            self._tail = piece[-3:] if self.phase == HEAD else b""
            if self.phase >= BROKEN:
                return

    def eof_received(self) -> bool:
        self.eof = True
        if self.phase == UPGRADED and self.tunnel is not None:
            self.tunnel.on_tunnel_client_eof()
            return True
        queue = self.queue
        if queue and queue[0].state == ADMITTING:
            # Hung up while waiting in line (a closed tab sends just this
            # FIN): the request is not sent to the school's server, and its
            # place goes to the next (like HAProxy's abortonclose). Closing
            # leads to connection_lost, which gives the place back.
            return False
        # With nothing owed, let the transport close; otherwise finish
        # answering what was asked (the client may only have half-closed),
        # then close.
        return bool(queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = CLOSED
        self.app.connections.discard(self)
        self.app.connection_closed(self)
        for ex in self.queue:
            ex.on_client_lost()
        self.queue.clear()
        if self.tunnel is not None:
            self.tunnel.on_client_lost()
            self.tunnel = None
        self.current = None

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.queue[0] if self.queue else self.tunnel
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.queue[0] if self.queue else self.tunnel
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    # -- httptools callbacks ------------------------------------------------
    def on_message_begin(self) -> None:
        self.phase = HEAD
        self.since = time.monotonic()
        self._url = b""
        self._headers = []
        self._n_headers = 0
        self._hdr_bytes = 0

    def on_url(self, url: bytes) -> None:
        url = self._url + url if self._url else url
        self._url = url
        if len(url) > self.app.limits.max_request_line:
            self._fail(HeadError(414, "request line too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        n = self._n_headers + 1
        self._n_headers = n
        self._hdr_bytes += len(name) + len(value) + 4
        if n > self.app.limits.max_headers:
            self._fail(HeadError(431, "too many request headers"))
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        app = self.app
        if self._hdr_bytes > app.limits.max_header_bytes:
            self._fail(HeadError(431, "request header block too large"))
        self._raw_head = 0
        p = self.parser
        try:
            head = parse_request_head(p.get_method(), self._url, p.get_http_version(),
                                      self._headers, app.reject_underscore)
        except HeadError as err:
            self._fail(err)
        self._headers = []
        max_body = app.limits.max_body
        if max_body and head.content_length > max_body:
            self._fail(HeadError(413, "request body too large"))
        self._body_left = max_body or -1
        self.phase = BODY
        if head.chunked:
            self.chunks.reset()
        ex = app.route(self, head)
        self.current = ex
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()
        elif len(self.queue) > app.limits.max_pipeline:
            self.pause_reading_for(PAUSE_PIPELINE)

    def on_body(self, data: bytes) -> None:
        left = self._body_left
        if left >= 0:
            # Only a chunked body can get here past max_body; a declared
            # Content-Length was checked at the head.
            left -= len(data)
            if left < 0:
                self._fail(HeadError(413, "request body too large"))
            self._body_left = left
        ex = self.current
        if ex is not None:
            ex.on_request_body(data)

    def on_message_complete(self) -> None:
        ex = self.current
        self.current = None
        if self.phase < BROKEN:
            # (Not when a gateway answer already ended the connection while
            # this message was being parsed: nothing more is read then.)
            self.phase = IDLE
            self.since = time.monotonic()
        if ex is not None:
            ex.on_request_end()

    # -- used by exchanges ------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.out:
            self.out.append(data)  # keep order behind what is corked
            return
        t = self.transport
        if t is not None:
            t.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self.out:
            self.out.extend(parts)
            return
        t = self.transport
        if t is not None:
            t.writelines(parts)

    def cork(self, data: bytes) -> None:
        self.out.append(data)

    def corklines(self, parts: list[bytes]) -> None:
        self.out.extend(parts)

    def flush(self) -> None:
        out = self.out
        if out:
            self.out = []
            t = self.transport
            if t is not None:
                if len(out) == 1:
                    t.write(out[0])
                else:
                    t.writelines(out)

    def write_eof(self) -> None:
        self.flush()
        t = self.transport
        if t is not None and t.can_write_eof():
            t.write_eof()

    def pause_reading_for(self, reason: int) -> None:
        mask = self.pause_mask
        if not mask and self.transport is not None:
            self.transport.pause_reading()
        self.pause_mask = mask | reason

    def resume_reading_for(self, reason: int) -> None:
        mask = self.pause_mask
        if not mask & reason:
            return
        mask &= ~reason
        self.pause_mask = mask
        if not mask and self.transport is not None and self.phase != CLOSED:
            self.transport.resume_reading()

    def exchange_done(self, ex: Exchange) -> None:
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if not ex.keep_alive or (self.phase == BROKEN and not queue):
            self._close_after_response(ex)
            return
        if self.pause_mask & PAUSE_PIPELINE and len(queue) <= self.app.limits.max_pipeline:
            self.resume_reading_for(PAUSE_PIPELINE)
        if queue:
            queue[0].start()
        elif self.eof or (self.app.draining and self.phase == IDLE):
            self.close()
        elif self.phase == IDLE:
            self.since = time.monotonic()

    def enter_tunnel(self, ex: Exchange) -> list[bytes]:
        """101 received: from now on bytes are copied, not parsed. Returns
        what the client sent after its upgrade request, for the upstream."""
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        self.tunnel = ex
        self.phase = UPGRADED
        self.touched = time.monotonic()
        pending = ex.pending or []
        ex.pending = None
        self.resume_reading_for(PAUSE_TUNNEL)
        return pending

    def close(self) -> None:
        self.flush()
        t = self.transport
        if t is not None and self.phase != CLOSED:
            t.close()

    def abort(self) -> None:
        self.out = []
        t = self.transport
        if t is not None and self.phase != CLOSED:
            t.abort()

    # -- timeouts (called by the worker's reaper) ----------------------------
    def check_timeouts(self, now: float) -> None:
        phase = self.phase
        timeouts = self.app.timeouts
        if phase == UPGRADED:
            if now - self.touched > timeouts.tunnel_idle:
                self.close()
            return
        if phase == LINGER:
            if now - self.since > LINGER_SECONDS:
                self.abort()
            return
        queue = self.queue
        if phase == BODY and not self.pause_mask and now - self.touched > timeouts.client_body:
            # The client stopped sending the body it announced.
            self._protocol_error(HeadError(408, "request body timeout"))
            return
        if queue:
            ex = queue[0]
            # `touched` moves with every byte either way, so a long upload or
            # download that keeps flowing never times out.
            if ex.upstream is not None and ex.state in (SENT, RESPONDING) and \
                    now - ex.touched > timeouts.upstream_read:
                ex.timed_out()
            return
        if phase == HEAD:
            if now - self.since > timeouts.header:
                self._protocol_error(HeadError(408, "request header timeout"))
        elif phase == IDLE and now - self.since > timeouts.keepalive:
            self.close()

    # -- internals ---------------------------------------------------------
    def _fail(self, err: HeadError) -> None:
        # Raised inside an httptools callback; data_received picks it up.
        self.error = err
        raise err

    def _protocol_error(self, err: HeadError) -> None:
        """The byte stream cannot be trusted any more: answer after what is
        already owed, then close."""
        self.phase = BROKEN
        self.error = None
        self.app.count_protocol_error(err.status)
        ex = Exchange(self, None, None, -1)
        ex.local = self.app.error_response(err)
        ex.keep_alive = False
        cur = self.current
        if cur is not None and cur.state not in (RESPONDING,):
            # A half-read body must not reach the upstream as if complete.
            cur.on_client_lost()
            if cur in self.queue:
                self.queue.remove(cur)
        self.current = None
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()

    def _upgrade(self, rest: bytes) -> bool:
        """llhttp stopped after a request asking for an upgrade; `rest` is
        what followed it. True: go on parsing `rest` as HTTP/1.1."""
        ex = self.queue[-1] if self.queue else None
        if ex is not None and ex.head is not None and ex.head.upgrade is None \
                and ex.local is None and self.phase == IDLE:
            # An upgrade the gateway does not pass on (h2c): the request was
            # forwarded as plain HTTP/1.1, and a fresh parser reads on.
            self.parser = httptools.HttpRequestParser(self)
            return True
        if ex is None or ex.head is None or ex.head.upgrade is None or ex.local is not None:
            # Upgrade on a request we answer ourselves: the parser is spent,
            # so the connection ends after that answer.
            self.phase = BROKEN
            if ex is not None:
                ex.keep_alive = False  # closes once its answer is out
            else:
                self._linger()  # the answer is out already
            return False
        # The parser is spent either way: without a 101 the connection ends
        # after this response. Until then, hold (a bounded amount of) what
        # the client sends next; it belongs to the upgraded protocol.
        ex.keep_alive = False
        ex.pending = [rest] if rest else []
        self.phase = UPGRADE_WAIT
        self.pause_reading_for(PAUSE_TUNNEL)
        return False

    def _close_after_response(self, ex: Exchange) -> None:
        self.flush()
        t = self.transport
        if t is None or self.phase == CLOSED:
            return
        if self.phase in (HEAD, BODY, UPGRADE_WAIT, BROKEN) or (
                ex.head is not None and not ex.request_done):
            # The client may still be sending; closing with unread data would
            # reset the connection and could destroy the response in flight.
            # Half-close, drop what arrives, then close.
            self._linger()
            return
        t.close()

    def _linger(self) -> None:
        t = self.transport
        if t is None or self.phase == CLOSED:
            return
        self.flush()
        self.phase = LINGER
        self.since = time.monotonic()
        self.pause_mask = 0
        t.resume_reading()
        if t.can_write_eof():
            t.write_eof()
        else:
            t.close()


def _parser_error(exc: Exception) -> HeadError:
    text = str(exc) or type(exc).__name__
    if text == "Invalid HTTP version":
        # llhttp read a well-formed HTTP/d.d it does not speak (1.2, 3.0):
        # the protocol is refused, not the syntax.
        return HeadError(505, "HTTP version not supported")
    return HeadError(400, f"malformed request: {text}")


__all__ = ["BODY", "HEAD", "IDLE", "ClientProtocol"]
