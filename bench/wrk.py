"""Running wrk and reading its results.

wrk's human summary rounds latencies to two decimals in whatever unit it
picks, so a Lua `done()` hook prints the raw numbers (microseconds) as one
JSON line instead, which `parse` reads back.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER = "WRK_RESULT "

REPORTER_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"duration_us": %d, "requests": %d, "bytes": %d, "connect": %d,'
    .. ' "read": %d, "write": %d, "timeout": %d, "status": %d,'
    .. ' "p50_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read,
    e.write, e.timeout, e.status, latency:percentile(50.0),
    latency:percentile(99.0), latency.max, latency.mean))
end
"""


class WrkError(RuntimeError):
    """wrk did not run or printed no result line."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    # wrk counts every response with a status above 399 here.
    http_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    def to_json(self) -> dict[str, float | int]:
        return {**asdict(self), "rps": self.rps, "socket_errors": self.socket_errors}


def parse(output: str) -> WrkResult:
    """Read the reporter's line out of wrk's whole stdout."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            try:
                raw = json.loads(line[len(MARKER):])
                return WrkResult(
                    requests=int(raw["requests"]),
                    duration_s=raw["duration_us"] / 1e6,
                    bytes=int(raw["bytes"]),
                    connect_errors=int(raw["connect"]),
                    read_errors=int(raw["read"]),
                    write_errors=int(raw["write"]),
                    timeouts=int(raw["timeout"]),
                    http_errors=int(raw["status"]),
                    p50_ms=raw["p50_us"] / 1000,
                    p99_ms=raw["p99_us"] / 1000,
                    max_ms=raw["max_us"] / 1000,
                    mean_ms=raw["mean_us"] / 1000,
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise WrkError(f"malformed wrk result line {line!r}: {exc}") from exc
    raise WrkError(f"no {MARKER.strip()} line in wrk output:\n{output[-2000:]}")


def run(
    url: str, *, duration: float, connections: int, threads: int, script_dir: Path,
    timeout: float = 10.0,
) -> WrkResult:
    """One keep-alive wrk run against `url`; `script_dir` receives the Lua reporter."""
    script = script_dir / "wrk_report.lua"
    if not script.exists():
        script.write_text(REPORTER_LUA)
    argv = [
        "wrk", "--latency", "-t", str(threads), "-c", str(max(connections, threads)),
        "-d", f"{max(1, round(duration))}s", "--timeout", f"{round(timeout)}s",
        "-s", str(script), url,
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + timeout + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish: {' '.join(argv)}") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout}")
    return parse(done.stdout)
