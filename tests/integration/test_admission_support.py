"""Shared helpers for the test_admission_* integration modules; no tests here.

(The name keeps it among the admission test files and unique as a module
basename: tests/ has no __init__.py, so pytest imports test modules by
basename, and tests/unit/test_admission.py already takes "test_admission".)

- `Gate`: an upstream living in the test process that records every request
  head in arrival order, counts requests in flight (and the peak), holds
  `<any prefix>/hold/<name>` requests until the test releases <name> (or the
  gateway drops the connection), and answers `/sleep/<ms>` after ms. With
  max_inflight = 1 the arrival order at the Gate *is* the admission order,
  with no timing involved.
- `probe_queued()`: how many requests the gateway has queued for the school,
  read from the position in a 503 given to a request of the "probe" class
  (max_wait 0: never queued, so it is answered at once with position =
  queued + 1 while the school is full). This is how the tests know a request
  is queued before sending the next one, instead of sleeping.
"""

from __future__ import annotations

import hashlib
import json
import re
import select
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httptools

from tests.support.clients import HOST, RawConn, Response, build_request, wait_until

# The default classes spelled out (gateway/config/schema.py default_classes),
# so a test can add one without losing them.
BULK_PATHS = ["/import", "/export", "/report", "/sync", "/api/import", "/api/export",
              "/api/report", "/api/sync", "/admin/import", "/admin/export"]
BULK = {"name": "bulk", "priority": 0, "match": {"paths": BULK_PATHS}, "max_wait": 30.0,
        "reject_status": 429}
SUBMIT = {"name": "submit", "priority": 20, "match": {"methods": ["POST", "PUT"]},
          "max_wait": 60.0}
INTERACTIVE = {"name": "interactive", "priority": 10, "max_wait": 20.0}
PROBE_HEADER = "X-Probe"
PROBE = {"name": "probe", "priority": 0, "match": {"headers": {PROBE_HEADER: "*"}},
         "max_wait": 0.0}

JSON_ACCEPT = ("Accept", "application/json")
HTML_ACCEPT = ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
SECRET = "test-secret-0123456789abcdef"


def classes(bulk: Mapping[str, Any] | None = None, submit: Mapping[str, Any] | None = None,
            interactive: Mapping[str, Any] | None = None, probe: bool = True) -> list[dict]:
    """The default classes (each optionally updated), the probe class first."""
    out = [dict(PROBE)] if probe else []
    out.append({**BULK, **(bulk or {})})
    out.append({**SUBMIT, **(submit or {})})
    out.append({**INTERACTIVE, **(interactive or {})})
    return out


# -- the in-process upstream ------------------------------------------------------


@dataclass
class Arrival:
    """One request as the Gate parsed it."""

    seq: int
    conn: int
    method: str = ""
    target: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body_length: int = 0
    sha: Any = field(default_factory=hashlib.sha256)
    complete: bool = False

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


class Gate(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _GateHandler)
        self.lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self.inflight = 0
        self.peak = 0
        self.abandoned = 0
        self._gates: dict[str, threading.Event] = {}
        self._ids = iter(range(1, 1 << 30))
        self._closing = threading.Event()

    @property
    def addr(self) -> str:
        host, port = self.server_address[:2]
        return f"{host}:{port}"

    def next_id(self) -> int:
        with self.lock:
            return next(self._ids)

    def _gate(self, name: str) -> threading.Event:
        with self.lock:
            return self._gates.setdefault(name, threading.Event())

    def release(self, *names: str) -> None:
        """Let the held requests named so (now or later) be answered."""
        for name in names:
            self._gate(name).set()

    def release_all(self) -> None:
        self._closing.set()
        with self.lock:
            gates = list(self._gates.values())
        for gate in gates:
            gate.set()

    def targets(self) -> list[str]:
        with self.lock:
            return [a.target for a in self.arrivals]

    def paths(self) -> list[str]:
        with self.lock:
            return [a.path for a in self.arrivals]

    def snapshot(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)

    def count(self, prefix: str = "/") -> int:
        with self.lock:
            return sum(a.target.startswith(prefix) for a in self.arrivals)

    def wait_count(self, n: int, prefix: str = "/", timeout: float = 5.0) -> bool:
        return wait_until(lambda: self.count(prefix) >= n, timeout)

    def clear(self) -> None:
        with self.lock:
            self.arrivals.clear()
            self.peak = self.inflight


class _GateHandler(socketserver.BaseRequestHandler):
    server: Gate

    def setup(self) -> None:
        self.conn_id = self.server.next_id()
        self.current: Arrival | None = None
        self.done: list[Arrival] = []
        self.parser = httptools.HttpRequestParser(self)

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                break
            while self.done:
                if not self._answer(sock, self.done.pop(0)):
                    return
        # Requests whose head arrived but that were never answered.
        cur = self.current
        if cur is not None and not cur.complete:
            self._leave(abandoned=True)

    def _leave(self, abandoned: bool = False) -> None:
        with self.server.lock:
            self.server.inflight -= 1
            if abandoned:
                self.server.abandoned += 1
        self.current = None

    def _answer(self, sock: socket.socket, req: Arrival) -> bool:
        if req.path.startswith("/sleep/"):
            time.sleep(int(req.path[len("/sleep/"):]) / 1000)
        elif "/hold/" in req.path:
            gate = self.server._gate(req.path.split("/hold/", 1)[1])
            while not gate.wait(0.02):
                if _peer_closed(sock):
                    self._leave(abandoned=True)
                    return False
        body = json.dumps({"method": req.method, "target": req.target,
                           "body_length": req.body_length,
                           "body_sha256": req.sha.hexdigest()}).encode()
        # Out of flight before the answer leaves: the gateway may admit the
        # next request as soon as it has this response.
        self._leave()
        try:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
        except OSError:
            return False
        return True

    # httptools callbacks
    def on_message_begin(self) -> None:
        with self.server.lock:
            self.current = Arrival(len(self.server.arrivals) + 1, self.conn_id)

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        cur = self.current
        assert cur is not None
        cur.method = self.parser.get_method().decode("latin-1")
        with self.server.lock:
            self.server.arrivals.append(cur)
            self.server.inflight += 1
            self.server.peak = max(self.server.peak, self.server.inflight)

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body_length += len(body)
        self.current.sha.update(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True
        self.done.append(self.current)


def _peer_closed(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def start_gate() -> Gate:
    gate = Gate()
    threading.Thread(target=gate.serve_forever, args=(0.05,), name="gate", daemon=True).start()
    return gate


def stop_gate(gate: Gate) -> None:
    gate.release_all()
    gate.shutdown()
    gate.server_close()


# -- talking to the gateway ---------------------------------------------------------


# Connections opened by send() and connect_from(); the modules close them
# after each test (close_all), whatever the test did.
_OPEN: list[RawConn] = []


def close_all() -> None:
    """Reset every connection still open: a plain close (FIN) is a half-close
    to the gateway, which would go on serving it and hold up its shutdown."""
    while _OPEN:
        conn = _OPEN.pop()
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed
        conn.close()


def connect(port: int, timeout: float = 10.0) -> RawConn:
    conn = RawConn(port, timeout=timeout)
    _OPEN.append(conn)
    return conn


def send(port: int, method: str = "GET", target: str = "/", headers: Iterable[tuple[str, str]] = (),
         body: bytes = b"", timeout: float = 10.0, host: str = HOST) -> RawConn:
    """Open a connection and send one request; read the answer later."""
    conn = connect(port, timeout)
    conn.send(build_request(method, target, list(headers), body, host=host))
    return conn


def probe(port: int, host: str = HOST) -> Response:
    with RawConn(port) as conn:
        conn.send(build_request("GET", "/probe", [(PROBE_HEADER, "1"), JSON_ACCEPT], host=host))
        return conn.recv_response()


def probe_queued(port: int, host: str = HOST) -> int | None:
    """Requests queued for the school, or None if it is not full."""
    resp = probe(port, host)
    if resp.status != 503:
        return None
    return int(resp.json()["position"]) - 1


def wait_queued(port: int, n: int, timeout: float = 5.0, host: str = HOST) -> None:
    """Block until the school has exactly n requests queued."""
    seen: list[int | None] = []

    def check() -> bool:
        seen.append(probe_queued(port, host))
        return seen[-1] == n

    assert wait_until(check, timeout, 0.02), f"queue never reached {n}: probes saw {seen[-5:]}"


def read_all(conns: Iterable[RawConn], method: str = "GET") -> Iterator[Response]:
    for conn in conns:
        try:
            yield conn.recv_response(method)
        finally:
            conn.close()


def gateway_for(make_gateway: Any, upstream: str, *, school: Mapping[str, Any] | None = None,
                admission: Mapping[str, Any] | None = None,
                klasses: list[dict] | None = None, **overrides: Any) -> Any:
    """A gateway for one school (max_inflight 1 unless `school` says otherwise)
    with the default classes plus the probe class and a fixed ticket secret."""
    return make_gateway(
        upstreams=[upstream], school={"max_inflight": 1, **(school or {})},
        classes=classes() if klasses is None else klasses,
        admission={"secret": SECRET, **(admission or {})}, **overrides)


def hold(port: int, gate: Gate, name: str, headers: Iterable[tuple[str, str]] = (),
         prefix: str = "", host: str = HOST) -> RawConn:
    """Send GET <prefix>/hold/<name> and wait until the Gate has it (a slot
    is taken until gate.release(name))."""
    target = f"{prefix}/hold/{name}"
    before = gate.count(target)
    conn = send(port, "GET", target, headers, host=host)
    assert gate.wait_count(before + 1, target), f"{target} never reached the upstream"
    return conn


def queue(port: int, method: str, target: str, headers: Iterable[tuple[str, str]] = (),
          body: bytes = b"", host: str = HOST) -> RawConn:
    """Send a request that must be queued, and wait until it is."""
    before = probe_queued(port, host)
    assert before is not None, "the school is not full: nothing would queue"
    conn = send(port, method, target, headers, body, host=host)
    wait_queued(port, before + 1, host=host)
    return conn


def retry_after(resp: Response) -> int:
    value = resp.header("Retry-After")
    assert value is not None and value.isdigit(), resp.headers
    assert int(value) >= 1
    return int(value)


_POSITION = re.compile(rb'id="sg-position">([^<]*)<')
_CONFIG = re.compile(rb'<script type="application/json" id="sg-config">([^<]*)</script>')


def page_position(resp: Response) -> str:
    match = _POSITION.search(resp.body)
    assert match is not None, resp.body[:300]
    return match.group(1).decode()


def page_config(resp: Response) -> dict[str, Any]:
    match = _CONFIG.search(resp.body)
    assert match is not None, "no polling script config in the page"
    return json.loads(match.group(1))


def ticket_cookie(resp: Response) -> str:
    """The `schoolgate_ticket=...` pair from the response's Set-Cookie."""
    cookies = [c for c in resp.headers_named("Set-Cookie") if c.startswith(COOKIE + "=")]
    assert len(cookies) == 1, resp.headers
    return cookies[0].split(";", 1)[0]


COOKIE = "schoolgate_ticket"
STATUS_PATH = "/.schoolgate/status"


def assert_waiting_page(resp: Response, url: str | None = None) -> int:
    """The browser waiting page; returns the position it shows."""
    assert resp.status == 503, (resp.status, resp.body[:200])
    assert (resp.header("Content-Type") or "").startswith("text/html")
    assert resp.header("Cache-Control") == "no-store"
    retry_after(resp)
    cookie = next(c for c in resp.headers_named("Set-Cookie") if c.startswith(COOKIE + "="))
    attrs = [a.strip().lower() for a in cookie.split(";")[1:]]
    assert "httponly" in attrs and "path=/" in attrs
    position = page_position(resp)
    assert position.isdigit() and int(position) >= 1, position
    config = page_config(resp)
    assert config["status"] == STATUS_PATH
    if url is not None:
        assert config["url"] == url
    return int(position)


def assert_closed_cleanly(conn: RawConn, timeout: float = 5.0) -> None:
    """After the answer was read: the gateway ends with FIN, not a reset, and
    sends nothing more."""
    assert not conn.buf, bytes(conn.buf[:200])
    conn.sock.settimeout(timeout)
    try:
        data = conn.sock.recv(65536)
    except ConnectionResetError:
        raise AssertionError("connection reset instead of closed") from None
    except TimeoutError:
        raise AssertionError(f"connection still open after {timeout}s") from None
    assert data == b"", data[:200]


def connect_from(source_ip: str, port: int, timeout: float = 10.0) -> RawConn:
    """A RawConn whose socket is bound to source_ip (any of 127.0.0.0/8)."""
    conn = RawConn.__new__(RawConn)
    conn.timeout = timeout
    conn.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                         source_address=(source_ip, 0))
    conn.buf = bytearray()
    conn.eof = False
    _OPEN.append(conn)
    return conn
