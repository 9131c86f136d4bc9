"""Turning measurements into a markdown table and a JSON file.

Results go to `bench/results/<UTC timestamp>/<name>.md` and `<name>.json`; the
JSON keeps every round so a later reader can recompute what the table shows.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.cpu import CpuUse
from bench.wrk import WrkResult

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
BASELINE = "nginx"


def fmt(value: float | int | None, digits: int = 0) -> str:
    """A table cell: thousands separated, fixed decimals, "-" for nothing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def counts(counter: Mapping[object, int]) -> str:
    """`{503: 7, 200: 90}` as "200: 90, 503: 7" (keys sorted); "-" when empty."""
    items = sorted((str(k), v) for k, v in counter.items() if v)
    return ", ".join(f"{k}: {v:,}" for k, v in items) or "-"


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] | None = None
) -> str:
    """A GitHub markdown table; numeric columns are right-aligned and padded."""
    numeric = list(numeric) if numeric is not None else [False] * len(headers)
    if len(numeric) != len(headers) or any(len(row) != len(headers) for row in rows):
        raise ValueError("every row needs one cell per header")
    widths = [max([len(h), 3, *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if num else "-" * (w + 2)
        for w, num in zip(widths, numeric, strict=True)
    ) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


CpuRuns = Mapping[str, Mapping[str, Sequence[CpuUse]]]


def paired_ratios(
    numerators: Sequence[float | None], denominators: Sequence[float | None],
) -> list[float]:
    """Round i's numerator over round i's denominator, for every round where
    both were measured and the denominator is above 0."""
    return [
        a / b for a, b in zip(numerators, denominators, strict=False)
        if a is not None and b is not None and b > 0
    ]


def median_ratio(
    numerators: Sequence[float | None], denominators: Sequence[float | None],
) -> float | None:
    """Median of the per-round ratios (`paired_ratios`); None when no round pairs.

    Systems run one after the other within a round, so a round's ratio
    compares them under the same conditions, and the median leaves out a
    round that one disturbance hit on one side only.
    """
    ratios = paired_ratios(numerators, denominators)
    return statistics.median(ratios) if ratios else None


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def load_summary(
    results: Mapping[str, Mapping[str, Sequence[WrkResult]]],
    peak_rss_kib: Mapping[str, int],
    cpu: CpuRuns | None = None,
) -> list[dict[str, object]]:
    """One row per (case, system): medians over rounds and the ratios to nginx.

    Medians rather than means: on a shared machine one disturbed round should
    not move the result. `vs_nginx` is the median of per-round ratios of
    req/s to nginx's in the same round. `cpu` (case -> system -> one CpuUse
    per round, in the rounds' order) adds the proxy's and the origin's CPU
    microseconds per request (medians over rounds) and `cpu_vs_nginx`, the
    median of per-round ratios of CPU per request to nginx's (below 1: the
    system spends less CPU per request than nginx).
    """
    rows: list[dict[str, object]] = []
    for case, by_system in results.items():
        base_runs = by_system.get(BASELINE) or []
        cpu_case = (cpu or {}).get(case, {})
        base_cpu = [c.us_per_request for c in cpu_case.get(BASELINE, ())]
        for system, runs in by_system.items():
            if not runs:
                continue
            own_cpu = cpu_case.get(system, ())
            cpu_us = [c.us_per_request for c in own_cpu]
            rows.append({
                "case": case,
                "system": system,
                "rounds": len(runs),
                "rps": statistics.median(r.rps for r in runs),
                "p50_ms": statistics.median(r.p50_ms for r in runs),
                "p99_ms": statistics.median(r.p99_ms for r in runs),
                "vs_nginx": median_ratio([r.rps for r in runs], [r.rps for r in base_runs]),
                "http_errors": sum(r.http_errors for r in runs),
                "socket_errors": sum(r.socket_errors for r in runs),
                "peak_rss_kib": peak_rss_kib.get(system),
                "cpu_us": _median(cpu_us),
                "cpu_vs_nginx": median_ratio(cpu_us, base_cpu),
                "origin_cpu_us": _median([c.origin_us_per_request for c in own_cpu]),
            })
    return rows


def _ratio(value: object) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _has_cpu(rows: Sequence[Mapping[str, object]], key: str) -> bool:
    return any(row.get(key) is not None for row in rows)


def load_markdown(rows: Sequence[Mapping[str, object]]) -> str:
    """The load table; the CPU columns appear when any row has CPU figures."""
    with_cpu = _has_cpu(rows, "cpu_us")
    headers = ["case", "system", "req/s", "p50 ms", "p99 ms", "vs nginx"]
    if with_cpu:
        headers += ["CPU us/req", "CPU vs nginx"]
    headers += ["non-2xx", "socket err", "peak RSS MiB"]
    if with_cpu:
        headers += ["origin CPU us/req"]
    cells = []
    for row in rows:
        line = [
            str(row["case"]), str(row["system"]), fmt(row["rps"]),  # type: ignore[arg-type]
            fmt(row["p50_ms"], 2), fmt(row["p99_ms"], 2),  # type: ignore[arg-type]
            _ratio(row["vs_nginx"]),
        ]
        if with_cpu:
            line += [fmt(row.get("cpu_us"), 1), _ratio(row.get("cpu_vs_nginx"))]  # type: ignore[arg-type]
        line += [
            fmt(row["http_errors"]), fmt(row["socket_errors"]),  # type: ignore[arg-type]
            "-" if row["peak_rss_kib"] is None else fmt(row["peak_rss_kib"] / 1024, 1),  # type: ignore[operator]
        ]
        if with_cpu:
            line += [fmt(row.get("origin_cpu_us"), 1)]  # type: ignore[arg-type]
        cells.append(line)
    return markdown_table(headers, cells, [False, False, *([True] * (len(headers) - 2))])


ADMISSION_ON, ADMISSION_OFF = "gateway", "gateway-noadm"
# The gateway sharing its limits through Redis, against the same gateway
# keeping them local (bench.load's shared/local table).
SHARED = "gateway-redis"


def admission_cost(
    results: Mapping[str, Mapping[str, Sequence[WrkResult]]],
    cpu: CpuRuns | None = None, on_name: str = ADMISSION_ON, off_name: str = ADMISSION_OFF,
) -> list[dict[str, object]]:
    """Per case: the gateway with admission on against the same gateway with it off.

    Both ran in every round, one after the other, so each round gives one
    paired ratio of req/s; the median of those ratios is the cost (below 1:
    admission is slower), and their range shows how noisy the pairing was.
    With `cpu` (as for `load_summary`), also each side's CPU microseconds per
    request and the median of per-round on/off ratios of it (above 1:
    admission costs CPU). Cases where either gateway is missing are left out. `on_name` and
    `off_name` pair two other systems the same way (SHARED against
    ADMISSION_ON: what sharing the limits through Redis costs).
    """
    rows: list[dict[str, object]] = []
    for case, by_system in results.items():
        on, off = by_system.get(on_name) or [], by_system.get(off_name) or []
        pairs = paired_ratios([r.rps for r in on], [r.rps for r in off])
        if not pairs:
            continue
        cpu_case = (cpu or {}).get(case, {})
        cpu_on = [c.us_per_request for c in cpu_case.get(on_name, ())]
        cpu_off = [c.us_per_request for c in cpu_case.get(off_name, ())]
        rows.append({
            "case": case,
            "rounds": len(pairs),
            "rps_on": statistics.median(r.rps for r in on),
            "rps_off": statistics.median(r.rps for r in off),
            "ratio": statistics.median(pairs),
            "ratio_min": min(pairs),
            "ratio_max": max(pairs),
            "p50_ms_on": statistics.median(r.p50_ms for r in on),
            "p50_ms_off": statistics.median(r.p50_ms for r in off),
            "p99_ms_on": statistics.median(r.p99_ms for r in on),
            "p99_ms_off": statistics.median(r.p99_ms for r in off),
            "cpu_us_on": _median(cpu_on),
            "cpu_us_off": _median(cpu_off),
            "cpu_ratio": median_ratio(cpu_on, cpu_off),
        })
    return rows


def admission_markdown(rows: Sequence[Mapping[str, object]], on: str = "on",
                       off: str = "off") -> str:
    """The cost-of-admission table: req/s, latency and (when measured) CPU per
    request with admission on / off (or the two systems `on` and `off` name,
    as admission_cost paired them)."""
    with_cpu = _has_cpu(rows, "cpu_us_on") or _has_cpu(rows, "cpu_us_off")
    headers = ["case", f"req/s {on}", f"req/s {off}", f"{on}/{off}", "range over rounds",
               f"p50 ms {on} / {off}", f"p99 ms {on} / {off}"]
    if with_cpu:
        headers += [f"CPU us/req {on} / {off}", f"CPU {on}/{off}"]
    cells = []
    for r in rows:
        line = [
            str(r["case"]), fmt(r["rps_on"]), fmt(r["rps_off"]),  # type: ignore[arg-type]
            f"{r['ratio']:.3f}x",
            f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}",
            f"{fmt(r['p50_ms_on'], 2)} / {fmt(r['p50_ms_off'], 2)}",  # type: ignore[arg-type]
            f"{fmt(r['p99_ms_on'], 2)} / {fmt(r['p99_ms_off'], 2)}",  # type: ignore[arg-type]
        ]
        if with_cpu:
            ratio = r.get("cpu_ratio")
            line += [
                f"{fmt(r.get('cpu_us_on'), 1)} / {fmt(r.get('cpu_us_off'), 1)}",  # type: ignore[arg-type]
                "-" if ratio is None else f"{ratio:.3f}x",
            ]
        cells.append(line)
    return markdown_table(headers, cells, [False, *([True] * (len(headers) - 1))])


def environment() -> dict[str, object]:
    """What a reader needs to judge the numbers: machine, load, versions."""

    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
        except OSError:
            return "missing"
        out = (done.stdout + done.stderr).strip().splitlines()
        return out[0] if out else "unknown"

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "loadavg_at_start": list(os.getloadavg()),
        "nginx": version(["nginx", "-v"]),
        "haproxy": version(["haproxy", "-v"]),
        "wrk": version(["wrk", "-v"]),
    }


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first "model name" in /proc/cpuinfo, else the platform's guess."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def results_dir(root: Path = RESULTS_ROOT, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    path = root / stamp
    path.mkdir(parents=True, exist_ok=True)
    return path


def write(directory: Path, name: str, markdown: str, data: object) -> tuple[Path, Path]:
    md, js = directory / f"{name}.md", directory / f"{name}.json"
    md.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    js.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return md, js
