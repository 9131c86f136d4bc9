"""Brute-force model of the admission rules, for the property tests.

Independent of the scheduler's data structures: it only sees the tickets a
scheduler handed out and recomputes, from their states and the config, what
the rules allow. Slow on purpose (every check rescans everything).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gateway.admission.reference import ADMITTED, CANCELLED, QUEUED, REJECTED

TERMINAL_OR_LIVE = {QUEUED, ADMITTED, REJECTED, CANCELLED}


@dataclass
class SchoolSpec:
    max_inflight: int = 0
    weight: float = 1.0
    pool: int | None = None
    max_queue: int = 1000
    rate: float = 0.0
    burst: int = 0

    def as_tuple(self) -> tuple:
        return (self.max_inflight, 0, self.rate, self.burst, self.weight,
                -1 if self.pool is None else self.pool, self.max_queue, 0.0, 0)


@dataclass
class ClassSpec:
    priority: int = 0
    max_wait: float = 10.0
    share: float | None = None
    reject_status: int = 503

    def as_tuple(self) -> tuple:
        return (self.priority, self.max_wait, self.reject_status)


@dataclass
class Model:
    schools: list[SchoolSpec]
    classes: list[ClassSpec]
    pools: list[int] = field(default_factory=list)
    aging: float = 30.0
    # Every ticket ever issued, and which ones still hold a slot.
    tickets: list = field(default_factory=list)
    held: set = field(default_factory=set)

    def order(self, t) -> tuple[float, float, int]:
        return (t.arrived_at - self.classes[t.klass].priority * self.aging,
                t.arrived_at, t.seq)

    def class_limit(self, school: int, klass: int) -> int | None:
        share = self.classes[klass].share
        spec = self.schools[school]
        cap = spec.max_inflight or (self.pools[spec.pool] if spec.pool is not None else 0)
        if share is None or cap == 0:
            return None
        return max(1, math.floor(share * cap + 1e-9))

    # -- bookkeeping the driver reports ---------------------------------------

    def issued(self, t) -> None:
        self.tickets.append(t)
        if t.state == ADMITTED:
            self.held.add(t.seq)

    def admitted(self, tickets) -> None:
        for t in tickets:
            assert t.state == ADMITTED
            assert t.seq not in self.held, "admitted twice"
            self.held.add(t.seq)

    def released(self, t) -> None:
        self.held.remove(t.seq)

    # -- the rules -------------------------------------------------------------

    def counts(self):
        by_school = [0] * len(self.schools)
        by_class = [[0] * len(self.classes) for _ in self.schools]
        by_pool = [0] * len(self.pools)
        queued = [0] * len(self.schools)
        for t in self.tickets:
            if t.seq in self.held:
                by_school[t.school] += 1
                by_class[t.school][t.klass] += 1
                pool = self.schools[t.school].pool
                if pool is not None:
                    by_pool[pool] += 1
            elif t.state == QUEUED:
                queued[t.school] += 1
        return by_school, by_class, by_pool, queued

    def check_limits(self) -> None:
        """Slots never exceed school, class-share and pool limits; queues bounded."""
        by_school, by_class, by_pool, queued = self.counts()
        for i, spec in enumerate(self.schools):
            if spec.max_inflight:
                assert by_school[i] <= spec.max_inflight, (i, by_school[i])
            assert queued[i] <= spec.max_queue
            for k in range(len(self.classes)):
                limit = self.class_limit(i, k)
                if limit is not None:
                    assert by_class[i][k] <= limit, (i, k, by_class[i][k], limit)
        for p, limit in enumerate(self.pools):
            assert by_pool[p] <= limit, (p, by_pool[p], limit)
        for t in self.tickets:
            assert t.state in TERMINAL_OR_LIVE
            assert (t.seq in self.held) <= (t.state == ADMITTED)

    def eligible(self, school: int):
        """Queued tickets of a school that the limits would let in right now
        (bucket-less schools only: tokens are not modelled here)."""
        by_school, by_class, by_pool, _ = self.counts()
        spec = self.schools[school]
        if spec.max_inflight and by_school[school] >= spec.max_inflight:
            return []
        if spec.pool is not None and by_pool[spec.pool] >= self.pools[spec.pool]:
            return []
        out = []
        for t in self.tickets:
            if t.school == school and t.state == QUEUED:
                limit = self.class_limit(school, t.klass)
                if limit is None or by_class[school][t.klass] < limit:
                    out.append(t)
        return out

    def check_work_conserving(self) -> None:
        """No queued ticket could be admitted (after a call has dispatched)."""
        for i in range(len(self.schools)):
            assert not self.eligible(i), f"school {i} left {self.eligible(i)} waiting"

    def expected_next(self, school: int):
        """The ticket the rules say a freed slot of this school goes to."""
        return min(self.eligible(school), key=self.order, default=None)
