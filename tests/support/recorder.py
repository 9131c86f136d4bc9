"""A recording upstream for framing tests, and the assertions they share.

The question for smuggling is not only what the client is told but what the
upstream parsed, so the upstream is a recorder living in the test process:
it parses every byte the gateway sends it (with httptools, as a typical
Python upstream would), answers each complete request with 200, and keeps
every request it saw, complete or not. A case passes when the upstream saw
exactly the requests the client legitimately made and nothing else.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

from tests.support.clients import HOST, RawConn, request, wait_until
from tests.support.procs import Gateway

LOG_TAIL = 40


@dataclass
class Seen:
    """One request as the upstream parsed it."""

    conn: int
    method: str = ""
    target: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False


class Recorder(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        # Connections on which the upstream's parser failed: the gateway sent
        # bytes that are not HTTP, which is a desync even without a request.
        self.parse_errors: list[tuple[int, str]] = []
        self.closed: set[int] = set()
        self._ids = iter(range(1, 1 << 30))

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[Recorder]:
        """A recorder serving on a free loopback port until the block ends."""
        server = cls()
        thread = threading.Thread(target=server.serve_forever, name="recorder", daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            server.server_close()
            thread.join()

    @property
    def addr(self) -> str:
        host, port = self.server_address[:2]
        return f"{host}:{port}"

    def next_id(self) -> int:
        with self.lock:
            return next(self._ids)

    def clear(self) -> None:
        with self.lock:
            self.seen.clear()
            self.parse_errors.clear()

    def snapshot(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    def targets(self, complete: bool = True) -> list[str]:
        return [s.target for s in self.snapshot() if s.complete or not complete]


class _RecordingHandler(socketserver.BaseRequestHandler):
    server: Recorder

    def setup(self) -> None:
        self.conn_id = self.server.next_id()
        self.current: Seen | None = None
        self.answers = 0
        self.parser = httptools.HttpRequestParser(self)

    def handle(self) -> None:
        sock: socket.socket = self.request
        while data := _recv(sock):
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                with self.server.lock:
                    self.server.parse_errors.append((self.conn_id, str(exc)))
                return
            while self.answers:
                self.answers -= 1
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    def finish(self) -> None:
        with self.server.lock:
            self.server.closed.add(self.conn_id)

    def on_message_begin(self) -> None:
        self.current = Seen(self.conn_id)
        with self.server.lock:
            self.server.seen.append(self.current)

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method().decode("latin-1")

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True
        self.answers += 1


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def log_tail(gw: Gateway) -> str:
    return "\n".join(gw.log().splitlines()[-LOG_TAIL:])


def expect_400(gw: Gateway, payload: bytes, words: tuple[str, ...] = ()) -> None:
    """The gateway answers 400 in its own words and closes the connection."""
    with RawConn(gw.port) as conn:
        try:
            conn.send(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.recv_response()
        assert resp.status == 400, f"{resp}\n{log_tail(gw)}"
        assert resp.reason == HTTPStatus.BAD_REQUEST.phrase
        assert resp.has_token("Connection", "close")
        assert resp.header("Content-Type") == "text/plain; charset=utf-8"
        body = resp.body.decode("utf-8").lower()
        assert 0 < len(body) <= 512
        if words:
            assert any(w in body for w in words), f"{body!r} names none of {words}"
        assert conn.closed()


def head(request_line: str, *lines: str) -> bytes:
    return ("\r\n".join((request_line, f"Host: {HOST}", *lines)) + "\r\n\r\n").encode()


def expect_clean_follow_up(gw: Gateway, recorder: Recorder) -> None:
    """A normal request after an attack is answered for itself, on whatever
    pooled connection the gateway picks: no leftover bytes ahead of it."""
    resp = request(gw.port, target="/follow-up")
    assert resp.status == 200
    assert resp.body == b"ok\n"
    assert wait_until(lambda: "/follow-up" in recorder.targets())
    assert "/smuggled" not in recorder.targets(complete=False)
