"""Clients for talking to the gateway: byte-level and through real libraries.

The byte-level side (``RawConn``, ``raw_request``, ``read_response``) has its
own small, strict HTTP/1.1 response reader so the tests do not share a parser
(httptools) with the code under test, and so framing is visible: a test can
check that a response was close-delimited rather than chunked.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

HOST = "school.test"
# Statuses the gateway must never send: an upstream failure is answered with
# 503 and Retry-After (the waiting room), not a bare gateway error.
FORBIDDEN_STATUSES = frozenset({502, 504})


def build_request(method: str = "GET", target: str = "/echo",
                  headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                  version: str = "HTTP/1.1", host: str | None = HOST) -> bytes:
    """Request bytes; adds Host (unless None) and Content-Length for a body."""
    head = [f"{method} {target} {version}"]
    names = set()
    if host is not None:
        head.append(f"Host: {host}")
    for name, value in headers:
        head.append(f"{name}: {value}")
        names.add(name.lower())
    if body and not names & {"content-length", "transfer-encoding"}:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes, trailers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A chunked body made of the given chunks (empty pieces are skipped)."""
    out = bytearray()
    for piece in pieces:
        if piece:
            out += b"%x\r\n%b\r\n" % (len(piece), piece)
    out += b"0\r\n"
    for name, value in trailers:
        out += f"{name}: {value}\r\n".encode("latin-1")
    return bytes(out + b"\r\n")


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    # "none" (no body allowed), "length", "chunked" or "close".
    framing: str = "none"
    trailers: list[tuple[str, str]] = field(default_factory=list)
    # 1xx responses that came before this one, in order.
    interim: list[Response] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has_token(self, name: str, token: str) -> bool:
        """Whether a comma-separated header (e.g. Connection) lists token."""
        return any(t.strip().lower() == token.lower()
                   for v in self.headers_named(name) for t in v.split(","))

    def json(self) -> Any:
        return json.loads(self.body)


class ProtocolViolation(AssertionError):
    """The peer sent bytes that are not a valid HTTP/1.1 response."""


class RawConn:
    """A plain TCP connection with buffered, blocking reads and a deadline per read."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()
        self.eof = False

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self) -> bool:
        """Read once into the buffer; False at end of stream."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_headers(self) -> bytes:
        """Bytes up to and including the next blank line; the rest stays buffered."""
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if not self._fill():
                raise ProtocolViolation(f"connection closed inside a head: {bytes(self.buf)!r}")
        return self._take(end + 4)

    def recv_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if not self._fill():
                raise ProtocolViolation(f"connection closed inside a line: {bytes(self.buf)!r}")
        return self._take(end + 2)[:-2]

    def recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ProtocolViolation(f"connection closed after {len(self.buf)} of {n} bytes")
        return self._take(n)

    def recv_until_close(self) -> bytes:
        while self._fill():
            pass
        return self._take(len(self.buf))

    def recv_available(self, wait: float = 0.2) -> bytes:
        """Whatever arrives within wait seconds (possibly nothing)."""
        self.sock.settimeout(wait)
        try:
            self._fill()
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(self.timeout)
        return self._take(len(self.buf))

    def closed(self, timeout: float = 2.0) -> bool:
        """Whether the peer closes within timeout; data arriving first means no."""
        if self.buf:
            return False
        if self.eof:
            return True
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)

    def recv_response(self, method: str = "GET", *, final: bool = True) -> Response:
        """Read one response; 1xx ones are collected in .interim unless final=False."""
        interim: list[Response] = []
        while True:
            resp = self._recv_one(method)
            if not 100 <= resp.status < 200 or not final or resp.status == 101:
                resp.interim = interim
                return resp
            interim.append(resp)

    def _recv_one(self, method: str) -> Response:
        head = self.recv_headers().decode("latin-1")
        lines = head[:-4].split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolViolation(f"bad status line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolViolation(f"bad header line {line!r}")
            headers.append((name, value.strip()))
        resp = Response(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", headers)
        self._read_body(resp, method)
        return resp

    def _read_body(self, resp: Response, method: str) -> None:
        if method == "HEAD" or 100 <= resp.status < 200 or resp.status in (204, 304):
            return
        encodings = [t.strip().lower() for v in resp.headers_named("Transfer-Encoding")
                     for t in v.split(",")]
        lengths = resp.headers_named("Content-Length")
        if encodings:
            if lengths:
                raise ProtocolViolation("both Transfer-Encoding and Content-Length")
            if encodings[-1] != "chunked":
                resp.framing, resp.body = "close", self.recv_until_close()
                return
            resp.framing = "chunked"
            resp.body, resp.trailers = self._read_chunked()
        elif lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                raise ProtocolViolation(f"bad Content-Length {lengths}")
            resp.framing, resp.body = "length", self.recv_exact(int(lengths[0]))
        else:
            resp.framing, resp.body = "close", self.recv_until_close()

    def _read_chunked(self) -> tuple[bytes, list[tuple[str, str]]]:
        body = bytearray()
        while True:
            size_field = self.recv_line().split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise ProtocolViolation(f"bad chunk size {size_field!r}")
            if size == 0:
                break
            body += self.recv_exact(size)
            if self.recv_exact(2) != b"\r\n":
                raise ProtocolViolation("chunk not followed by CRLF")
        trailers = []
        while line := self.recv_line():
            name, _, value = line.decode("latin-1").partition(":")
            trailers.append((name, value.strip()))
        return bytes(body), trailers


def raw_request(port: int, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send data on a fresh connection; everything received until the gateway
    closes or read_timeout passes without a byte.

    Tests that expect the connection to stay open should use RawConn instead:
    this function then only returns after read_timeout.
    """
    with RawConn(port, timeout=read_timeout) as conn:
        conn.send(data)
        out = bytearray()
        try:
            while conn._fill():
                out += conn._take(len(conn.buf))
        except TimeoutError:
            pass
        return bytes(out + conn.buf)


def request(port: int, method: str = "GET", target: str = "/echo",
            headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
            version: str = "HTTP/1.1", timeout: float = 5.0) -> Response:
    """One request on a fresh connection, one response back."""
    with RawConn(port, timeout=timeout) as conn:
        conn.send(build_request(method, target, headers, body, version))
        return conn.recv_response(method)


def http_client(base_url: str, **kwargs: Any) -> httpx.Client:
    """An httpx client that addresses the test school whatever the URL says."""
    kwargs.setdefault("timeout", 10.0)
    headers = {"Host": HOST, **kwargs.pop("headers", {})}
    return httpx.Client(base_url=base_url, headers=headers, **kwargs)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll predicate until true or timeout; for state that settles asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
