"""A scripted raw-socket upstream, for what the gateway does when an upstream
misbehaves: responses that run past their end, heads that never end, chunk
lines without limit, connections closed while idle or under a request.

It runs in the test process (a thread per connection), reads each request
with its own small parser (request line, headers, a Content-Length body) and
writes whatever the test's handler returns for the request's path, byte for
byte. It records every request and how every connection ended, so a test can
assert what reached the upstream and whether the gateway closed a
connection rather than reuse it.

A handler takes the request (`Seen`) and returns a `Reply`:

- bytes: written with one sendall (on loopback, usually one read for the
  gateway), and the connection waits for the next request;
- an iterable of items, each written in turn: bytes, a float (sleep that
  many seconds first), or CLOSE (close the connection after what came
  before); a generator may stream without end, and stops when the gateway
  closes the connection (or send_timeout passes with nothing taken);
- None: close the connection without an answer.

Keep-alive behaviour, for the pool's tests: ``idle_close`` closes a
connection that has been idle that long (as a server's keep-alive timer
does), and ``refuse_after`` drops, unanswered, a request that arrives on a
connection idle at least that long (as when the upstream's close and the
request cross on the wire).
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

CLOSE = object()
Reply = bytes | Iterable[object] | None
Handler = Callable[["Seen"], Reply]

MAX_HEAD = 1 << 20


@dataclass
class Seen:
    """One request as the upstream read it."""

    conn: int
    number: int                      # on its connection, from 1
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    idle: float                      # seconds its connection was idle before it (0: first)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass
class ConnRecord:
    """How one upstream connection went."""

    id: int
    requests: int = 0
    # "" while open; "peer" when the gateway closed or reset it, "idle" when
    # idle_close fired, "refused" for a request dropped by refuse_after,
    # "handler" when a reply closed it, "restart" for close_idle(), "error"
    # for a request it could not read, "stalled" when the gateway took
    # nothing for send_timeout.
    ended: str = ""
    sent: int = 0                    # bytes written to the gateway
    done: threading.Event = field(default_factory=threading.Event)
    # Set while the connection waits for a request (for close_idle()).
    sock: socket.socket | None = field(default=None, repr=False)
    killed: bool = False


def response(status: int = 200, body: bytes = b"", headers: Iterable[tuple[str, str]] = (),
             reason: str = "OK") -> bytes:
    """One response with a Content-Length (unless headers name a framing)."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    names = set()
    for name, value in headers:
        lines.append(f"{name}: {value}")
        names.add(name.lower())
    if not names & {"content-length", "transfer-encoding"} and status not in (204, 304) \
            and status >= 200:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def echo(req: Seen) -> bytes:
    """The default handler: a JSON summary of the request and its connection."""
    payload = {"conn": req.conn, "number": req.number, "method": req.method,
               "target": req.target, "body": len(req.body)}
    return response(200, json.dumps(payload).encode(), [("Content-Type", "application/json")])


class HostileUpstream:
    """A scripted upstream on 127.0.0.1; use as a context manager."""

    def __init__(self, routes: dict[str, Handler] | None = None, *,
                 idle_close: float | None = None, refuse_after: float | None = None,
                 send_timeout: float = 10.0) -> None:
        self.routes: dict[str, Handler] = dict(routes or {})
        self.idle_close = idle_close
        self.refuse_after = refuse_after
        self.send_timeout = send_timeout
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.conns: dict[int, ConnRecord] = {}
        self._ids = iter(range(1, 1 << 30))
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="hostile-upstream", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> HostileUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # -- what the tests look at --------------------------------------------------
    def clear(self) -> None:
        """Forget the requests seen so far (connections stay on record)."""
        with self.lock:
            self.seen.clear()

    def requests(self, path: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen
                    if path is None or s.target.split("?", 1)[0] == path]

    def connection(self, conn_id: int) -> ConnRecord:
        with self.lock:
            return self.conns[conn_id]

    def close_idle(self) -> int:
        """Close every connection waiting for a request, at once (as a restart
        does); their `ended` becomes "restart". Returns how many."""
        with self.lock:
            waiting = [c for c in self.conns.values() if c.sock is not None and not c.ended]
            for record in waiting:
                record.killed = True
                try:
                    record.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return len(waiting)

    def wait_ended(self, conn_id: int, timeout: float = 5.0) -> str:
        """How connection conn_id ended ("" if it is still open after timeout)."""
        record = self.connection(conn_id)
        record.done.wait(timeout)
        return record.ended

    # -- serving -------------------------------------------------------------------
    def _handler(self, req: Seen) -> Handler:
        return self.routes.get(req.target.split("?", 1)[0], echo)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: HostileUpstream) -> None:
        super().__init__(("127.0.0.1", 0), _Connection)
        self.owner = owner


class _Ended(Exception):
    def __init__(self, how: str) -> None:
        self.how = how


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        owner = self.server.owner
        sock: socket.socket = self.request
        with owner.lock:
            self.record = ConnRecord(next(owner._ids))
            owner.conns[self.record.id] = self.record
        self.buf = bytearray()
        idle_since: float | None = None
        how = "peer"
        try:
            while True:
                idle = self._await_request(sock, idle_since)
                req = self._read_request(sock, idle)
                with owner.lock:
                    owner.seen.append(req)
                    self.record.requests += 1
                if not self._reply(sock, owner._handler(req)(req)):
                    how = "handler"
                    break
                idle_since = time.monotonic()
        except _Ended as end:
            how = end.how
        except TimeoutError:
            how = "stalled"  # the gateway stopped reading for send_timeout
        except OSError:
            how = "peer"
        finally:
            self.record.ended = "restart" if self.record.killed else how
            self.record.done.set()

    def _recv(self, sock: socket.socket) -> None:
        data = sock.recv(65536)
        if not data:
            raise _Ended("peer")
        self.buf += data

    def _await_request(self, sock: socket.socket, idle_since: float | None) -> float:
        """Wait for the first byte of the next request; its connection's idle time."""
        owner = self.server.owner
        if not self.buf:
            sock.settimeout(owner.idle_close if idle_since is not None else None)
            with owner.lock:
                self.record.sock = sock
            try:
                self._recv(sock)
            except TimeoutError:
                raise _Ended("idle") from None
            finally:
                with owner.lock:
                    self.record.sock = None
                sock.settimeout(owner.send_timeout)
        idle = 0.0 if idle_since is None else time.monotonic() - idle_since
        if owner.refuse_after is not None and idle_since is not None \
                and idle >= owner.refuse_after:
            raise _Ended("refused")
        return idle

    def _read_request(self, sock: socket.socket, idle: float) -> Seen:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise _Ended("error")
            self._recv(sock)
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        parts = head[0].split(" ")
        if len(parts) != 3:
            raise _Ended("error")
        headers = []
        for line in head[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _Ended("error")
            headers.append((name, value.strip()))
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        if any(k.lower() == "transfer-encoding" for k, _ in headers):
            raise _Ended("error")  # the tests here send no chunked requests
        while len(self.buf) < length:
            self._recv(sock)
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return Seen(self.record.id, self.record.requests + 1, parts[0], parts[1], headers,
                    body, idle)

    def _reply(self, sock: socket.socket, reply: Reply) -> bool:
        """Write a reply; False once the connection is to be closed."""
        if reply is None:
            return False
        items: Iterable[object] = [reply] if isinstance(reply, bytes) else reply
        for item in items:
            if item is CLOSE:
                return False
            if isinstance(item, float):
                time.sleep(item)
                continue
            assert isinstance(item, bytes), item
            sock.sendall(item)
            self.record.sent += len(item)
        return True
