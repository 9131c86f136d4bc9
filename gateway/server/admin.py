"""The admin process: the one admin listener of the gateway (admin_listen).

Kept apart from the proxy listener so that scraping and health checks are
never queued behind pupils, and never reachable through a school's Host;
run once, by a process of its own that the supervisor forks beside the
workers (never by the workers: with SO_REUSEPORT each scrape would reach
one worker at random). The workers send it snapshots of their counters
(gateway/server/telemetry.py), and it answers:

- GET /healthz: 200 "ok" while workers report and the gateway is not
  draining, 503 otherwise; never asks for a token (load balancers).
- GET /metrics: the whole gateway in the Prometheus text format
  (prometheus_client's exposition of GatewayCollector).
- GET /status.json: the status page's figures; GET /: the status page
  (one HTML document, inline CSS and script, polling /status.json each
  second).

The listener is hardened like the proxy's: the request head must arrive
within timeouts.header (408, then close), an idle keep-alive connection is
closed after timeouts.keepalive, a head may take limits.max_request_line +
limits.max_header_bytes bytes (431 beyond), only GET and HEAD without a
body are served (405, 413). Pipelined requests are answered in order, at
most limits.max_pipeline waiting at once; a client that takes none of its
answers for timeouts.client_send is disconnected.
Bound to anything but a loopback address it asks for
`Authorization: Bearer <server.admin_token>` (RFC 6750) on every path but
/healthz: 401 with WWW-Authenticate otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import socket
import struct
from collections.abc import Awaitable, Callable

import httptools
import msgspec
import uvloop
from prometheus_client import CollectorRegistry, generate_latest

from gateway.config import Config, ConfigError, is_loopback, load_config, parse_hostport
from gateway.server.status_page import STATUS_PAGE
from gateway.server.telemetry import (
    MAX_FRAME,
    Aggregate,
    GatewayCollector,
    Snapshot,
    WaitingPageRate,
    school_status,
)

log = logging.getLogger("schoolgate.admin")

# Seconds between two samples of the waiting-page counter (status page rate).
SAMPLE_INTERVAL = 1.0
# How long a scrape waits for the workers' fresh snapshots; a worker that
# has not answered by then is described by its last one.
FRESH_TIMEOUT = 1.0
_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
            405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
_LEN = struct.Struct("!I")
# (status, extra headers, body) of one admin answer.
_Answer = tuple[int, list[tuple[bytes, bytes]], bytes]



class AdminServer:
    """The admin process's state: its config (re-read on SIGHUP, counted as
    the gateway's reloads), the aggregate of the workers' snapshots, and
    the Prometheus registry over it."""

    def __init__(self, config_path: str, cfg: Config) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.agg = Aggregate(cfg)  # the configured limits come from cfg
        self.rate = WaitingPageRate()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(self.agg))  # type: ignore[arg-type]
        host, _ = parse_hostport(cfg.server.admin_listen or "127.0.0.1:0")
        self.token = (cfg.server.admin_token or "").encode()
        self.need_token = not is_loopback(host)
        self.draining = False
        self.connections: set[AdminProtocol] = set()
        self.feeds: set[StatsProtocol] = set()
        self.done: asyncio.Future[None] | None = None
        self._next_conn = 0
        self._asked = 0
        self._round: asyncio.Task[None] | None = None

    async def serve(self, stats_sock: socket.socket, listen_sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        stats = await loop.create_unix_server(self._stats_protocol, sock=stats_sock)
        server = await loop.create_server(lambda: AdminProtocol(self), sock=listen_sock)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self.drain)
        loop.add_signal_handler(signal.SIGINT, self.drain)
        loop.call_later(SAMPLE_INTERVAL, self._sample)
        log.info("admin listener on %s", self.cfg.server.admin_listen)
        await self.done
        server.close()
        stats.close()
        for conn in list(self.connections):
            conn.close()

    def _stats_protocol(self) -> StatsProtocol:
        self._next_conn += 1
        return StatsProtocol(self, self._next_conn)

    async def fresh(self) -> None:
        """Ask every worker for a snapshot now and wait for them (at most
        FRESH_TIMEOUT), so an answer describes the gateway as it is.

        Scrapes that come while a round of asking is under way share it: a
        flood of scrapes (pipelined, or many connections) costs the workers
        one snapshot per round, not one per scrape."""
        if self._round is None or self._round.done():
            self._round = asyncio.get_running_loop().create_task(self._ask_all())
        # Shielded: a scrape whose client left does not cancel the others'.
        await asyncio.shield(self._round)

    async def _ask_all(self) -> None:
        self._asked += 1
        waiting = [f for f in (feed.ask(self._asked) for feed in list(self.feeds))
                   if f is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=FRESH_TIMEOUT)

    def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        self.rate.sample(loop.time(), self.agg.totals())
        if self.draining and not self.agg.live:
            # Every worker has sent its last snapshot and gone.
            if self.done is not None and not self.done.done():
                self.done.set_result(None)
            return
        loop.call_later(0.1 if self.draining else SAMPLE_INTERVAL, self._sample)

    def reload(self) -> None:
        """SIGHUP (the supervisor forwards it): the config is read again, as
        every worker does; a good one is a new generation."""
        try:
            self.cfg = load_config(self.config_path)
        except (ConfigError, OSError) as err:
            self.agg.reloads["failure"] += 1
            log.debug("admin: reload refused: %s", err)
            return
        self.agg.reloads["success"] += 1
        self.agg.generation += 1
        self.agg.cfg = self.cfg
        # A new admin_token (or admin_token_file's content) applies at once;
        # the address stays (the listener is not rebound).
        self.token = (self.cfg.server.admin_token or "").encode()

    def drain(self) -> None:
        """SIGTERM: /healthz says draining; the process ends once the workers
        have (their last snapshots are in), or at the drain deadline."""
        if self.draining:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        loop.call_later(self.cfg.timeouts.drain, self._stop)
        loop.call_soon(self._sample)

    def _stop(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # -- answers ---------------------------------------------------------------
    def authorized(self, authorization: bytes | None) -> bool:
        if not self.need_token:
            return True
        if authorization is None or not self.token:
            return False
        scheme, _, credentials = authorization.strip().partition(b" ")
        # RFC 6750 2.1: the scheme is case-insensitive.
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(),
                                                                   self.token)

    async def answer(self, path: bytes, authorization: bytes | None) -> _Answer:
        """(status, extra headers, body) for a GET of `path`."""
        if path == b"/healthz":
            if self.draining:
                return 503, _TEXT, b"draining\n"
            if not self.agg.live:
                return 503, _TEXT, b"no worker is reporting\n"
            return 200, _TEXT, b"ok\n"
        if not self.authorized(authorization):
            return 401, [*_TEXT, (b"WWW-Authenticate", b'Bearer realm="schoolgate admin"')], \
                b"401 Unauthorized: send Authorization: Bearer <server.admin_token>\n"
        if path in (b"/metrics", b"/status.json"):
            await self.fresh()
        if path == b"/metrics":
            return 200, [(b"Content-Type", _EXPOSITION)], generate_latest(self.registry)
        if path == b"/status.json":
            body = json.dumps(school_status(self.cfg, self.agg, self.rate)).encode()
            return 200, [(b"Content-Type", b"application/json")], body
        if path == b"/":
            return 200, _HTML, STATUS_PAGE
        return 404, _TEXT, b"not found\n"


_TEXT = [(b"Content-Type", b"text/plain; charset=utf-8")]
# The classic text format, which every Prometheus reads (the metric names are
# all legacy-valid, so generate_latest writes exactly that); newer
# prometheus_client releases would announce version=1.0.0.
_EXPOSITION = b"text/plain; version=0.0.4; charset=utf-8"
_HTML = [(b"Content-Type", b"text/html; charset=utf-8"),
         # Everything is inline; the script may only fetch from this origin.
         (b"Content-Security-Policy", b"default-src 'none'; style-src 'unsafe-inline'; "
                                      b"script-src 'unsafe-inline'; connect-src 'self'; "
                                      b"img-src data:; base-uri 'none'; form-action 'none'"),
         (b"X-Content-Type-Options", b"nosniff")]


class StatsProtocol(asyncio.Protocol):
    """One worker's connection: length-prefixed msgpack Snapshots."""

    _decoder = msgspec.msgpack.Decoder(Snapshot)

    def __init__(self, server: AdminServer, conn: int) -> None:
        self.server = server
        self.agg = server.agg
        self.conn = conn
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        # (request number, future) of the answers awaited.
        self.waiting: list[tuple[int, asyncio.Future[None]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.feeds.add(self)

    def ask(self, number: int) -> asyncio.Future[None] | None:
        """Ask for a snapshot answering `number`; the future is done once
        it is in (None: the connection is gone)."""
        if self.transport is None or self.transport.is_closing():
            return None
        if self.waiting:
            # An earlier request is still unanswered (the worker is busy,
            # or stopped): its answer will be the freshest there is; asking
            # again would only pile requests up at a worker that is behind.
            return self.waiting[-1][1]
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append((number, fut))
        self.transport.write(_LEN.pack(number))
        return fut

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            (size,) = _LEN.unpack_from(buf)
            if size > MAX_FRAME:
                log.error("admin: a snapshot of %d bytes refused", size)
                self.transport.abort()  # type: ignore[union-attr]
                return
            if len(buf) < 4 + size:
                return
            body = bytes(buf[4:4 + size])
            del buf[:4 + size]
            try:
                snap = self._decoder.decode(body)
            except msgspec.DecodeError as err:
                log.error("admin: a snapshot that does not decode: %s", err)
                self.transport.abort()  # type: ignore[union-attr]
                return
            self.agg.update(self.conn, snap)
            if snap.answers:
                keep = []
                for number, fut in self.waiting:
                    if number <= snap.answers:
                        if not fut.done():
                            fut.set_result(None)
                    else:
                        keep.append((number, fut))
                self.waiting = keep

    def connection_lost(self, exc: BaseException | None) -> None:
        self.server.feeds.discard(self)
        self.agg.gone(self.conn)
        for _, fut in self.waiting:
            if not fut.done():
                fut.set_result(None)
        self.waiting = []


class _Refuse(Exception):
    """Raised from a parser callback: answer (after the answers owed) and
    close."""

    def __init__(self, status: int, text: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.text = text


def _given(answer: _Answer) -> Callable[[], Awaitable[_Answer]]:
    async def given() -> _Answer:
        return answer
    return given


class AdminProtocol(asyncio.Protocol):
    """One admin HTTP/1.1 connection (see the module docstring for the
    limits and timeouts).

    Answers go out in request order (RFC 9112 9.3.2), refusals included: a
    400 for the second of two pipelined requests follows the first one's
    answer. At most limits.max_pipeline requests wait for their answers;
    beyond that, and while the client does not take what was written
    (pause_writing), reading stops, so a client that pipelines without
    reading holds a bounded amount of memory. A client whose output makes
    no progress for timeouts.client_send is disconnected, also after a
    close that is waiting for it.

    Each request head is measured on its own (a chunk holding several
    pipelined requests is not one head): input is parsed in slices of
    SLICE bytes, and a head that spans slices is counted byte for byte.
    Only GET and HEAD without a body are served (405; 413 for a body).
    """

    SLICE = 1024

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        limits = server.cfg.limits
        timeouts = server.cfg.timeouts
        self.head_budget = limits.max_request_line + limits.max_header_bytes
        self.max_headers = limits.max_headers
        self.max_pipeline = limits.max_pipeline
        self.header_timeout = timeouts.header
        self.keepalive_timeout = timeouts.keepalive
        self.send_timeout = timeouts.client_send
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.authorization: bytes | None = None
        self.has_body = False
        self.headers = 0
        self.head_bytes = 0
        self.in_head = False
        self.began = False  # a request began in the slice being parsed
        self.timer: asyncio.TimerHandle | None = None
        self.send_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.refused = False  # a refusal is queued: nothing more is read
        self.pending = 0  # requests read whose answers are not written yet
        self.paused: set[str] = set()  # why reading is paused: "pipeline", "writing"
        self.backlog = b""  # input not yet parsed while reading is paused
        # The last answer queued (they go out in request order).
        self.answering: asyncio.Task[None] | None = None

    # -- timeouts ----------------------------------------------------------------
    def _arm(self, seconds: float, head: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(
            seconds, self._header_timeout if head else self.close)

    def _header_timeout(self) -> None:
        self.timer = None
        self._refuse(408, b"408 Request Timeout: request header timeout\n")

    def _send_timeout(self) -> None:
        # The client has taken nothing for timeouts.client_send.
        self.send_timer = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        # A new connection is owed a request head: the header timeout runs.
        self._arm(self.header_timeout, True)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for timer in (self.timer, self.send_timer):
            if timer is not None:
                timer.cancel()
        self.timer = self.send_timer = None
        if self.answering is not None and not self.answering.done():
            self.answering.cancel()

    def pause_writing(self) -> None:
        self._pause("writing")
        if self.send_timer is None:
            self.send_timer = asyncio.get_running_loop().call_later(
                self.send_timeout, self._send_timeout)

    def resume_writing(self) -> None:
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None
        self._resume("writing")

    def _pause(self, why: str) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused.add(why)

    def _resume(self, why: str) -> None:
        if why not in self.paused:
            return
        self.paused.discard(why)
        if self.paused or self.closed or self.transport is None:
            return
        if self.backlog:
            backlog, self.backlog = self.backlog, b""
            self._feed(backlog)
        if not self.paused and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.refused:
            return
        if self.paused:
            # Read before the pause took effect: parsed once it lifts.
            self.backlog += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.closed or self.refused:
                return
            if self.paused:
                self.backlog = bytes(view) + self.backlog
                return
            piece = bytes(view[:self.SLICE])
            view = view[self.SLICE:]
            self.began = False
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                self._refuse(400, b"400 Bad Request: no upgrades here\n")
                return
            except httptools.HttpParserCallbackError as err:
                cause = err.__context__
                if isinstance(cause, _Refuse):
                    self._refuse(cause.status, cause.text)
                else:
                    self._refuse(400, b"400 Bad Request\n")
                return
            except httptools.HttpParserError:
                self._refuse(400, b"400 Bad Request\n")
                return
            if self.in_head:
                if not self.began:
                    # The whole slice belongs to a head begun before it.
                    self.head_bytes += len(piece)
                if self.head_bytes > self.head_budget:
                    self._refuse(431, b"431 Request Header Fields Too Large\n")
                    return

    # -- httptools callbacks -------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.authorization = None
        self.has_body = False
        self.headers = 0
        self.head_bytes = 0
        self.began = True
        self.in_head = True
        # The first byte of a request: its head is now due.
        self._arm(self.header_timeout, True)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if self.began:
            self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += 1
        if self.headers > self.max_headers:
            raise _Refuse(431, b"431 Request Header Fields Too Large: too many fields\n")
        if self.began:
            self.head_bytes += len(name) + len(value) + 4
        name = name.lower()
        if name == b"authorization":
            if self.authorization is not None:
                # RFC 9110 11.6.2 gives one value; two are ambiguous.
                raise _Refuse(400, b"400 Bad Request: more than one Authorization\n")
            self.authorization = value
        elif name == b"transfer-encoding" or (name == b"content-length"
                                              and value.strip() not in (b"", b"0")):
            self.has_body = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.has_body:
            raise _Refuse(413, b"413 Content Too Large: the admin endpoints take no "
                               b"request body\n")

    def on_message_complete(self) -> None:
        if self.closed or self.refused:
            return
        method = self.parser.get_method()
        if method not in (b"GET", b"HEAD"):
            raise _Refuse(405, b"405 Method Not Allowed\n")
        path = self.url.split(b"?", 1)[0]
        authorization = self.authorization
        self._queue(lambda: self.server.answer(path, authorization),
                    self.parser.should_keep_alive(), method == b"HEAD")
        if self.pending >= self.max_pipeline:
            self._pause("pipeline")

    # -- output --------------------------------------------------------------
    def _refuse(self, status: int, text: bytes) -> None:
        """Answer `status` after the answers owed, then close; nothing more
        is read."""
        if self.refused or self.closed:
            return
        self.refused = True
        self.backlog = b""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.pause_reading()
        headers = [*_TEXT, (b"Allow", b"GET, HEAD")] if status == 405 else _TEXT
        self._queue(_given((status, headers, text)), False, False)

    def _queue(self, make: Callable[[], Awaitable[_Answer]], keep: bool,
               head_only: bool) -> None:
        """Answer with `make()`, made once the answers before it are out."""
        self.pending += 1
        self.answering = asyncio.get_running_loop().create_task(
            self._respond(self.answering, make, keep, head_only))

    async def _respond(self, before: asyncio.Task[None] | None,
                       make: Callable[[], Awaitable[_Answer]], keep: bool,
                       head_only: bool) -> None:
        if before is not None:
            await before
        if self.closed:
            return
        status, headers, body = await make()
        self.pending -= 1
        if self.closed:
            return
        self._send(status, headers, body, close=not keep, head_only=head_only)
        if self.closed:
            return
        if self.pending < self.max_pipeline:
            self._resume("pipeline")
        if not self.pending and not self.in_head and not self.closed:
            self._arm(self.keepalive_timeout, False)

    def _send(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
              close: bool = False, head_only: bool = False) -> None:
        if self.transport is None or self.closed:
            return
        lines = [b"HTTP/1.1 %d %s" % (status, _REASONS[status])]
        lines += [b"%s: %s" % kv for kv in headers]
        lines.append(b"Content-Length: %d" % len(body))
        lines.append(b"Cache-Control: no-store")
        if close:
            lines.append(b"Connection: close")
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body))
        if close:
            self.close()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None and not self.closed:
            self.closed = True
            transport = self.transport
            transport.close()
            if transport.get_write_buffer_size() and self.send_timer is None:
                # close() waits for the client to take what is written; a
                # client that never does is cut off after client_send.
                self.send_timer = asyncio.get_running_loop().call_later(
                    self.send_timeout, transport.abort)


def admin_main(config_path: str, cfg: Config, stats_sock: socket.socket) -> int:
    """Entry point of the forked admin process."""
    from gateway.server.worker import bind_socket

    # One process serves it: no SO_REUSEPORT, so nothing else can share it.
    listen_sock = bind_socket(cfg.server.admin_listen, 128,  # type: ignore[arg-type]
                              reuse_port=False)
    server = AdminServer(config_path, cfg)
    uvloop.run(server.serve(stats_sock, listen_sock))
    return 0
