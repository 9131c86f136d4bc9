"""The worker's access-log buffer (native/accesslog.pyx).

Exchanges record one line each as they end, as a tuple of the values
below, into a bounded per-process list; gateway.server.logs takes it
every ~100 ms, encodes it with msgspec and writes it in one go.

Tuple fields, in order: time (Unix seconds, float), school (str | None),
class (str | None), method (bytes | None), path (bytes | None: the target
without its query unless configured), status (int; 499: the client closed
first), decision (one of the constants below), queue_ms (float),
reason (str | None), upstream ("host:port" | None), upstream_ms (float,
-1: none), bytes_in (int), bytes_out (int), duration_ms (float).
"""

from collections.abc import Callable

ADMITTED: int
"""Forwarded, admitted at once."""
QUEUED: int
"""Forwarded after waiting in line (queue_ms)."""
WAITING: int
"""Answered with the waiting page."""
TOO_MANY: int
"""Answered 429 (a bulk class, or a client over its own rate)."""
REFUSED: int
"""Hostile or malformed input refused (reason)."""
LOCAL: int
"""Another answer the gateway made itself (reason): no school for the host,
the upstream not answering, the status poll, ..."""

def configure(enabled: bool, sample: float, capacity: int, query: bool) -> None:
    """enabled: buffer every line (False: only refusals and the gateway's own
    5xx answers, which the warnings need); sample: the share (0..1) kept of
    lines answered below 400 that were forwarded or answered locally;
    capacity: lines held between two take() calls (more are dropped and
    counted); query: paths keep their query string. ValueError if out of
    range."""

def take() -> tuple[list[tuple], int]:
    """(lines, dropped since the last call); empties the buffer."""

def pending() -> int:
    """Lines buffered now."""

def add(when: float, school: str | None, klass: str | None, method: bytes | None,
        path: bytes | None, status: int, decision: int, queue_ms: float = 0.0,
        reason: str | None = None, upstream: str | None = None, upstream_ms: float = -1.0,
        bytes_in: int = 0, bytes_out: int = 0, duration_ms: float = 0.0) -> bool:
    """Record a line as an exchange does (sampling and the bound apply);
    True if it was kept."""

class Clock:
    """RFC 3339 UTC times with milliseconds ("2026-11-30T08:00:01.500Z") from
    Unix seconds; the part up to the second is formatted once per second
    (the same text as gateway.server.logs._Clock)."""

    def __init__(self) -> None: ...
    def __call__(self, when: float) -> str: ...

def to_lines(entries: list[tuple], line_type: type, decisions: dict[int, str],
             stamp: Callable[[float], str]) -> list:
    """gateway.server.logs.to_line for each of `entries` (take()'s tuples):
    `line_type` built positionally in the field order of
    gateway.server.logs.Line (time, status, decision, queue_ms, bytes_in,
    bytes_out, duration_ms, school, class, method, path, reason, upstream,
    upstream_ms), times from `stamp` (natively when it is a Clock), values
    rounded to 0.1 with Python's round, upstream_ms None when negative."""
