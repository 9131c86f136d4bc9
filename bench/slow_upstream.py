"""A fragile origin for the overload bench: fixed capacity, no queue of its own.

    python -m bench.slow_upstream --port P [--capacity 20] [--service-time 0.05]

It models an application server with `capacity` workers that each take
`service-time` seconds per request. A request that finds every worker busy is
answered 503 at once, the way such a server sheds load when its own backlog
is disabled; it is never queued, so any waiting that happens is the proxy's
doing and shows up in the proxy's numbers. Throughput is therefore capped at
capacity / service-time requests per second (400/s with the defaults).

Every response carries `X-Origin: slow-upstream`, which lets the load
generator tell an origin's 503 (the proxy let too much through) from a
proxy's own 503 (the proxy shed the load). `GET /__stats` answers at once,
uses no worker, and returns counters as JSON; `GET /__stats?reset` first
starts the two peaks again from what is in flight now. `peak_offered` is the
most requests that were at the origin at once, counting one that arrived
while every worker was busy: above the capacity when a proxy let more
through than its limit (the refused one included), however briefly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections import deque

import httptools

BULK_PREFIX = b"/api/import"
STATS_PATH = b"/__stats"


def _response(status: bytes, body: bytes, keep_alive: bool, ctype: bytes = b"text/plain") -> bytes:
    return b"".join([
        b"HTTP/1.1 ", status, b"\r\nContent-Type: ", ctype,
        b"\r\nContent-Length: ", str(len(body)).encode(),
        b"\r\nX-Origin: slow-upstream\r\n",
        b"" if keep_alive else b"Connection: close\r\n",
        b"\r\n", body,
    ])


class Origin:
    """Worker accounting shared by every connection."""

    def __init__(self, capacity: int, service_time: float) -> None:
        self.capacity = capacity
        self.service_time = service_time
        self.inflight = 0
        self.peak_inflight = 0
        self.peak_offered = 0
        self.served = {"interactive": 0, "bulk": 0}
        self.refused = {"interactive": 0, "bulk": 0}

    def stats(self) -> bytes:
        return json.dumps({
            "capacity": self.capacity, "service_time": self.service_time,
            "inflight": self.inflight, "peak_inflight": self.peak_inflight,
            "peak_offered": self.peak_offered,
            "served": self.served, "refused": self.refused,
        }).encode()


class OriginProtocol(asyncio.Protocol):
    """One client connection. Pipelined requests are answered in order."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        # One [response or None, keep_alive] per request still to be answered.
        self.pending: deque[list[object]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_response(b"400 Bad Request", b"bad request\n", False))
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        slot: list[object] = [None, self.parser.should_keep_alive()]
        self.pending.append(slot)
        origin = self.origin
        if self.url in (STATS_PATH, STATS_PATH + b"?reset"):
            if self.url != STATS_PATH:
                origin.peak_inflight = origin.peak_offered = origin.inflight
            slot[0] = _response(b"200 OK", origin.stats(), bool(slot[1]), b"application/json")
            self._flush()
            return
        kind = "bulk" if self.url.startswith(BULK_PREFIX) else "interactive"
        origin.peak_offered = max(origin.peak_offered, origin.inflight + 1)
        if origin.inflight >= origin.capacity:
            origin.refused[kind] += 1
            slot[0] = _response(b"503 Service Unavailable", b"busy\n", bool(slot[1]))
            self._flush()
            return
        origin.inflight += 1
        origin.peak_inflight = max(origin.peak_inflight, origin.inflight)
        asyncio.get_running_loop().call_later(origin.service_time, self._finish, slot, kind)

    def _finish(self, slot: list[object], kind: str) -> None:
        # The worker is busy for the full service time even if the client left.
        self.origin.inflight -= 1
        self.origin.served[kind] += 1
        slot[0] = _response(b"200 OK", b"ok\n", bool(slot[1]))
        self._flush()

    def _flush(self) -> None:
        while self.pending and self.pending[0][0] is not None:
            response, keep_alive = self.pending.popleft()
            if self.transport is None or self.transport.is_closing():
                continue
            self.transport.write(response)  # type: ignore[arg-type]
            if not keep_alive:
                self.transport.close()


async def serve(port: int, capacity: int, service_time: float) -> None:
    loop = asyncio.get_running_loop()
    origin = Origin(capacity, service_time)
    server = await loop.create_server(
        lambda: OriginProtocol(origin), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_upstream", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--capacity", type=int, default=20)
    parser.add_argument("--service-time", type=float, default=0.05)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.port, args.capacity, args.service_time))


if __name__ == "__main__":
    main()
