"""CPU time a process tree spends, read from /proc, and its cost per request.

On a shared machine req/s moves with whatever else runs, while the CPU time a
proxy burns for each request it forwards moves much less: a neighbour that
takes a core away lowers the first and barely touches the second.

A snapshot maps every process of a tree to its user + system CPU time so far
(proc(5): `utime` and `stime`, fields 14 and 15 of /proc/<pid>/stat, in clock
ticks of `os.sysconf("SC_CLK_TCK")`; both already sum every thread of the
process). Processes are keyed by pid *and* start time (field 22), so a pid
reused between two snapshots is never taken for the process that had it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")

# (pid, start time in ticks since boot) -> utime + stime in ticks
Snapshot = dict[tuple[int, int], int]


@dataclass(frozen=True)
class ProcCpu:
    """One process's line of /proc/<pid>/stat, the parts CPU accounting needs."""

    pid: int
    start_ticks: int
    cpu_ticks: int


def parse_stat(text: str) -> ProcCpu:
    """Read pid, start time and utime + stime from a /proc/<pid>/stat line.

    The command name (field 2) sits in parentheses and may itself contain
    spaces and ")", so fields are counted after the *last* ")".
    Raises ValueError on a line that is not in that shape.
    """
    head, paren, rest = text.rpartition(")")
    fields = rest.split()
    if not paren or "(" not in head or len(fields) < 20:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    # fields[0] is field 3 (state), so proc(5)'s field n is fields[n - 3].
    utime, stime, start = int(fields[11]), int(fields[12]), int(fields[19])
    return ProcCpu(pid=int(head.split("(", 1)[0]), start_ticks=start, cpu_ticks=utime + stime)


def snapshot(pids: Iterable[int], proc: Path = PROC) -> Snapshot:
    """CPU ticks so far of each of `pids` that still exists (one gone is skipped)."""
    taken: Snapshot = {}
    for pid in pids:
        try:
            stat = parse_stat((proc / str(pid) / "stat").read_text())
        except (OSError, ValueError):
            continue  # exited since it was listed
        taken[(stat.pid, stat.start_ticks)] = stat.cpu_ticks
    return taken


def ticks_between(before: Mapping[tuple[int, int], int],
                  after: Mapping[tuple[int, int], int]) -> int:
    """CPU ticks the processes in `after` spent since `before` was taken.

    A process in both adds its growth; one that started in between adds all
    its time (all of it falls in the window). One that exited in between is
    lost: once reaped its time is only in its parent's `cutime`, mixed with
    what it spent before the window. The benched systems keep their
    processes for the whole run, so nothing is lost there.
    """
    return sum(ticks - before.get(key, 0) for key, ticks in after.items())


def us_per_request(ticks: int, requests: int,
                   ticks_per_second: int = TICKS_PER_SECOND) -> float | None:
    """CPU microseconds per request; None when no request completed."""
    if requests <= 0:
        return None
    return ticks * 1_000_000 / ticks_per_second / requests


@dataclass(frozen=True)
class CpuUse:
    """CPU ticks of a proxy's tree and of the origin's over one wrk run.

    `requests` is what wrk completed in that run. The origin serves every
    system alike, so its figure is informative only ("direct" is the origin
    itself: both figures are the same process tree then).
    """

    ticks: int
    origin_ticks: int
    requests: int
    ticks_per_second: int = TICKS_PER_SECOND

    @classmethod
    def between(cls, before: tuple[Snapshot, Snapshot], after: tuple[Snapshot, Snapshot],
                requests: int) -> CpuUse:
        """From (proxy, origin) snapshots taken before and after the run."""
        return cls(ticks_between(before[0], after[0]), ticks_between(before[1], after[1]),
                   requests)

    @property
    def us_per_request(self) -> float | None:
        return us_per_request(self.ticks, self.requests, self.ticks_per_second)

    @property
    def origin_us_per_request(self) -> float | None:
        return us_per_request(self.origin_ticks, self.requests, self.ticks_per_second)

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "cpu_ticks": self.ticks, "origin_cpu_ticks": self.origin_ticks,
            "ticks_per_second": self.ticks_per_second,
            "cpu_us_per_request": self.us_per_request,
            "origin_cpu_us_per_request": self.origin_us_per_request,
        }
