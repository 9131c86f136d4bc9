"""An open-loop HTTP/1.1 load generator on raw asyncio sockets.

wrk is closed-loop: each connection waits for its answer before it asks
again, so a proxy that makes clients wait is rewarded with less load, and
wrk's Lua cannot time requests by path. Overload behaviour needs the
opposite: requests arrive on a fixed schedule whatever the proxy does, and
each is timed from the moment it was *due* (not sent), so a generator that
falls behind inflates latency instead of hiding it. The schedule lag is
reported too; when its p99 exceeds a few milliseconds the generator, not the
system under test, was the bottleneck and the run should be read as such.

Requests look like a school's traffic: pages ask for HTML the way a browser
does, `/api/...` calls for JSON the way a page's scripts do. Each answer is
classified by who made it and what it tells the client (`answer_kind`), so
a proxy's waiting page is told apart from its error page.

Parsing is httptools (C), the loop is uvloop; a few thousand requests per
second cost well under one core, which covers 10x the slow upstream's
capacity (4,000 req/s).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools

HOST = "127.0.0.1"
BULK_PATHS = ("/api/import/users?batch={n}", "/api/import/grades?batch={n}")
INTERACTIVE_PATHS = ("/", "/courses/{n}", "/api/grades?student={n}", "/timetable?week={n}")
ACCEPT_HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ACCEPT_JSON = "application/json"

# What an answer told the client (see answer_kind).
OK, ORIGIN, WAITING, BACK_OFF, ERROR, OTHER = (
    "ok", "origin", "waiting", "back-off", "error", "other"
)
# Enough of a proxy-made body to recognise a waiting page.
_BODY_KEEP = 65536
_WAITING_MARKERS = (b'id="sg-position"', b'"error":"busy"')


def answer_kind(status: int, from_origin: bool, retry_after: bool, body: bytes) -> str:
    """Who made a response and what it tells the client.

    - "ok": a 2xx from the origin;
    - "origin": any other status from the origin: the proxy let through more
      than the origin could take;
    - "waiting": a proxy-made 503 with Retry-After whose body is a waiting
      page (the gateway's HTML page showing the place in line, or its JSON
      `{"error": "busy", "position": ...}`);
    - "back-off": a proxy-made 429 with Retry-After (bulk told to come back);
    - "error": any other proxy-made 4xx/5xx: nginx's 503/502 error page,
      HAProxy's 503/504, the gateway's "server is not answering" page;
    - "other": anything else the proxy made itself (should not happen).
    """
    if from_origin:
        return OK if 200 <= status < 300 else ORIGIN
    if status == 503 and retry_after and any(m in body for m in _WAITING_MARKERS):
        return WAITING
    if status == 429 and retry_after:
        return BACK_OFF
    return ERROR if status >= 400 else OTHER


class _Conn(asyncio.Protocol):
    """One keep-alive client connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bool, bool, str]] | None = None
        self.from_origin = False
        self.retry_after = False
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("closed before a response"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)
            self.close()

    def on_message_begin(self) -> None:
        self.from_origin = self.retry_after = False
        self.body.clear()

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"x-origin":
            self.from_origin = True
        elif name == b"retry-after":
            self.retry_after = True

    def on_body(self, body: bytes) -> None:
        # Only proxy-made answers are classified by their body.
        if not self.from_origin and len(self.body) < _BODY_KEEP:
            self.body += body

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            status = self.parser.get_status_code()
            kind = answer_kind(status, self.from_origin, self.retry_after, bytes(self.body))
            self.waiter.set_result(
                (status, self.from_origin, self.parser.should_keep_alive(), kind)
            )

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bool, bool, str]]:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(raw)
        return self.waiter

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def request_bytes(path: str, accept: str = "*/*") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: bench.school\r\nUser-Agent: schoolgate-bench\r\n"
        f"Accept: {accept}\r\n\r\n"
    ).encode()


def accept_for(path: str) -> str:
    """What a browser (pages) or a page's script / import tool (`/api/`) asks for."""
    return ACCEPT_JSON if path.startswith("/api/") else ACCEPT_HTML


@dataclass
class ClassResult:
    """What one traffic class saw during a run."""

    sent: int = 0
    # Seconds from due time to response, for 2xx answers the origin produced.
    ok_latency: list[float] = field(default_factory=list)
    # Seconds from due time to any response at all.
    answer_latency: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    # Non-2xx answers produced by the origin itself: load the proxy let through.
    origin_errors: Counter[int] = field(default_factory=Counter)
    # Every answer by (answer_kind, status).
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    # Requests that got no HTTP answer: timeout, reset, connect, client-limit.
    failures: Counter[str] = field(default_factory=Counter)


@dataclass
class RunResult:
    rate: float
    duration: float
    classes: dict[str, ClassResult]
    lag: list[float]
    # From the first due time until the last answer: the window admitted
    # requests were actually served in (queues drain after sending stops).
    elapsed: float


async def open_loop(
    port: int | Sequence[int], *, rate: float, duration: float, bulk_share: float,
    timeout: float = 10.0, max_connections: int = 10_000, seed: int = 1,
) -> RunResult:
    """Send `rate` requests per second for `duration` seconds, `bulk_share` of them bulk.

    Several ports (instances of one system): each new connection goes to
    the next, as a layer-4 balancer spreads connections."""
    ports = [port] if isinstance(port, int) else list(port)
    opened = 0
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    idle: list[_Conn] = []
    open_conns = 0
    classes = {"interactive": ClassResult(), "bulk": ClassResult()}
    lag: list[float] = []
    pending: set[asyncio.Task[None]] = set()

    async def one(kind: str, raw: bytes, due: float) -> None:
        nonlocal open_conns, opened
        result = classes[kind]
        conn = None
        while idle and conn is None:
            candidate = idle.pop()
            if candidate.usable:
                conn = candidate
            else:
                open_conns -= 1
        try:
            async with asyncio.timeout(timeout):
                if conn is None:
                    if open_conns >= max_connections:
                        result.failures["client-limit"] += 1
                        return
                    open_conns += 1
                    opened += 1
                    try:
                        _, conn = await loop.create_connection(
                            _Conn, HOST, ports[opened % len(ports)])
                    except OSError:
                        open_conns -= 1
                        result.failures["connect"] += 1
                        return
                status, from_origin, keep_alive, answer = await conn.request(raw)
        except TimeoutError:
            result.failures["timeout"] += 1
        except (OSError, httptools.HttpParserError):
            result.failures["reset"] += 1
        else:
            elapsed = loop.time() - due
            result.answer_latency.append(elapsed)
            result.statuses[status] += 1
            result.answers[answer, status] += 1
            if 200 <= status < 300 and from_origin:
                result.ok_latency.append(elapsed)
            elif from_origin:
                result.origin_errors[status] += 1
            if keep_alive and conn.usable:
                idle.append(conn)
                return
        if conn is not None:
            conn.close()
            open_conns -= 1

    total = int(rate * duration)
    interval = 1.0 / rate
    start = loop.time() + 0.01
    sent = 0
    while sent < total:
        now = loop.time()
        while sent < total and start + sent * interval <= now:
            due = start + sent * interval
            lag.append(now - due)
            kind = "bulk" if rng.random() < bulk_share else "interactive"
            templates = BULK_PATHS if kind == "bulk" else INTERACTIVE_PATHS
            path = rng.choice(templates).format(n=rng.randrange(1, 10_000))
            classes[kind].sent += 1
            task = loop.create_task(one(kind, request_bytes(path, accept_for(path)), due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        if sent < total:
            await asyncio.sleep(max(0.0, start + sent * interval - loop.time()))
    if pending:
        await asyncio.wait(pending)
    for conn in idle:
        conn.close()
    return RunResult(
        rate=rate, duration=duration, classes=classes, lag=lag, elapsed=loop.time() - start
    )


async def hold_idle(
    port: int, count: int, *, parallel: int = 200, timeout: float = 10.0
) -> tuple[list[_Conn], Counter[str]]:
    """Open `count` connections, complete one request on each, and keep them open.

    Returns the live connections (the caller closes them) and failure counts
    by kind ("status 404", "reset", "timeout", "connect").
    """
    loop = asyncio.get_running_loop()
    held: list[_Conn] = []
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(parallel)
    raw = request_bytes("/")

    async def one() -> None:
        async with gate:
            conn = None
            try:
                async with asyncio.timeout(timeout):
                    _, conn = await loop.create_connection(_Conn, HOST, port)
                    status, _, keep_alive, _ = await conn.request(raw)
            except TimeoutError:
                failures["timeout"] += 1
            except OSError:
                failures["connect" if conn is None else "reset"] += 1
            except httptools.HttpParserError:
                failures["reset"] += 1
            else:
                if 200 <= status < 300 and keep_alive and conn.usable:
                    held.append(conn)
                    return
                failures[f"status {status}" if status >= 300 else "closed"] += 1
            if conn is not None:
                conn.close()

    await asyncio.gather(*(one() for _ in range(count)))
    return held, failures
