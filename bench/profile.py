"""Where a proxy's worker spends its CPU under the small-GET load: `perf record -g`.

    python -m bench.profile [--system gateway] [--duration 10] [--path /]
                            [--connections 64] [--threads 1] [--top 20]
                            [--call-graph fp] [--keep DIR]

Starts the same nginx origin and system as `bench.load` (one worker), warms it
up, then runs wrk against it and, while wrk runs, samples the system's worker
processes (the gateway's workers, not its supervisor; nginx's workers, not its
master; HAProxy's one process) with `perf record -g -e cpu-clock` for
`--duration` seconds. It prints short tables by self % (samples in that
function itself): by shared object, the top symbols, and the top symbols
outside the kernel. Each share is also
given as CPU microseconds per request: the share times the profiled
processes' CPU per request over the wrk run (from /proc, as in `bench.load`).

Cython functions of gateway._native are shown demangled
(`proxy.ClientProtocol.data_received [py]`: [cdef] a cdef function, [py] the
Python-callable wrapper, [impl] its body, [tp_*] a type slot). Python code
shows as the interpreter's own functions (`_PyEval_EvalFrameDefault` and
friends): Python 3.11 has no perf map of Python frames.

The call graph (`-g`, frame pointers by default) is kept in the perf.data file
when `--keep DIR` is given, for `perf report -i DIR/perf.data`; the tables use
self time only, which needs no unwinding (libpython is built without frame
pointers, so inclusive times would be incomplete).

Needs `perf` (Debian: `apt-get install -y linux-perf`), run as root or with
kernel.perf_event_paranoid <= 1. A profile is not a benchmark: CI does not run
it and nothing checks its numbers. Exits 2 when perf or a system cannot run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import cpu, report, systems, wrk
from bench.systems import HOST, BenchError, Stack

PROFILED = ("gateway", "gateway-noadm", "nginx", "haproxy")
# perf report's field separator: a byte no symbol name contains.
SEP = "\x1f"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--system", default="gateway", choices=PROFILED)
    parser.add_argument("--duration", type=int, default=10, help="seconds of sampling")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before wrk's run")
    parser.add_argument("--path", default="/", help="/ (2 bytes) or /64k")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--freq", type=int, default=999, help="samples per second")
    parser.add_argument("--call-graph", default="fp", help="perf's --call-graph: fp or dwarf")
    parser.add_argument("--top", type=int, default=20, help="symbols per table")
    parser.add_argument("--keep", type=Path, help="copy perf.data into this directory")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.top < 1:
        parser.error("--duration and --top must be at least 1")
    return args


# -- reading perf's output ----------------------------------------------------


@dataclass(frozen=True)
class Share:
    """One line of `perf report --no-children`: self % of the samples."""

    percent: float
    dso: str
    symbol: str


def parse_report(text: str) -> list[Share]:
    """Lines of `perf report --stdio -t SEP --sort dso[,sym]` (comments skipped).

    With `--sort dso` alone the symbol is "".
    """
    shares = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(SEP)]
        if len(fields) < 2 or not fields[0].endswith("%"):
            continue
        symbol = fields[2] if len(fields) > 2 else ""
        # "[.] name" (user space) or "[k] name" (kernel)
        symbol = re.sub(r"^\[[.k]\]\s*", "", symbol)
        shares.append(Share(float(fields[0].rstrip("%")), fields[1], symbol))
    return shares


def sample_count(text: str) -> str:
    """The "# Samples: N" header of a perf report as perf wrote it ("9K"), or "?"."""
    match = re.search(r"^# Samples: (\S+)", text, re.MULTILINE)
    return match.group(1) if match else "?"


_CYTHON = re.compile(r"__pyx_(pw|pf|f|tp_[a-z]+)_7gateway_7_native_(\d+)(.*)$")
_KINDS = {"pw": "py", "pf": "impl", "f": "cdef"}


def readable_symbol(symbol: str) -> str:
    """A gateway._native Cython symbol as module.Class.function [kind]; others unchanged.

    Cython prefixes each part of the qualified name with its length
    ("14ClientProtocol"); a Python-visible function's own name carries a
    running number instead ("5data_received"), which is dropped.
    """
    match = _CYTHON.match(symbol)
    if not match:
        return symbol
    kind, size, rest = match.group(1), int(match.group(2)), match.group(3)
    parts, rest = [rest[:size]], rest[size + 1:]
    # A class: digits, then exactly that many characters, then "_" or the end;
    # in a Python-visible function's symbol, then also the running number or
    # a special method's "__" (else the digits were the running number of a
    # module-level function).
    cls = re.match(r"(\d+)", rest)
    if cls:
        name_end = len(cls.group(1)) + int(cls.group(1))
        after = rest[name_end + 1:]
        if len(rest) >= name_end and rest[name_end:name_end + 1] in ("_", "") and (
            kind not in ("pw", "pf") or after[:1].isdigit() or after.startswith("__")
        ):
            parts.append(rest[len(cls.group(1)):name_end])
            rest = after
    if rest:
        parts.append(re.sub(r"^\d+", "", rest) if kind in ("pw", "pf") else rest)
    return f"{'.'.join(parts)} [{_KINDS.get(kind, kind)}]"


def is_kernel(share: Share) -> bool:
    return share.dso.startswith("[kernel")


def short_dso(dso: str) -> str:
    """`/a/b/proxy.cpython-311-x86_64-linux-gnu.so` as `proxy.cpython-311...so`'s stem."""
    name = os.path.basename(dso)
    return re.sub(r"\.cpython-\d+-[^.]+\.so$", ".so", name)


def share_table(shares: Sequence[Share], us_per_request: float | None, *,
                with_symbol: bool) -> str:
    headers = ["self %", "us/req", "object"] + (["symbol"] if with_symbol else [])
    cells = []
    for s in shares:
        us = None if us_per_request is None else us_per_request * s.percent / 100
        row = [f"{s.percent:.2f}", report.fmt(us, 2), short_dso(s.dso)]
        if with_symbol:
            row.append(readable_symbol(s.symbol))
        cells.append(row)
    return report.markdown_table(headers, cells, [True, True, False, False][:len(headers)])


# -- running it ---------------------------------------------------------------


def perf_missing() -> str | None:
    if shutil.which("perf") is None:
        return "perf not on PATH (Debian: apt-get install -y linux-perf)"
    return None


def profiled_pids(service: systems.Service) -> list[int]:
    """The processes that serve requests: a master's or supervisor's children,
    or the process itself when it has none (HAProxy)."""
    tree = systems.process_tree(service.proc.pid)
    return tree[1:] or tree


def perf_report(data: Path, sort: str, limit: float) -> str:
    done = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
         "--sort", sort, "-t", SEP, "--percent-limit", str(limit)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"perf report failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def profile(args: argparse.Namespace, stack: Stack) -> dict[str, object]:
    upstream = systems.start_upstream(stack)
    service = systems.start_proxies(stack, [args.system], upstream)[args.system]
    url = f"http://{HOST}:{service.port}{args.path}"

    def load(seconds: float) -> wrk.WrkResult:
        return wrk.run(url, duration=seconds, connections=args.connections,
                       threads=args.threads, script_dir=stack.dir)

    if args.warmup > 0:
        load(args.warmup)
    pids = profiled_pids(service)
    data = stack.dir / "perf.data"
    perf_argv = ["perf", "record", "-e", "cpu-clock", "-F", str(args.freq),
                 "--call-graph", args.call_graph, "-o", str(data),
                 "-p", ",".join(map(str, pids)), "--", "sleep", str(args.duration)]
    # wrk runs a second longer on each side, so perf samples only under load.
    outcome: dict[str, object] = {}

    def run_wrk() -> None:
        try:
            outcome["wrk"] = load(args.duration + 2)
        except Exception as exc:  # re-raised in the main thread
            outcome["error"] = exc

    before = (cpu.snapshot(pids), service.cpu_snapshot())
    loader = threading.Thread(target=run_wrk, daemon=True)
    loader.start()
    time.sleep(1.0)
    recorded = subprocess.run(perf_argv, capture_output=True, text=True,
                              timeout=args.duration + 120, check=False)
    loader.join()
    after = (cpu.snapshot(pids), service.cpu_snapshot())
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    if recorded.returncode != 0 or not data.exists():
        raise BenchError(f"perf record failed ({recorded.returncode}):"
                         f" {recorded.stderr.strip()[-2000:]}")
    result: wrk.WrkResult = outcome["wrk"]  # type: ignore[assignment]
    if not service.alive():
        raise BenchError(f"{args.system} died; log:\n{service.log_tail()}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data, args.keep / "perf.data")

    by_symbol = perf_report(data, "dso,sym", 0.0)
    by_dso = perf_report(data, "dso", 0.0)
    return {
        "wrk": result,
        "pids": pids,
        "profiled_us": cpu.us_per_request(cpu.ticks_between(before[0], after[0]),
                                          result.requests),
        "tree_us": cpu.us_per_request(cpu.ticks_between(before[1], after[1]),
                                      result.requests),
        "samples": sample_count(by_symbol),
        "symbols": parse_report(by_symbol),
        "dsos": parse_report(by_dso),
    }


KERNEL_NOTE = (
    "Kernel time includes the loopback TCP stack's softirq work done on the"
    " worker's CPU (net_rx_action, tcp_v4_rcv: the receiving side of a write);"
    " with cpu-clock (timer) sampling, as in a VM without hardware counters,"
    " samples taken while interrupts were off land where they are re-enabled"
    " (_raw_spin_unlock_irqrestore, finish_task_switch)."
)


def render(args: argparse.Namespace, env: dict[str, object], found: dict[str, object]) -> str:
    result: wrk.WrkResult = found["wrk"]  # type: ignore[assignment]
    symbols: list[Share] = found["symbols"]  # type: ignore[assignment]
    dsos: list[Share] = found["dsos"]  # type: ignore[assignment]
    profiled_us = found["profiled_us"]
    load = env["loadavg_at_start"][0]  # type: ignore[index]
    lines = [
        f"# Profile: {args.system}, GET {args.path}, perf record -g -e cpu-clock",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {env['cpus']} CPUs"
        f" ({env['cpu_model']}), nproc {os.cpu_count()}, load average at start {load:.2f};"
        f" wrk -t{args.threads} -c{args.connections} keep-alive for {args.duration + 2} s,"
        f" perf sampling pid(s) {', '.join(map(str, found['pids']))}"  # type: ignore[call-overload]
        f" for {args.duration} s at {args.freq} Hz ({found['samples']} samples);"
        f" commit {git_commit()}",
        f"Under perf: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms,"
        f" {result.http_errors + result.socket_errors} errors. CPU per request over"
        f" wrk's run (from /proc): profiled process(es) {report.fmt(profiled_us, 1)} us,"  # type: ignore[arg-type]
        f" whole process tree {report.fmt(found['tree_us'], 1)} us."  # type: ignore[arg-type]
        " \"us/req\" below is self % x the profiled processes' CPU per request.",
        "## By shared object (self %)",
        share_table(dsos[:12], profiled_us, with_symbol=False),  # type: ignore[arg-type]
        f"## Top {args.top} symbols (self %)",
        share_table(symbols[:args.top], profiled_us, with_symbol=True),  # type: ignore[arg-type]
        f"## Top {args.top} symbols outside the kernel (self %)",
        share_table([s for s in symbols if not is_kernel(s)][:args.top], profiled_us,  # type: ignore[arg-type]
                    with_symbol=True),
        KERNEL_NOTE,
    ]
    return "\n\n".join(lines)


def git_commit() -> str:
    done = subprocess.run(["git", "-C", str(systems.REPO_ROOT), "describe", "--always",
                           "--dirty"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names, notes = systems.resolve_systems([args.system], PROFILED,
                                           extra_binaries=("nginx", "wrk"))
    if not names:
        raise BenchError("; ".join(notes))
    if reason := perf_missing():
        raise BenchError(reason)
    env = report.environment()
    with systems.sigterm_as_interrupt(), Stack() as stack:
        found = profile(args, stack)
    text = render(args, env, found)
    out = report.results_dir()
    report.write(out, "profile", text, {
        "settings": {k: str(v) for k, v in vars(args).items()}, "environment": env,
        "wrk": found["wrk"].to_json(),  # type: ignore[attr-defined]
        **{k: found[k] for k in ("pids", "profiled_us", "tree_us", "samples")},
        "symbols": [vars(s) for s in found["symbols"]],  # type: ignore[attr-defined]
        "dsos": [vars(s) for s in found["dsos"]],  # type: ignore[attr-defined]
    })
    print(text + f"\n\nwritten to {out}/profile.md and profile.json")
    return 0


if __name__ == "__main__":
    systems.run_main("profile", main, (wrk.WrkError, subprocess.TimeoutExpired))
