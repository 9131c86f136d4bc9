"""Throughput and latency of schoolgate next to nginx, HAProxy and no proxy.

    python -m bench.load [--duration S] [--rounds N] [--connections C]
                         [--threads T] [--workers W] [--systems a,b,...] [--quick]

All systems are started once, in front of one nginx origin, and then measured
in alternating rounds (A B C D, B C D A, ...) so that a slow minute on a
shared machine hurts every system alike instead of whichever ran then, and
no system always runs first. Each
round runs wrk with keep-alive for every case (a 2-byte answer, a 64 KiB one).

Beside req/s, each run records the CPU time (user + system, from /proc) that
the proxy's whole process tree and the origin's spent during it, divided by
the requests wrk completed: CPU microseconds per request, which a busy
neighbour on a shared machine disturbs far less than req/s.

"gateway" runs with admission on (limits sized so that every request goes
through it but none is refused), "gateway-noadm" is the same config with
`[admission] enabled = false`; a second table shows their ratio per case,
the cost of admission, from the same rounds. "gateway-redis" is "gateway"
with its limits shared through a redis-server the bench starts on a free
port (and stops by its PID): a third table shows shared/local per case.

Exits 1 when any system answered a plain request with a status >= 400 or a
socket error: under this load none of them should.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from bench import cpu, report, systems, wrk
from bench.systems import HOST, BenchError, Stack

# case -> system -> one entry per round, in round order
Runs = dict[str, dict[str, list[wrk.WrkResult]]]
CpuRuns = dict[str, dict[str, list[cpu.CpuUse]]]

SYSTEMS = ("gateway", "gateway-noadm", "gateway-redis", "nginx", "haproxy", "direct")
CASES = {"small": "/", "64k": "/64k"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (HAProxy: threads) for every proxy")
    parser.add_argument("--upstream-workers", type=int, default=1)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of unrecorded load per system and case before round 1")
    parser.add_argument("--quick", action="store_true",
                        help="short CI run: 3 rounds of 3 s, 1 s warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 3, 3.0, 1.0
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    return args


def measure(args: argparse.Namespace, names: list[str], stack: Stack) -> tuple[
    Runs, CpuRuns, dict[str, int]
]:
    upstream = systems.start_upstream(stack, workers=args.upstream_workers)
    started = systems.start_proxies(stack, names, upstream, workers=args.workers)
    results: Runs = {case: {name: [] for name in names} for case in CASES}
    cpu_use: CpuRuns = {case: {name: [] for name in names} for case in CASES}

    def run(name: str, path: str, duration: float) -> tuple[wrk.WrkResult, cpu.CpuUse]:
        service = started[name]
        if not service.alive():
            raise BenchError(f"{name} died; log:\n{service.log_tail()}")
        # A few small /proc reads on each side of the run; the trees are
        # listed again afterwards so a process started meanwhile counts.
        before = (service.cpu_snapshot(), upstream.cpu_snapshot())
        result = wrk.run(
            f"http://{HOST}:{service.port}{path}", duration=duration,
            connections=args.connections, threads=args.threads, script_dir=stack.dir,
        )
        after = (service.cpu_snapshot(), upstream.cpu_snapshot())
        return result, cpu.CpuUse.between(before, after, result.requests)

    if args.warmup > 0:
        for name in names:
            for path in CASES.values():
                run(name, path, args.warmup)
    for round_no in range(1, args.rounds + 1):
        # Each round starts one system later (A B C D, B C D A, ...), so no
        # system always runs first, right after the previous case's load.
        shift = (round_no - 1) % len(names)
        order = names[shift:] + names[:shift]
        for case, path in CASES.items():
            for name in order:
                result, used = run(name, path, args.duration)
                results[case][name].append(result)
                cpu_use[case][name].append(used)
                print(
                    f"round {round_no}/{args.rounds} {case:>5} {name:<13}"
                    f" {result.rps:>10,.0f} req/s  p99 {result.p99_ms:7.2f} ms"
                    f"  cpu {report.fmt(used.us_per_request, 1):>6} us/req"
                    f"  errors {result.http_errors + result.socket_errors}",
                    flush=True,
                )
    # Peak RSS is read while every process is still alive; "direct" is the
    # origin itself, whose memory says nothing about a proxy.
    peaks = {name: started[name].peak_rss_kib() for name in names if name != "direct"}
    return results, cpu_use, peaks


CPU_NOTE = (
    "CPU us/req: user + system CPU time of the proxy's whole process tree (gateway"
    " supervisor and workers, nginx master and workers, HAProxy) during each wrk run,"
    " from /proc/<pid>/stat, divided by the requests wrk completed; \"vs nginx\""
    " columns are medians of per-round ratios. Origin CPU us/req is the shared nginx"
    " origin's (for \"direct\" it is the system itself), informative only."
)


def settings_line(args: argparse.Namespace, env: dict[str, object]) -> str:
    """How, when and where: enough to label a table pasted elsewhere."""
    load = env["loadavg_at_start"][0]  # type: ignore[index]
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {env['cpus']} CPUs"
        f" ({env['cpu_model']}), load average at start {load:.2f};"
        f" {args.rounds} rounds x {args.duration:g} s per system and case,"
        f" wrk -t{args.threads} -c{args.connections} keep-alive,"
        f" {args.workers} worker(s) per proxy"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names, notes = systems.resolve_systems(
        args.systems.split(","), SYSTEMS, extra_binaries=("nginx", "wrk")
    )
    if "nginx" not in names:
        notes.append("nginx not measured: no ratio column")
    if not {report.ADMISSION_ON, report.ADMISSION_OFF} <= set(names):
        notes.append("gateway and gateway-noadm not both measured: no admission-cost table")
    for note in notes:
        print(note, file=sys.stderr)
    started_at = time.time()
    env = report.environment()
    with systems.sigterm_as_interrupt(), Stack() as stack:
        results, cpu_use, peaks = measure(args, names, stack)
    rows = report.load_summary(results, peaks, cpu_use)
    cost = report.admission_cost(results, cpu_use)
    shared = report.admission_cost(results, cpu_use, report.SHARED, report.ADMISSION_ON)
    parts = ["# Load: req/s, latency and CPU per request (medians over rounds)",
             settings_line(args, env), report.load_markdown(rows), CPU_NOTE]
    if cost:
        parts += [
            "Cost of admission: gateway (admission on) / gateway-noadm (`[admission]"
            " enabled = false`), median of the per-round ratios of req/s and of CPU"
            " per request:",
            report.admission_markdown(cost),
        ]
    if shared:
        parts += [
            "Cost of sharing the limits: gateway-redis (limits leased from a Redis, the"
            " cloud setup) / gateway (limits kept in the instance), median of the"
            " per-round ratios:",
            report.admission_markdown(shared, "shared", "local"),
        ]
    markdown = "\n\n".join([*parts, *notes])
    out = report.results_dir()
    report.write(out, "load", markdown, {
        "settings": vars(args), "environment": env, "notes": notes,
        "started_at": started_at, "summary": rows, "admission_cost": cost,
        "sharing_cost": shared,
        "rounds": {
            case: {
                name: [{**r.to_json(), **c.to_json()}
                       for r, c in zip(runs, cpu_use[case][name], strict=True)]
                for name, runs in by.items()
            }
            for case, by in results.items()
        },
    })
    print("\n" + markdown + f"\n\nwritten to {out}/load.md and load.json")
    failed = [f"{r['case']}/{r['system']}" for r in rows if r["http_errors"] or r["socket_errors"]]
    if failed:
        print(f"FAIL: errors under plain load from {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    systems.run_main("load", main, (wrk.WrkError,))
