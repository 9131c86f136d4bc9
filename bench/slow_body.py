"""The slow-body attack of issue 7 (point E), against the gateway and nginx.

    python -m bench.slow_body [--slow 60] [--requests 200] [--concurrency 4]
                              [--systems gateway gateway-streaming nginx]

`--slow` connections each send a POST head with `Content-Length: 1000000`
and then one byte every `--every` seconds (5), against a school with
`max_inflight` equal to that number (60). Once they are all sending,
`--requests` other requests (GET / and a small form POST in turn, over
`--concurrency` keep-alive connections) are timed. Printed per system: their
latency (p50, p99, max) and every answer by status.

Systems: `gateway` (request buffering on, its default), `gateway-streaming`
(the same school with `request_buffering = false`: the behaviour before
issue 7, every slot held by a trickle), and `nginx` as a plain reverse proxy
(it buffers request bodies by default, `proxy_request_buffering on`). The
origin is bench.slow_upstream, which like an application server reads a
request's whole body before it answers (1 ms of work, no capacity limit of
its own). Loopback only, one worker each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter

from bench import systems
from bench.systems import HOST, Stack

SYSTEMS = ("gateway", "gateway-streaming", "nginx")


def gateway_config(port: int, upstream_port: int, slots: int, buffering: bool) -> str:
    return f"""\
[server]
listen = "{HOST}:{port}"
workers = 1
backlog = 4096

[[schools]]
name = "school"
hosts = ["*"]
upstreams = ["{HOST}:{upstream_port}"]
max_inflight = {slots}
request_buffering = {"true" if buffering else "false"}
"""


def start_system(stack: Stack, name: str, upstream_port: int, slots: int) -> systems.Service:
    if name == "nginx":
        return systems.start_nginx(stack, upstream_port)
    port = systems.free_port()
    conf = stack.subdir(name) / "gateway.toml"
    conf.write_text(gateway_config(port, upstream_port, slots, name == "gateway"))
    return stack.start(name, [sys.executable, "-m", "gateway", "run", "--config", str(conf)],
                       port, ready_timeout=30.0)


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response with a Content-Length body; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def trickle(port: int, n: int, every: float, opened: asyncio.Event,
                  stop: asyncio.Event) -> int:
    """n uploads that never finish; returns how many the proxy still holds."""
    head = (b"POST /upload HTTP/1.1\r\nHost: school\r\nContent-Length: 1000000\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")
    writers = []
    for _ in range(n):
        _, writer = await asyncio.open_connection(HOST, port)
        writer.write(head + b"x")
        writers.append(writer)
    opened.set()
    alive = n
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass
        alive = 0
        for writer in writers:
            if writer.is_closing():
                continue
            try:
                writer.write(b"x")
                await writer.drain()
                alive += 1
            except OSError:
                pass
    for writer in writers:
        writer.transport.abort()
    return alive


async def others(port: int, total: int, concurrency: int, timeout: float
                 ) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    todo = iter(range(total))

    async def client() -> None:
        reader = writer = None
        for i in todo:
            if writer is None:
                reader, writer = await asyncio.open_connection(HOST, port)
            if i % 2:
                body = b"user=pupil&answer=42"
                req = (b"POST /form HTTP/1.1\r\nHost: school\r\n"
                       b"Content-Type: application/x-www-form-urlencoded\r\n"
                       b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
            else:
                req = b"GET / HTTP/1.1\r\nHost: school\r\n\r\n"
            start = time.perf_counter()
            try:
                writer.write(req)
                status = await asyncio.wait_for(read_response(reader), timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                statuses["no answer"] += 1
                writer.transport.abort()
                writer = None
                continue
            latencies.append(time.perf_counter() - start)
            statuses[str(status)] += 1
        if writer is not None:
            writer.transport.abort()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, statuses


async def attack(port: int, args: argparse.Namespace) -> tuple[list[float], Counter[str], int]:
    opened, stop = asyncio.Event(), asyncio.Event()
    slow = asyncio.create_task(trickle(port, args.slow, args.every, opened, stop))
    await opened.wait()
    await asyncio.sleep(1.0)  # every head parsed, every slot (if any) taken
    latencies, statuses = await others(port, args.requests, args.concurrency, args.timeout)
    stop.set()
    held = await slow
    return latencies, statuses, held


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=60)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds a measured request may take before it counts as unanswered")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    args = parser.parse_args()
    systems.raise_fd_limit(4 * args.slow + 1024)
    rows = []
    with systems.sigterm_as_interrupt(), Stack() as stack:
        upstream = systems.start_slow_upstream(stack, capacity=100_000, service_time=0.001)
        for name in args.systems:
            service = start_system(stack, name, upstream.port, args.slow)
            try:
                latencies, statuses, held = asyncio.run(attack(service.port, args))
            finally:
                stack.stop(service)
            rows.append((name, latencies, statuses, held))
    print(f"{args.slow} uploads announcing 1 MB and sending a byte every {args.every:g} s, "
          f"school max_inflight = {args.slow}; then {args.requests} other requests "
          f"(GET and form POST in turn) over {args.concurrency} connections, "
          f"{args.timeout:g} s each at most")
    print()
    print("| system | p50 ms | p99 ms | max ms | answers | slow uploads still open |")
    print("|---|---:|---:|---:|---|---:|")
    for name, latencies, statuses, held in rows:
        if latencies:
            q = (statistics.quantiles(latencies, n=100, method="inclusive")
                 if len(latencies) > 1 else latencies * 99)
            p50, p99, top = ms(statistics.median(latencies)), ms(q[98]), ms(max(latencies))
        else:
            p50 = p99 = top = "-"
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
        print(f"| {name} | {p50} | {p99} | {top} | {answers} | {held} |")
    return 0


if __name__ == "__main__":
    systems.run_main("slow_body", main, (OSError,))
