"""How each proxy protects a fragile upstream when offered more than it can take.

    python -m bench.overload [--duration S] [--loads 2,5,10] [--systems a,b,...]
                             [--bulk-share 0.2] [--max-wait S] [--quick]

The origin is `bench.slow_upstream`: 20 workers, 50 ms per request, 503 at
once when all are busy (400 req/s at most). Every proxy is given the same
policy: at most 20 requests upstream, a queue of one second's worth of
upstream throughput, nobody waiting longer than --max-wait. The gateway also
knows two traffic classes (bulk = /api/import/..., interactive = the rest,
which outranks bulk); nginx and HAProxy have no such notion. "direct" sends
the same traffic to the origin with no proxy, as the do-nothing baseline.
"gateway-redis-x2" is the cloud edge: two gateway instances sharing the same
policy through one redis-server the bench starts (and stops by its PID),
each new client connection going to the next instance as a layer-4
balancer would; the limit of 20 upstream is the fleet's, not each one's.
The "origin peak" column is the most requests at the origin at once during
the run, counting one that found every worker busy (bench.slow_upstream
`peak_offered`): above the limit only if a proxy let too much through.

Traffic is open-loop (bench.loadgen) at 2x, 5x and 10x the origin's
throughput, --bulk-share of it bulk. For each system and load the table
shows interactive latency of admitted requests, the bulk share of what was
admitted, statuses as clients saw them, split into waiting pages (a 503
with Retry-After and the place in line, or a 429 with Retry-After for bulk)
and error pages (any other status the proxy made: nginx's 503/502,
HAProxy's 503/504), and the origin's own refusals (load the proxy let
through although the origin was full).

Refusing is the point here, so statuses never fail the run for nginx,
HAProxy or direct; exit 1 means a system answered with no HTTP response at
all (reset, timeout), or the gateway, whose promise is a waiting page
instead of an error, served an error page or let the origin refuse a
request. Exit 2: a system failed to start or died.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence

from bench import configs, loadgen, report, systems
from bench.loadgen import BACK_OFF, ERROR, OTHER, WAITING
from bench.report import fmt, percentile
from bench.systems import HOST, BenchError, Service, Stack

SYSTEMS = ("gateway", "gateway-redis-x2", "nginx", "haproxy", "direct")
# The two-instance system: its instances (each a gateway-redis).
INSTANCES = {"gateway-redis-x2": ("gateway-redis-1", "gateway-redis-2")}
MAX_CLIENTS = 6000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overload", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--loads", default="2,5,10", help="multiples of origin throughput")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--capacity", type=int, default=20, help="origin workers")
    parser.add_argument("--service-time", type=float, default=0.05, help="origin seconds/request")
    parser.add_argument("--bulk-share", type=float, default=0.2)
    parser.add_argument("--max-wait", type=float, default=1.0,
                        help="longest a request may queue in a proxy")
    parser.add_argument("--quick", action="store_true", help="short CI run: 3 s per point")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    try:
        args.loads = [float(x) for x in args.loads.split(",")]
    except ValueError:
        parser.error("--loads takes numbers separated by commas")
    if not 0 <= args.bulk_share <= 1:
        parser.error("--bulk-share is a fraction from 0 to 1")
    return args


def origin_stats(origin: Service, reset: bool = False) -> dict[str, object]:
    conn = http.client.HTTPConnection(HOST, origin.port, timeout=5)
    try:
        conn.request("GET", "/__stats?reset" if reset else "/__stats")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def summarize(system: str, load: float, run: loadgen.RunResult) -> dict[str, object]:
    inter, bulk = run.classes["interactive"], run.classes["bulk"]
    admitted = len(inter.ok_latency) + len(bulk.ok_latency)
    statuses: Counter[int] = inter.statuses + bulk.statuses
    origin_errors: Counter[int] = inter.origin_errors + bulk.origin_errors
    failures: Counter[str] = inter.failures + bulk.failures
    answers: Counter[tuple[str, int]] = inter.answers + bulk.answers

    def by_status(kinds: tuple[str, ...]) -> dict[int, int]:
        found: Counter[int] = Counter()
        for (kind, status), n in answers.items():
            if kind in kinds:
                found[status] += n
        return dict(found)

    def named(counter: Counter[tuple[str, int]]) -> dict[str, int]:
        return {f"{kind} {status}": n for (kind, status), n in sorted(counter.items())}

    def ms(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else value * 1000

    return {
        "system": system,
        "load": load,
        "offered_rps": run.rate,
        "sent": inter.sent + bulk.sent,
        "admitted_rps": admitted / run.elapsed,
        "elapsed_s": run.elapsed,
        "interactive_ok_p50_ms": ms(inter.ok_latency, 50),
        "interactive_ok_p99_ms": ms(inter.ok_latency, 99),
        "interactive_answer_p99_ms": ms(inter.answer_latency, 99),
        "interactive_admitted": len(inter.ok_latency),
        "bulk_admitted": len(bulk.ok_latency),
        "bulk_share_admitted": len(bulk.ok_latency) / admitted if admitted else None,
        "statuses": dict(statuses),
        "statuses_by_class": {
            "interactive": dict(inter.statuses), "bulk": dict(bulk.statuses),
        },
        "origin_errors": dict(origin_errors),
        # Proxy-made answers that tell the client when to come back.
        "waiting_pages": by_status((WAITING, BACK_OFF)),
        # Proxy-made answers that are just errors.
        "error_pages": by_status((ERROR, OTHER)),
        "answers": named(answers),
        "answers_by_class": {"interactive": named(inter.answers), "bulk": named(bulk.answers)},
        "failures": dict(failures),
        "lag_p99_ms": ms(run.lag, 99),
    }


def markdown(rows: Sequence[dict[str, object]]) -> str:
    headers = ["system", "load", "offered/s", "admitted/s", "inter p50 ms", "inter p99 ms",
               "inter answer p99 ms", "bulk % of 2xx", "statuses", "waiting pages",
               "error pages", "origin non-2xx", "origin peak / limit", "no answer",
               "gen lag p99 ms"]
    cells = []
    for row in rows:
        share = row["bulk_share_admitted"]
        cells.append([
            str(row["system"]), f"{row['load']:g}x", fmt(row["offered_rps"]),  # type: ignore[arg-type]
            fmt(row["admitted_rps"]), fmt(row["interactive_ok_p50_ms"], 1),  # type: ignore[arg-type]
            fmt(row["interactive_ok_p99_ms"], 1), fmt(row["interactive_answer_p99_ms"], 1),  # type: ignore[arg-type]
            "-" if share is None else f"{share * 100:.1f}",  # type: ignore[operator]
            report.counts(row["statuses"]), report.counts(row["waiting_pages"]),  # type: ignore[arg-type]
            report.counts(row["error_pages"]), report.counts(row["origin_errors"]),  # type: ignore[arg-type]
            f"{row.get('origin_peak_offered', '-')} / {row.get('limit', '-')}",
            report.counts(row["failures"]), fmt(row["lag_p99_ms"], 1),  # type: ignore[arg-type]
        ])
    numeric = [False, True, True, True, True, True, True, True, False, False, False, False,
               True, False, True]
    return report.markdown_table(headers, cells, numeric)


def row_problems(row: dict[str, object]) -> list[str]:
    """What in one row fails the run (see the module docstring)."""
    where = f"{row['system']} at {row['load']:g}x"
    found = []
    bad = {k: v for k, v in row["failures"].items() if k != "client-limit"}  # type: ignore[attr-defined]
    if bad:
        found.append(f"{where}: no HTTP answer {bad}")
    if str(row["system"]).startswith("gateway"):
        if row["error_pages"]:
            found.append(f"{where}: error pages {report.counts(row['error_pages'])}"  # type: ignore[arg-type]
                         " instead of waiting pages")
        if row["origin_errors"]:
            found.append(f"{where}: the origin refused {report.counts(row['origin_errors'])}"  # type: ignore[arg-type]
                         " (more let through than max_inflight)")
    return found


def measure(
    args: argparse.Namespace, names: list[str], stack: Stack
) -> tuple[list[dict[str, object]], list[str]]:
    rate = args.capacity / args.service_time
    policy = configs.OverloadPolicy(
        capacity=args.capacity, rate=rate, max_queue=max(1, round(rate * args.max_wait)),
        max_wait=args.max_wait,
    )
    origin = systems.start_slow_upstream(
        stack, capacity=args.capacity, service_time=args.service_time
    )
    # Open-loop clients pile up while a proxy makes them wait: at 10x with a
    # one-second queue that is 4,000 connections at once.
    systems.raise_fd_limit(3 * MAX_CLIENTS)
    single = [n for n in names if n not in INSTANCES]
    started: dict[str, Service | list[Service]] = dict(systems.start_proxies(
        stack, single, origin, overload=policy, max_clients=MAX_CLIENTS
    ))
    for name in names:
        if name in INSTANCES:
            started[name] = [
                systems.start_gateway(stack, origin.port, overload=policy,
                                      keepalive_timeout=75.0, name="gateway-redis",
                                      instance=label)
                for label in INSTANCES[name]]
    rows: list[dict[str, object]] = []
    problems: list[str] = []
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        # Loads outer, systems inner: systems alternate, as in bench.load.
        for load in args.loads:
            for name in names:
                service = started[name]
                services = service if isinstance(service, list) else [service]
                before = origin_stats(origin, reset=True)
                run = runner.run(loadgen.open_loop(
                    [s.port for s in services], rate=rate * load, duration=args.duration,
                    bulk_share=args.bulk_share, timeout=max(10.0, 5 * args.max_wait),
                    max_connections=MAX_CLIENTS,
                ))
                after = origin_stats(origin)
                row = summarize(name, load, run)
                row["origin_peak_inflight"] = after["peak_inflight"]
                row["origin_peak_offered"] = after["peak_offered"]
                row["limit"] = args.capacity
                row["origin_served"] = {
                    k: after["served"][k] - before["served"][k]  # type: ignore[index]
                    for k in ("interactive", "bulk")
                }
                rows.append(row)
                print(
                    f"{name:<8} {load:>4g}x  admitted {row['admitted_rps']:>6,.0f}/s"
                    f"  statuses {report.counts(row['statuses'])}",  # type: ignore[arg-type]
                    flush=True,
                )
                problems.extend(row_problems(row))
                for s in services:
                    if not s.alive():
                        raise BenchError(f"{name} died at {load:g}x; log:\n{s.log_tail()}")
                # Let queues and pooled connections settle before the next system.
                time.sleep(0.5)
    return rows, problems


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names, notes = systems.resolve_systems(args.systems.split(","), SYSTEMS)
    for note in notes:
        print(note, file=sys.stderr)
    env = report.environment()
    with systems.sigterm_as_interrupt(), Stack() as stack:
        rows, problems = measure(args, names, stack)
    settings = (
        f"origin: {args.capacity} workers x {args.service_time * 1000:g} ms"
        f" ({args.capacity / args.service_time:g} req/s max), no queue; proxies: at most"
        f" {args.capacity} upstream, queue <= {args.max_wait:g} s; {args.duration:g} s per run,"
        f" open loop, {args.bulk_share * 100:g}% bulk;"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {env['cpus']} CPUs"
        f" ({env['cpu_model']}), load average at start {env['loadavg_at_start'][0]:.2f}"  # type: ignore[index]
    )
    legend = (
        "inter p50/p99: interactive requests the origin answered 2xx, timed from when they"
        " were due; inter answer p99: any answer at all; waiting pages: answers the proxy made"
        " with Retry-After telling the client when to come back (503 with the place in line,"
        " 429 for bulk); error pages: any other answer the proxy made itself (nginx 503/502,"
        " HAProxy 503/504); origin non-2xx: refusals the origin itself had to make; gen lag:"
        " how late the generator sent (large = generator-bound)."
    )
    md = "\n\n".join([f"# Overload: protecting a {args.capacity}-worker upstream", settings,
                      markdown(rows), legend, *notes, *problems])
    out = report.results_dir()
    report.write(out, "overload", md, {
        "settings": vars(args), "environment": env, "notes": notes, "problems": problems,
        "rows": rows,
    })
    print("\n" + md + f"\n\nwritten to {out}/overload.md and overload.json")
    if problems:
        print("FAIL: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    systems.run_main("overload", main)
