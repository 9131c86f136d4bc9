"""Brute-force model of the admission rules, for the property tests.

Independent of the scheduler's data structures: it only sees the tickets a
scheduler handed out and recomputes, from their states and the config, what
the rules allow. Slow on purpose (every check rescans everything).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tests.oracles.admission import ADMITTED, CANCELLED, QUEUED, REJECTED

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
    # Held tickets whose school a reload removed: seq -> the pool they still
    # count in (None: none).
    orphans: dict = field(default_factory=dict)
    # Held or queued at the last reload or allotment change: these may
    # exceed limits it lowered.
    carried: set = field(default_factory=set)
    # Allotments set since the last reload (a reload resets them to the
    # config): school -> {"max_inflight": n | None, "max_queue": n | None},
    # pool -> n. An allotment's 0 means none, its None no limit.
    allotted: dict = field(default_factory=dict)
    pool_allotted: dict = field(default_factory=dict)

    def order(self, t) -> tuple[float, float, int]:
        return (t.arrived_at - self.classes[t.klass].priority * self.aging,
                t.arrived_at, t.seq)

    def school_limit(self, school: int) -> int | None:
        """The slots the school may hold (None: no limit)."""
        allotted = self.allotted.get(school, {})
        if "max_inflight" in allotted:
            return allotted["max_inflight"]
        return self.schools[school].max_inflight or None

    def queue_limit(self, school: int) -> int | None:
        allotted = self.allotted.get(school, {})
        if "max_queue" in allotted:
            return allotted["max_queue"]
        return self.schools[school].max_queue

    def pool_limit(self, pool: int) -> int:
        return self.pool_allotted.get(pool, self.pools[pool])

    def class_limit(self, school: int, klass: int) -> int | None:
        share = self.classes[klass].share
        spec = self.schools[school]
        cap = self.school_limit(school)
        if cap is None and spec.pool is not None:
            cap = self.pool_limit(spec.pool)
        if share is None or cap is None:
            return None
        return max(1, math.floor(share * cap + 1e-9))

    def pool_class_limit(self, pool: int, klass: int) -> int | None:
        """A class's slots over the whole pool: its share of the pool's
        slots (at least one), for all member schools together."""
        share = self.classes[klass].share
        if share is None:
            return None
        return max(1, math.floor(share * self.pool_limit(pool) + 1e-9))

    def pool_class_count(self, pool: int, klass: int, extra: frozenset = frozenset()) -> int:
        held = self.held | extra
        return sum(1 for t in self.tickets
                   if t.seq in held and t.school >= 0 and t.klass == klass
                   and self.schools[t.school].pool == pool)

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
        self.orphans.pop(t.seq, None)

    def snapshot(self) -> dict:
        """(school, class, state) of every live ticket, taken before a reload."""
        return {t.seq: (t.school, t.klass, t.state) for t in self.tickets
                if t.seq in self.held or t.state == QUEUED}

    def reloaded(self, before: dict, rejected: list, schools: list[SchoolSpec],
                 classes: list[ClassSpec], pools: list[int], school_from: list[int],
                 class_from: list[int], pool_from: list[int]) -> None:
        """Check what the scheduler's reconfigure did to the live tickets and
        take the new config."""
        school_to = {old: new for new, old in enumerate(school_from) if old >= 0}
        class_to = {old: new for new, old in enumerate(class_from) if old >= 0}
        pool_to = {old: new for new, old in enumerate(pool_from) if old >= 0}
        expect_rejected = []
        for t in self.tickets:
            if t.seq not in before:
                continue
            school, klass, state = before[t.seq]
            if state == QUEUED:
                if school in school_to and klass in class_to:
                    assert (t.state, t.school, t.klass) == (
                        QUEUED, school_to[school], class_to[klass])
                else:
                    assert (t.state, t.reason) == (REJECTED, "removed")
                    expect_rejected.append(t.seq)
            elif school >= 0 and school in school_to:
                assert t.school == school_to[school]
                assert t.klass == (class_to.get(klass, -1) if klass >= 0 else -1)
            else:
                assert (t.school, t.klass) == (-1, -1)
                pool = self.orphans.get(t.seq) if school < 0 else self.schools[school].pool
                self.orphans[t.seq] = None if pool is None else pool_to.get(pool)
        assert [t.seq for t in rejected] == expect_rejected
        self.schools, self.classes, self.pools = schools, classes, pools
        self.allotted, self.pool_allotted = {}, {}
        self.carried = self.held | {t.seq for t in self.tickets if t.state == QUEUED}

    def allot(self, school: int, **limits) -> None:
        """The scheduler's set_allotment(school, **limits) (max_inflight,
        max_queue) was called; what is held or queued now may stay above a
        lowered limit."""
        self.allotted.setdefault(school, {}).update(limits)
        self.carried = self.held | {t.seq for t in self.tickets if t.state == QUEUED}

    def allot_pool(self, pool: int, max_inflight: int) -> None:
        self.pool_allotted[pool] = max_inflight
        self.carried = self.held | {t.seq for t in self.tickets if t.state == QUEUED}

    # -- the rules -------------------------------------------------------------

    def counts(self, only: set | None = None, extra: frozenset = frozenset()):
        """Slots held by school, (school, class) and pool, and queued tickets
        by school; `only` limits the count to those tickets; tickets in
        `extra` (seqs) count as holding a slot (a what-if)."""
        by_school = [0] * len(self.schools)
        by_class = [[0] * len(self.classes) for _ in self.schools]
        by_pool = [0] * len(self.pools)
        queued = [0] * len(self.schools)
        held = self.held if only is None else self.held & only
        held = held | extra
        for t in self.tickets:
            if t.seq in held:
                if t.school >= 0:
                    by_school[t.school] += 1
                    if t.klass >= 0:
                        by_class[t.school][t.klass] += 1
                    pool = self.schools[t.school].pool
                else:
                    pool = self.orphans[t.seq]
                if pool is not None:
                    by_pool[pool] += 1
            elif t.state == QUEUED and (only is None or t.seq in only):
                queued[t.school] += 1
        return by_school, by_class, by_pool, queued

    def check_limits(self) -> None:
        """Slots never exceed school, class-share and pool limits; queues bounded.

        After a reload, slots held from before it may exceed a lowered limit,
        but nothing is admitted while the count is at or above it: the count
        stays within max(limit, carried slots still held)."""
        by_school, by_class, by_pool, queued = self.counts()
        c_school, c_class, c_pool, c_queued = self.counts(self.carried)
        for i in range(len(self.schools)):
            limit = self.school_limit(i)
            if limit is not None:
                assert by_school[i] <= max(limit, c_school[i]), (i, by_school[i], limit)
            limit = self.queue_limit(i)
            if limit is not None:
                assert queued[i] <= max(limit, c_queued[i])
            for k in range(len(self.classes)):
                limit = self.class_limit(i, k)
                if limit is not None:
                    assert by_class[i][k] <= max(limit, c_class[i][k]), \
                        (i, k, by_class[i][k], limit)
        for p in range(len(self.pools)):
            limit = self.pool_limit(p)
            assert by_pool[p] <= max(limit, c_pool[p]), (p, by_pool[p], limit)
        for t in self.tickets:
            assert t.state in TERMINAL_OR_LIVE
            assert (t.seq in self.held) <= (t.state == ADMITTED)

    def eligible(self, school: int, extra: frozenset = frozenset()):
        """Queued tickets of a school that the limits would let in right now
        (bucket-less schools only: tokens are not modelled here); tickets in
        `extra` count as admitted."""
        by_school, by_class, by_pool, _ = self.counts(extra=extra)
        spec = self.schools[school]
        limit = self.school_limit(school)
        if limit is not None and by_school[school] >= limit:
            return []
        if spec.pool is not None and by_pool[spec.pool] >= self.pool_limit(spec.pool):
            return []
        out = []
        for t in self.tickets:
            if t.school == school and t.state == QUEUED and t.seq not in extra:
                limit = self.class_limit(school, t.klass)
                if limit is not None and by_class[school][t.klass] >= limit:
                    continue
                if spec.pool is not None:
                    limit = self.pool_class_limit(spec.pool, t.klass)
                    if (limit is not None
                            and self.pool_class_count(spec.pool, t.klass, extra) >= limit):
                        continue
                out.append(t)
        return out

    def check_work_conserving(self) -> None:
        """No queued ticket could be admitted (after a call has dispatched)."""
        for i in range(len(self.schools)):
            assert not self.eligible(i), f"school {i} left {self.eligible(i)} waiting"

    def expected_next(self, school: int, extra: frozenset = frozenset()):
        """The ticket the rules say a freed slot of this school goes to."""
        return min(self.eligible(school, extra), key=self.order, default=None)

    def expected_admissions_after(self, school: int, **limits) -> list:
        """The tickets, in order, the rules admit from this (pool-less)
        school at once when its allotment becomes `limits`."""
        saved = dict(self.allotted.get(school, {}))
        self.allotted.setdefault(school, {}).update(limits)
        out: list = []
        while (t := self.expected_next(school, frozenset(x.seq for x in out))) is not None:
            out.append(t)
        self.allotted[school] = saved
        return out
