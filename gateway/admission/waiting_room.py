"""Waiting-room registry: browser visitors waiting outside the request queue.

A visitor whose request was rejected gets the waiting page, which polls
status(). The registry keeps the visitors of each school in arrival order and
says 'go' to the earliest ones once the school has free slots beyond its live
queue, so the page can reload the original URL; that request then carries
the visitor's original arrived_at and lines up by it.

A visitor told 'go' keeps counting against the free slots for `go_grace`
seconds (its reload is on the way) and is then dropped; visitors that stop
polling for `forget_after` seconds are dropped too. Pure object: `now` is
passed in, and capacity comes from the AdmissionController.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal

from gateway.admission.controller import AdmissionController

State = Literal["wait", "go"]


@dataclass(slots=True)
class _Visitor:
    arrived_at: float
    last_seen: float
    # When the visitor was told to go (None: still waiting).
    go_at: float | None = None
    # The class of the visitor's request (None: unknown, count every queued one).
    klass: int | None = None


class _Line:
    """One school's visitors: by id, and (arrived_at, id) in order."""

    __slots__ = ("by_id", "going", "order")

    def __init__(self) -> None:
        self.by_id: dict[bytes, _Visitor] = {}
        self.order: list[tuple[float, bytes]] = []
        self.going = 0

    def add(self, visitor_id: bytes, visitor: _Visitor) -> None:
        self.by_id[visitor_id] = visitor
        bisect.insort(self.order, (visitor.arrived_at, visitor_id))

    def remove(self, visitor_id: bytes) -> None:
        visitor = self.by_id.pop(visitor_id)
        if visitor.go_at is not None:
            self.going -= 1
        entry = (visitor.arrived_at, visitor_id)
        del self.order[bisect.bisect_left(self.order, entry)]

    def rank(self, visitor_id: bytes) -> int:
        """Waiting visitors ahead of this one (those told 'go' excluded)."""
        visitor = self.by_id[visitor_id]
        ahead = bisect.bisect_left(self.order, (visitor.arrived_at, visitor_id))
        if self.going:
            ahead -= sum(1 for at, vid in self.order[:ahead]
                         if self.by_id[vid].go_at is not None)
        return ahead


class WaitingRoom:
    """Visitors of every school waiting for their turn to reload."""

    def __init__(self, controller: AdmissionController, *, forget_after: float = 30.0,
                 go_grace: float = 15.0, max_visitors: int = 100_000):
        if forget_after <= 0 or go_grace <= 0 or max_visitors < 1:
            raise ValueError("forget_after, go_grace and max_visitors must be positive")
        self.controller = controller
        self.forget_after = forget_after
        self.go_grace = go_grace
        self.max_visitors = max_visitors
        self._lines: dict[int, _Line] = {}
        self._count = 0
        self._next_sweep = -float("inf")

    def __len__(self) -> int:
        return self._count

    def join(self, school: int, visitor_id: bytes, arrived_at: float, now: float,
             klass: int | None = None) -> bool:
        """Register a visitor (idempotent); False when the room is full.

        `klass` is the class of the visitor's request: their position then
        counts only the queued requests they would line up behind.
        """
        self._maybe_sweep(now)
        line = self._lines.setdefault(school, _Line())
        visitor = line.by_id.get(visitor_id)
        if visitor is not None:
            visitor.last_seen = now
            return True
        if self._count >= self.max_visitors:
            return False
        line.add(visitor_id, _Visitor(min(arrived_at, now), now, klass=klass))
        self._count += 1
        return True

    def touch(self, school: int, visitor_id: bytes, now: float) -> bool:
        """Note that the visitor is still there; False if it was forgotten."""
        line = self._lines.get(school)
        visitor = None if line is None else line.by_id.get(visitor_id)
        if visitor is None:
            return False
        visitor.last_seen = now
        return True

    def leave(self, school: int, visitor_id: bytes) -> None:
        """The visitor's request came back and was admitted or queued."""
        line = self._lines.get(school)
        if line is not None and visitor_id in line.by_id:
            line.remove(visitor_id)
            self._count -= 1

    def status(self, school: int, visitor_id: bytes, now: float) -> tuple[State, int, float]:
        """(state, position, eta_seconds) for a polling visitor.

        position counts the school's queued requests this visitor would line
        up behind, plus the visitors who arrived earlier, this one included.
        A visitor unknown here (forgotten, or served by another worker) gets
        'go': its reload is then judged by the queue itself, with its original
        arrived_at.
        """
        self._maybe_sweep(now)
        line = self._lines.get(school)
        visitor = None if line is None else line.by_id.get(visitor_id)
        if visitor is None:
            return "go", 0, 0.0
        visitor.last_seen = now
        if visitor.go_at is not None:
            return "go", 0, 0.0
        rank = line.rank(visitor_id)
        free = self.controller.free_slots(school, now)
        if free < 0 or rank < free - line.going:
            visitor.go_at = now
            line.going += 1
            return "go", 0, 0.0
        if visitor.klass is None:
            queued = self.controller.queued(school)
        else:
            # Requests that came later (or matter less) queue behind the
            # visitor's return, so they do not count against its place.
            queued = self.controller.ahead(school, visitor.klass, visitor.arrived_at)
        position = queued + rank + 1
        return "wait", position, self.controller.queue_eta(school, position, now)

    def renumber(self, schools: list[int], classes: list[int]) -> None:
        """Follow a controller reconfigure: schools[i] and classes[k] are the
        new indices of old school i and class k (-1: removed). Visitors of a
        removed school are forgotten (their polls then get 'go', and the
        reload is routed by the new config); a visitor whose class was
        removed counts every queued request ahead, as when its class is not
        known."""
        lines: dict[int, _Line] = {}
        for old, line in self._lines.items():
            new = schools[old] if 0 <= old < len(schools) else -1
            if new < 0:
                self._count -= len(line.by_id)
                continue
            for visitor in line.by_id.values():
                k = visitor.klass
                if k is not None:
                    visitor.klass = classes[k] if 0 <= k < len(classes) and classes[k] >= 0 \
                        else None
            lines[new] = line
        self._lines = lines

    def _maybe_sweep(self, now: float) -> None:
        # Amortised: one pass every second at most, whatever the poll rate.
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for line in self._lines.values():
            gone = [vid for vid, v in line.by_id.items()
                    if now - v.last_seen > self.forget_after
                    or (v.go_at is not None and now - v.go_at > self.go_grace)]
            for vid in gone:
                line.remove(vid)
            self._count -= len(gone)


__all__ = ["WaitingRoom"]
