"""A purpose-built HTTP/1.1 upstream for the integration tests.

Run as ``python -m tests.support.upstream --port P [--name N]``. It speaks
HTTP/1.1 with keep-alive and pipelining, streams every body in both directions
(an upload is hashed as it arrives, a download is generated as the socket
drains), so multi-gigabyte transfers cost it no memory. Each endpoint makes
one upstream behaviour reproducible; see ``_ROUTES`` and the handlers. Any
endpoint given ``?only=<name>`` behaves as /echo on upstreams with another
name, so one member of a pool can fail while the others work.

Downloads carry a deterministic pattern (byte ``i`` of a body is ``i % 256``)
so a client can check content without the upstream telling it a hash.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import socket
import struct
from collections import defaultdict
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import httptools

from tests.support.pattern import BLOCK, pattern
from tests.support.wsecho import WebSocketEcho, accept_key

_CONTROL = ("/__stats", "/__reset")


class Stats:
    """Counters shared by all connections of one upstream process."""

    def __init__(self, name: str) -> None:
        self.name = name
        # Live gauge, not a counter: a reset must not forget open connections.
        self.open = 0
        self.reset()

    def reset(self) -> None:
        self.requests: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self.connections = 0

    def snapshot(self) -> dict:
        return {
            "name": self.name,
            "requests": {path: dict(methods) for path, methods in self.requests.items()},
            "connections": self.connections,
            "open_connections": self.open,
        }


class Request:
    """One request as received; the body is summarised, never kept."""

    __slots__ = ("body_length", "done", "expect_continue", "headers", "keep_alive",
                 "method", "number", "path", "query", "target", "upgrade", "version",
                 "continue_sent", "_sha")

    def __init__(self, method: str, target: str, version: str,
                 headers: list[tuple[str, str]], keep_alive: bool, number: int,
                 done: asyncio.Future[None]) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.number = number
        self.done = done
        parts = urlsplit(target)
        self.path = parts.path
        self.query = parse_qs(parts.query)
        self.upgrade = False
        self.body_length = 0
        self._sha = hashlib.sha256()
        self.expect_continue = any(
            k.lower() == "expect" and v.strip().lower() == "100-continue" for k, v in headers
        )
        self.continue_sent = False

    def feed(self, chunk: bytes) -> None:
        self.body_length += len(chunk)
        self._sha.update(chunk)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def int_arg(self, name: str, default: int) -> int:
        values = self.query.get(name)
        return int(values[0]) if values else default


class Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order."""

    def __init__(self, stats: Stats, conn_id: int) -> None:
        self._stats = stats
        self._id = conn_id
        self._parser = httptools.HttpRequestParser(self)
        self._queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self._writable = asyncio.Event()
        self._writable.set()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._requests = 0
        self._current: Request | None = None
        self._url = bytearray()
        self._headers: list[tuple[str, str]] = []
        # Bytes after a WebSocket handshake, held until the handler switches over.
        self._raw: bytearray | None = None
        self._ws: WebSocketEcho | None = None
        self._lost = False
        # A connection opened only to query /__stats or /__reset is the test
        # looking, not traffic: it is left out of the counts.
        self._control = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._stats.connections += 1
        self._stats.open += 1
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if not self._control:
            self._stats.open -= 1
        self._writable.set()
        if self._task is not None:
            self._task.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        if self._ws is not None:
            self._ws.feed(data)
            return
        if self._raw is not None:
            self._raw += data
            return
        self._feed(data)

    def eof_received(self) -> bool:
        if self._ws is not None or self._raw is not None:
            return False  # a tunnel has no answers left to give: close
        # Half-closed clients still get the answers already asked for.
        self._queue.put_nowait(None)
        return True

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._requests += 1
        method = self._parser.get_method().decode("ascii")
        req = Request(method, self._url.decode("latin-1"), self._parser.get_http_version(),
                      self._headers, self._parser.should_keep_alive(), self._requests,
                      asyncio.get_running_loop().create_future())
        if req.path not in _CONTROL:
            self._stats.requests[req.path][method] += 1
        elif self._requests == 1:
            self._control = True
            self._stats.connections -= 1
            self._stats.open -= 1
        self._current = req
        self._queue.put_nowait(req)

    def on_body(self, body: bytes) -> None:
        assert self._current is not None
        self._current.feed(body)

    def on_message_complete(self) -> None:
        assert self._current is not None
        self._current.done.set_result(None)

    # internals

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            tail = data[exc.args[0]:]
            assert self._current is not None
            if self._current.path == "/ws":
                self._current.upgrade = True
                self._raw = bytearray(tail)
            else:
                # Only /ws upgrades; anything else stays plain HTTP.
                self._parser = httptools.HttpRequestParser(self)
                if tail:
                    self._feed(tail)
        except httptools.HttpParserError:
            if self._current is None or self._current.done.done():
                self._write(_head(400, [("Content-Length", "0"), ("Connection", "close")]))
            self._close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._lost:
            self._transport.write(data)

    async def _drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
        if self._lost:
            raise ConnectionResetError("client went away")

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def _serve(self) -> None:
        while True:
            req = await self._queue.get()
            if req is None:
                self._close()
                return
            handler = _ROUTES.get(req.path)
            only = req.query.get("only")
            if only and self._stats.name not in only:
                # ?only=<name> confines a misbehaviour to one upstream of a
                # pool; the others answer it like /echo.
                handler = Connection._echo
            if handler is None and req.path.startswith("/status/"):
                handler = Connection._status
            if handler is None:
                handler = Connection._not_found
            try:
                keep = await handler(self, req)
            except ConnectionError:
                return
            if keep is None:
                return  # the connection changed hands (WebSocket) or was torn down
            if not keep:
                self._close()
                return

    async def _body(self, req: Request) -> None:
        """Wait for the whole request body, asking for it first if the client waits."""
        if req.expect_continue and not req.done.done() and not req.continue_sent:
            req.continue_sent = True
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await req.done

    def _respond(self, req: Request, status: int, body: bytes = b"",
                 headers: list[tuple[str, str]] | None = None,
                 close: bool = False) -> bool:
        keep = req.keep_alive and not close
        hdrs = list(headers or [])
        if status not in (204, 304) and not 100 <= status < 200:
            hdrs.append(("Content-Length", str(len(body))))
        self._write(_head(status, self._conn_headers(req, keep, hdrs)))
        if req.method != "HEAD" and body:
            self._write(body)
        return keep

    def _conn_headers(self, req: Request, keep: bool,
                      hdrs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        hdrs.append(("X-Upstream", self._stats.name))
        if not keep:
            hdrs.append(("Connection", "close"))
        elif req.version == "1.0":
            hdrs.append(("Connection", "keep-alive"))
        return hdrs

    def _json(self, req: Request, status: int, payload: object, close: bool = False) -> bool:
        return self._respond(req, status, json.dumps(payload).encode(),
                             [("Content-Type", "application/json")], close=close)

    def _echo_payload(self, req: Request) -> dict:
        return {
            "method": req.method,
            "target": req.target,
            "version": req.version,
            "headers": [list(pair) for pair in req.headers],
            "body_length": req.body_length,
            "body_sha256": req.sha256,
            "connection": self._id,
            "request_number": req.number,
            "upstream": self._stats.name,
        }

    async def _stream_pattern(self, n: int, chunk_size: int | None = None) -> None:
        """Write n pattern bytes, chunk-framed when chunk_size is given."""
        step = min(chunk_size or BLOCK, BLOCK)
        for off in range(0, n, step):
            piece = pattern(off, min(step, n - off))
            if chunk_size:
                self._write(b"%x\r\n%b\r\n" % (len(piece), piece))
            else:
                self._write(piece)
            await self._drain()

    # endpoints: each returns whether the connection stays open, or None
    # when the handler already disposed of it.

    async def _echo(self, req: Request) -> bool:
        await self._body(req)
        return self._json(req, 200, self._echo_payload(req))

    async def _status(self, req: Request) -> bool:
        await self._body(req)
        try:
            code = int(req.path.rsplit("/", 1)[1])
            HTTPStatus(code)
        except ValueError:
            return self._respond(req, 400, b"bad status\n")
        if code < 200:
            return self._respond(req, 400, b"1xx cannot be a final status\n")
        body = b"" if code in (204, 304) else f"status {code}\n".encode()
        return self._respond(req, code, body, [("Content-Type", "text/plain")])

    async def _bytes(self, req: Request) -> bool:
        await self._body(req)
        n = req.int_arg("n", 0)
        keep = req.keep_alive
        hdrs = [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))]
        self._write(_head(200, self._conn_headers(req, keep, hdrs)))
        if req.method != "HEAD":
            await self._stream_pattern(n)
        return keep

    async def _chunked(self, req: Request) -> bool:
        await self._body(req)
        n = req.int_arg("n", 0)
        size = max(1, req.int_arg("size", 4096))
        # HTTP/1.0 has no chunked coding: fall back to a close-delimited body.
        chunked = req.version != "1.0"
        keep = req.keep_alive and chunked
        hdrs = [("Content-Type", "application/octet-stream")]
        if chunked:
            hdrs.append(("Transfer-Encoding", "chunked"))
        self._write(_head(200, self._conn_headers(req, keep, hdrs)))
        if req.method != "HEAD":
            await self._stream_pattern(n, size if chunked else None)
            if chunked:
                self._write(b"0\r\n\r\n")
        return keep

    async def _close_after(self, req: Request) -> bool:
        await self._body(req)
        return self._json(req, 200, self._echo_payload(req), close=True)

    async def _until_close(self, req: Request) -> bool:
        await self._body(req)
        hdrs = self._conn_headers(req, False, [("Content-Type", "application/octet-stream")])
        self._write(_head(200, hdrs))
        if req.method != "HEAD":
            await self._stream_pattern(req.int_arg("n", 0))
        return False

    async def _slow(self, req: Request) -> bool:
        await self._body(req)
        await asyncio.sleep(req.int_arg("ms", 1000) / 1000)
        return self._json(req, 200, self._echo_payload(req))

    async def _hang(self, req: Request) -> None:
        await self._body(req)
        await asyncio.get_running_loop().create_future()  # until the peer leaves

    async def _drop(self, req: Request) -> None:
        # Read the body first: closing with unread input would send RST, not FIN.
        await self._body(req)
        self._close()

    async def _reset(self, req: Request) -> None:
        await self._body(req)
        assert self._transport is not None
        sock = self._transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    async def _head_cl(self, req: Request) -> bool:
        await self._body(req)
        keep = req.keep_alive
        hdrs = [("Content-Type", "application/octet-stream"), ("Content-Length", "1000")]
        self._write(_head(200, self._conn_headers(req, keep, hdrs)))
        if req.method != "HEAD":
            self._write(pattern(0, 1000))
        return keep

    async def _no_content(self, req: Request) -> bool:
        await self._body(req)
        return self._respond(req, 204)

    async def _not_modified(self, req: Request) -> bool:
        await self._body(req)
        return self._respond(req, 304, headers=[("ETag", '"schoolgate-test"')])

    async def _early_hints(self, req: Request) -> bool:
        self._write(_head(103, [("Link", "</style.css>; rel=preload; as=style")]))
        await self._body(req)
        return self._json(req, 200, self._echo_payload(req))

    async def _upload(self, req: Request) -> bool:
        await self._body(req)
        payload = {"length": req.body_length, "sha256": req.sha256,
                   "expect": req.expect_continue}
        return self._json(req, 200, payload)

    async def _websocket(self, req: Request) -> bool | None:
        await self._body(req)
        key = req.header("Sec-WebSocket-Key")
        if not req.upgrade or key is None:
            return self._respond(req, 426, b"websocket upgrade required\n",
                                 [("Upgrade", "websocket")])
        self._write(_head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                ("Sec-WebSocket-Accept", accept_key(key))]))
        assert self._raw is not None
        self._ws = WebSocketEcho(self._write, self._close)
        pending, self._raw = bytes(self._raw), None
        self._ws.feed(pending)
        return None

    async def _stats_endpoint(self, req: Request) -> bool:
        await self._body(req)
        return self._json(req, 200, self._stats.snapshot())

    async def _reset_stats(self, req: Request) -> bool:
        await self._body(req)
        self._stats.reset()
        return self._json(req, 200, {"ok": True})

    async def _not_found(self, req: Request) -> bool:
        await self._body(req)
        return self._respond(req, 404, b"no such test endpoint\n")


_ROUTES = {
    "/echo": Connection._echo,
    "/bytes": Connection._bytes,
    "/chunked": Connection._chunked,
    "/close": Connection._close_after,
    "/until-close": Connection._until_close,
    "/slow": Connection._slow,
    "/hang": Connection._hang,
    "/drop": Connection._drop,
    "/reset": Connection._reset,
    "/head-cl": Connection._head_cl,
    "/204": Connection._no_content,
    "/304": Connection._not_modified,
    "/early-hints": Connection._early_hints,
    "/continue": Connection._upload,
    "/upload": Connection._upload,
    "/ws": Connection._websocket,
    "/__stats": Connection._stats_endpoint,
    "/__reset": Connection._reset_stats,
}


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def serve(port: int, name: str, host: str = "127.0.0.1") -> None:
    stats = Stats(name)
    counter = iter(range(1, 1 << 62))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(stats, next(counter)),
                                      host, port, reuse_address=True, backlog=1024)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"upstream {name} listening on {host}:{port}", flush=True)
    try:
        await stop
    finally:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="upstream")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, args.name, args.host))
    else:
        uvloop.run(serve(args.port, args.name, args.host))


if __name__ == "__main__":
    main()
