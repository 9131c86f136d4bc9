"""Memory each proxy needs to hold many idle keep-alive clients.

    python -m bench.memory [--connections N] [--systems a,b,...] [--quick]

For each system in turn: one request warms it up, its resident memory (the
sum of VmRSS over its process tree: nginx master + worker, gateway supervisor
+ worker) is read, then an asyncio client opens N connections, completes one
request on each and leaves them open, and the memory is read again. The
difference divided by N is the price of an idle client, which is what a
school's morning login wave costs.

Client keep-alive timeouts are set far above the time the run takes, so no
proxy gets to shed connections early. Exit 1 when a system failed to answer
or keep any of the N connections.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from bench import loadgen, report, systems
from bench.report import fmt
from bench.systems import BenchError, Service, Stack

SYSTEMS = ("gateway", "nginx", "haproxy")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds between opening the connections and reading RSS")
    parser.add_argument("--quick", action="store_true", help="2,000 connections")
    args = parser.parse_args(argv)
    if args.quick:
        args.connections = 2000
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    return args


async def _measure_one(service: Service, count: int, settle: float) -> dict[str, object]:
    warm, warm_failures = await loadgen.hold_idle(service.port, 1)
    for conn in warm:
        conn.close()
    if warm_failures:
        raise BenchError(f"{service.name} failed its warm-up request: {dict(warm_failures)}")
    await asyncio.sleep(settle)
    baseline = service.rss_kib()
    started = time.monotonic()
    held, failures = await loadgen.hold_idle(service.port, count)
    open_s = time.monotonic() - started
    try:
        await asyncio.sleep(settle)
        loaded = service.rss_kib()
        still_open = sum(1 for conn in held if conn.usable)
    finally:
        for conn in held:
            conn.close()
    return {
        "system": service.name,
        "requested": count,
        "held": still_open,
        "failures": dict(failures),
        "open_seconds": open_s,
        "baseline_kib": baseline,
        "loaded_kib": loaded,
        "kib_per_connection": (loaded - baseline) / still_open if still_open else None,
        "alive": service.alive(),
    }


def markdown(rows: Sequence[dict[str, object]]) -> str:
    headers = ["system", "connections held", "RSS idle MiB", "RSS with clients MiB",
               "KiB per connection", "failures"]
    cells = [
        [
            str(r["system"]), f"{r['held']:,} / {r['requested']:,}",
            fmt(r["baseline_kib"] / 1024, 1), fmt(r["loaded_kib"] / 1024, 1),  # type: ignore[operator]
            fmt(r["kib_per_connection"], 2), report.counts(r["failures"]),  # type: ignore[arg-type]
        ]
        for r in rows
    ]
    return report.markdown_table(headers, cells, [False, True, True, True, True, False])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names, notes = systems.resolve_systems(
        args.systems.split(","), SYSTEMS, extra_binaries=("nginx",)
    )
    # The client holds one descriptor per connection and so does each proxy
    # (plus its upstream side); children inherit the raised limit.
    limit = systems.raise_fd_limit(2 * args.connections + 4096)
    if limit < args.connections + 256:
        raise BenchError(f"open-file limit {limit} is too low for {args.connections} connections")
    for note in notes:
        print(note, file=sys.stderr)
    env = report.environment()
    rows: list[dict[str, object]] = []
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with systems.sigterm_as_interrupt(), Stack() as stack, \
            asyncio.Runner(loop_factory=factory) as runner:
        upstream = systems.start_upstream(stack)
        started = systems.start_proxies(
            stack, names, upstream, workers=args.workers, keepalive_timeout=600.0,
            max_clients=args.connections + 1024,
        )
        for name in names:
            row = runner.run(_measure_one(started[name], args.connections, args.settle))
            rows.append(row)
            print(f"{name:<8} held {row['held']:,}  RSS {row['loaded_kib'] / 1024:,.1f} MiB",  # type: ignore[operator]
                  flush=True)
    settings = (
        f"{args.connections:,} idle keep-alive clients, one request each;"
        f" {args.workers} worker(s) per proxy; RSS summed over each process tree;"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {env['cpus']} CPUs"
        f" ({env['cpu_model']})"
    )
    md = "\n\n".join(["# Memory: idle keep-alive clients", settings, markdown(rows), *notes])
    out = report.results_dir()
    report.write(out, "memory", md, {
        "settings": vars(args), "environment": env, "notes": notes, "rows": rows,
    })
    print("\n" + md + f"\n\nwritten to {out}/memory.md and memory.json")
    failed = [str(r["system"]) for r in rows
              if r["failures"] or r["held"] != r["requested"] or not r["alive"]]
    if failed:
        print(f"FAIL: {', '.join(failed)} did not hold every connection", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    systems.run_main("memory", main)
