"""Per-worker request counters and histograms in C arrays (native/stats.pyx).

An exchange adds itself at its end (Exchange._count: school, class, status,
duration, queue wait) without a Python call; the worker exports the arrays
about once a second to the admin process (gateway/server/telemetry.py),
which sums every worker's and publishes them through prometheus_client.

Schools and classes are counted under their names: each name gets a slot the
first time set_layout names it and keeps it for the Stats' life, so a reload
that renumbers, adds or removes schools never mixes or loses counts. Slot 0
("", "") counts exchanges with no school (421 and requests refused before
routing) or no class.
"""

DURATION_BUCKETS: tuple[float, ...]
"""Upper bounds (seconds) of the request duration histogram; +Inf follows."""
WAIT_BUCKETS: tuple[float, ...]
"""Upper bounds (seconds) of the queue wait histogram; +Inf follows."""
PAGE_WAITING: int
"""count_page kind: a waiting page (the school full, the request turned away)."""
PAGE_429: int
"""count_page kind: a 429 Too Many Requests (bulk class, or a client over its rate)."""
MAX_CODES: int
"""Distinct status codes counted apart (the first seen); later ones count as CODE_OTHER."""
CODE_OTHER: int
"""The status reported for codes beyond MAX_CODES (0)."""

class Stats:
    """Counts by school x class x status code, request duration and queue
    wait histograms by school x class (seconds), and refusals by kind."""

    def __init__(self, schools: list[str] = ..., classes: list[str] = ...) -> None: ...
    def set_layout(self, schools: list[str], classes: list[str]) -> None:
        """The current config's schools and classes, by index: record's
        indices refer to these from now on (counts stay with their names)."""
    def add(self, school: int, klass: int, status: int, duration: float,
            wait: float = -1.0) -> None:
        """What Exchange._count records: school and class indices of the
        current layout (-1: none), the status code, the duration from the
        request head to the end of the response (seconds), and the time the
        request waited for its admission slot (seconds; < 0: it took none)."""
    def count_page(self, school: int, klass: int, kind: int) -> None:
        """A refusal the gateway answered itself: kind PAGE_WAITING or
        PAGE_429. ValueError for another kind."""
    def export(self) -> dict:
        """The non-zero counts by name: {"requests": [(school, class, status,
        n)], "duration": [(school, class, buckets, sum)], "wait": [...],
        "pages": [(school, class, kind, n)]}; buckets are per-bucket counts
        (not cumulative) for the bounds above and +Inf."""
