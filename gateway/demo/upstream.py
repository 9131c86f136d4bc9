"""A small HTTP/1.1 server playing one school's platform, for the demo.

    python -m gateway.demo.upstream --port 0 --school linden [--watch-stdin]

It prints one line, ``listening on http://HOST:PORT``, on stdout once it
accepts connections (``--port 0`` picks a free port, which is how the demo
avoids port races), then writes nothing more there. SIGTERM or SIGINT stop
it gracefully: no new connections, idle ones closed, requests in flight
given a few seconds. With ``--watch-stdin`` it also stops when its stdin
pipe closes, so it cannot outlive a parent that was killed outright.

Requests are parsed with httptools; keep-alive, pipelining (answered in
order), ``Expect: 100-continue`` and HEAD are supported. Bodies are hashed as
they stream in, never buffered (but for the small login form), and large
responses are written under flow control, so memory stays flat for any size.
Every read has a timeout, so a stalled client cannot pin a connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http
import json
import signal
import sys
import time
import traceback
from collections import deque
from email.utils import formatdate
from typing import NamedTuple
from urllib.parse import parse_qs

import httptools

from . import pages

READ_SIZE = 65536
MAX_HEAD = 65536  # request line plus headers
MAX_FORM = 65536  # a login form larger than this is refused
IDLE_TIMEOUT = 60.0  # between requests on a kept-alive connection
READ_TIMEOUT = 30.0  # between reads while a request is arriving
GRACE = 5.0  # shutdown time given to requests in flight
MAX_SLOW_MS = 600_000
MAX_BIG = 1 << 40
IMPORT_MS = 2000  # default duration of a bulk import
_PATTERN = bytes(range(256)) * 256  # /big content: 64 KiB, repeated


class Request:
    """One request as the parser delivers it; the body is digested, not kept."""

    __slots__ = ("body_size", "continue_sent", "expect_continue", "form", "headers",
                 "keep_alive", "lines", "method", "path", "query", "sha256", "url")

    def __init__(self) -> None:
        self.url = bytearray()
        self.method = ""
        self.path = ""
        self.query: dict[str, list[str]] = {}
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.expect_continue = False
        self.continue_sent = False
        self.body_size = 0
        self.lines = 0
        self.sha256 = hashlib.sha256()
        self.form: bytearray | None = None  # kept only for POST /login


class Reply(NamedTuple):
    status: int
    content_type: str = "text/html; charset=utf-8"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    # When > 0 the body is this many bytes of _PATTERN, streamed.
    stream: int = 0


class _Parse:
    """httptools callbacks: turn bytes into completed Request objects."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.current: Request | None = None
        self.done: deque[Request] = deque()
        # Bytes fed while a head was incomplete: httptools buffers a partial
        # header internally, so this is what bounds a slowly growing head.
        self.in_head = False
        self.head_bytes = 0

    def feed(self, data: bytes) -> None:
        if self.in_head:
            self.head_bytes += len(data)
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.current = Request()
        self.in_head = True
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.current.headers.get(key)
        self.current.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        self.in_head = False
        req.method = self.parser.get_method().decode("ascii")
        req.keep_alive = self.parser.should_keep_alive()
        url = httptools.parse_url(bytes(req.url))
        req.path = (url.path or b"/").decode("latin-1")
        req.query = parse_qs((url.query or b"").decode("latin-1"))
        req.expect_continue = req.headers.get("expect", "").lower() == "100-continue"
        if req.method == "POST" and req.path == "/login":
            req.form = bytearray()

    def on_body(self, body: bytes) -> None:
        req = self.current
        assert req is not None
        req.body_size += len(body)
        req.sha256.update(body)
        req.lines += body.count(b"\n")
        if req.form is not None and len(req.form) <= MAX_FORM:
            req.form += body[: MAX_FORM + 1 - len(req.form)]

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.done.append(self.current)
        self.current = None


class SchoolServer:
    """Serves the demo pages of one school; see the module docstring."""

    def __init__(self, school: str, title: str | None = None) -> None:
        self.school = school
        self.title = title or school.capitalize()
        self.served_by = school
        self._server: asyncio.Server | None = None
        self._busy: dict[asyncio.Task, bool] = {}
        self._closing = False

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks one); returns the bound port."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=READ_SIZE)
        bound = self._server.sockets[0].getsockname()[1]
        self.served_by = f"{self.school}@{bound}"
        return bound

    async def stop(self, grace: float = GRACE) -> None:
        """Stop accepting, close idle connections, let busy ones finish."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._busy.items()):
            if not busy:
                task.cancel()
        tasks = list(self._busy)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._busy[task] = False
        parse = _Parse()
        try:
            while not self._closing or parse.current is not None:
                waiting = parse.current is None and not parse.done
                self._busy[task] = not waiting
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT if waiting else READ_TIMEOUT):
                        data = await reader.read(READ_SIZE)
                except TimeoutError:
                    if not waiting:
                        await self._send(writer, "GET", self._error(408, "Send faster."), False)
                    return
                if not data:
                    return
                self._busy[task] = True
                failed: Reply | None = None
                last = False
                try:
                    parse.feed(data)
                except httptools.HttpParserUpgrade:
                    # Upgrades are not offered: a complete request is answered
                    # as if Upgrade were absent (RFC 9110 7.8); either way the
                    # connection ends, as what follows the head is not HTTP/1.1.
                    last = True
                    if parse.current is not None:
                        failed = self._error(501, "This server does not switch protocols.")
                except httptools.HttpParserError:
                    failed = self._error(400, "The request could not be parsed.")
                if parse.in_head and parse.head_bytes > MAX_HEAD:
                    failed = self._error(431, "The request head is too large.")
                # Without an error to send, the final completed request is the one
                # whose response announces the close.
                closes_after = last and failed is None
                while parse.done:
                    req = parse.done.popleft()
                    final = closes_after and not parse.done
                    try:
                        reply = await self._route(req)
                    except Exception:
                        traceback.print_exc()
                        failed = self._error(500, "The demo server failed; see its log.")
                        await self._send(writer, req.method, failed, False)
                        return
                    # After the handler: a stop() during a slow reply must close.
                    keep = req.keep_alive and not final and not self._closing
                    if not await self._send(writer, req.method, reply, keep):
                        return
                if failed is not None:
                    await self._send(writer, "GET", failed, False)
                    return
                if last:
                    return
                req = parse.current
                if req is not None and req.expect_continue and not req.continue_sent and req.method:
                    req.continue_sent = True
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await _drain(writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            # TimeoutError: a client that stopped reading our response.
            pass
        except asyncio.CancelledError:
            # Only stop() cancels these tasks, and on Python 3.11 the streams
            # machinery reports a handler task that ends cancelled as an error.
            pass
        finally:
            self._busy.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, method: str, reply: Reply,
                    keep_alive: bool) -> bool:
        """Write one response; returns whether the connection stays open."""
        length = reply.stream or len(reply.body)
        lines = [
            f"HTTP/1.1 {reply.status} {http.HTTPStatus(reply.status).phrase}",
            f"Date: {_http_date()}",
            "Server: schoolgate-demo",
            f"X-Demo-Upstream: {self.served_by}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {length}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        lines += [f"{name}: {value}" for name, value in reply.headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if method != "HEAD":
            if reply.stream:
                left = reply.stream
                while left > 0:
                    chunk = _PATTERN[: min(left, len(_PATTERN))]
                    writer.write(chunk)
                    left -= len(chunk)
                    await _drain(writer)
            else:
                writer.write(reply.body)
        await _drain(writer)
        return keep_alive

    async def _route(self, req: Request) -> Reply:
        handler, methods = _ROUTES.get(req.path, (None, ()))
        if handler is None:
            return self._error(404, f"There is no page at {req.path}.")
        if req.method not in methods:
            reply = self._error(405, f"{req.path} does not take {req.method}.")
            return reply._replace(headers=(("Allow", ", ".join(methods)),))
        return await handler(self, req)

    def _error(self, status: int, detail: str) -> Reply:
        reason = http.HTTPStatus(status).phrase
        return Reply(status, body=pages.error_page(self.title, self.served_by, status,
                                                  reason, detail))

    def _json(self, status: int, doc: dict) -> Reply:
        doc = {"school": self.school, "upstream": self.served_by, **doc}
        return Reply(status, "application/json", json.dumps(doc).encode() + b"\n")

    async def _start(self, req: Request) -> Reply:
        return Reply(200, body=pages.start_page(self.title, self.served_by))

    async def _login(self, req: Request) -> Reply:
        if req.method != "POST":
            return Reply(200, body=pages.login_page(self.title, self.served_by))
        assert req.form is not None
        if len(req.form) > MAX_FORM:
            return self._error(413, "The login form is too large.")
        user = parse_qs(req.form.decode("utf-8", "replace")).get("user", [""])[0].strip()
        if not user:
            return Reply(400, body=pages.login_page(self.title, self.served_by,
                                                    "Please enter your name."))
        # A random session id, as a real platform would set; the name stays server-side.
        session = hashlib.sha256(f"{user}{time.time_ns()}".encode()).hexdigest()[:32]
        cookie = f"demo_session={session}; Path=/; HttpOnly; SameSite=Lax"
        return Reply(200, body=pages.welcome_page(self.title, self.served_by, user),
                     headers=(("Set-Cookie", cookie), ("Cache-Control", "no-store")))

    async def _upload(self, req: Request) -> Reply:
        if req.method in ("GET", "HEAD"):
            return Reply(200, body=pages.upload_page(self.title, self.served_by))
        return self._json(200, {"bytes": req.body_size, "sha256": req.sha256.hexdigest()})

    async def _lesson(self, req: Request) -> Reply:
        room = req.query.get("room", ["7b-maths"])[0]
        if req.method == "POST":
            return self._json(200, {"joined": room})
        return Reply(200, body=pages.lesson_page(self.title, self.served_by, room),
                     headers=(("Cache-Control", "no-store"),))

    async def _import(self, req: Request) -> Reply:
        ms = _int_arg(req, "ms", IMPORT_MS, MAX_SLOW_MS)
        if ms is None:
            return self._error(400, f"ms must be a whole number from 0 to {MAX_SLOW_MS}.")
        await asyncio.sleep(ms / 1000)
        return self._json(200, {"imported": req.lines, "bytes": req.body_size, "ms": ms})

    async def _slow(self, req: Request) -> Reply:
        ms = _int_arg(req, "ms", 1000, MAX_SLOW_MS)
        if ms is None:
            return self._error(400, f"ms must be a whole number from 0 to {MAX_SLOW_MS}.")
        await asyncio.sleep(ms / 1000)
        return self._json(200, {"slept_ms": ms})

    async def _big(self, req: Request) -> Reply:
        size = _int_arg(req, "bytes", 1 << 20, MAX_BIG)
        if size is None:
            return self._error(400, f"bytes must be a whole number from 0 to {MAX_BIG}.")
        if size == 0:
            return Reply(200, "application/octet-stream")
        return Reply(200, "application/octet-stream", stream=size)

    async def _health(self, req: Request) -> Reply:
        return self._json(200, {"status": "ok"})


_READ = ("GET", "HEAD")
_ROUTES = {
    "/": (SchoolServer._start, _READ),
    "/login": (SchoolServer._login, ("GET", "HEAD", "POST")),
    "/upload": (SchoolServer._upload, ("GET", "HEAD", "POST", "PUT")),
    "/lesson/join": (SchoolServer._lesson, ("GET", "HEAD", "POST")),
    "/api/import": (SchoolServer._import, ("GET", "HEAD", "POST", "PUT")),
    "/slow": (SchoolServer._slow, _READ),
    "/big": (SchoolServer._big, _READ),
    "/health": (SchoolServer._health, _READ),
}


def _int_arg(req: Request, name: str, default: int, most: int) -> int | None:
    values = req.query.get(name)
    if not values:
        return default
    text = values[0]
    return int(text) if text.isascii() and text.isdigit() and int(text) <= most else None


async def _drain(writer: asyncio.StreamWriter) -> None:
    """Wait for the send buffer to empty, but not forever on a stalled reader."""
    async with asyncio.timeout(READ_TIMEOUT):
        await writer.drain()


_date_cache = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


class _EofWatcher(asyncio.Protocol):
    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def eof_received(self) -> bool:
        self._stop.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()


async def serve(host: str, port: int, school: str, title: str | None,
                watch_stdin: bool) -> None:
    """Run one school server until SIGTERM/SIGINT (or stdin EOF if watched)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = SchoolServer(school, title)
    bound = await server.start(host, port)
    if watch_stdin:
        await loop.connect_read_pipe(lambda: _EofWatcher(stop), sys.stdin)
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{bound}", flush=True)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo.upstream",
                                     description="Demo school platform server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--school", required=True, help="school name shown on pages")
    parser.add_argument("--title", help="display name (default: the school name)")
    parser.add_argument("--watch-stdin", action="store_true",
                        help="exit when stdin (a pipe from the parent) closes")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.school, args.title, args.watch_stdin))
    except OSError as exc:
        print(f"demo upstream: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
