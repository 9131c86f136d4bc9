"""Plain-Python models of the native admission pieces.

Same decisions and API as gateway._native.bucket.TokenBucket and
gateway._native.scheduler.Scheduler, minus the stats/free_slots reporting
helpers of the latter (the invariants are documented at the
top of native/scheduler.pyx). The tests run both on the same inputs and
compare; bench/micro/bench_admission.py measures what the native code buys.
"""

from __future__ import annotations

import heapq
import math
import sys

QUEUED, ADMITTED, REJECTED, CANCELLED = 0, 1, 2, 3
# An absent count limit (the native INT_MAX): above any count.
UNLIMITED = 2**31 - 1
# set_allotment's "leave this limit as it is".
_KEEP = object()
RATE_TAU = 10.0
EARLY = 1e-6
SWEEP_EVERY = 60.0


class TokenBucket:
    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: int, now: float):
        if not rate >= 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        if burst < 0:
            raise ValueError(f"burst must be >= 0, got {burst}")
        self.rate = float(rate)
        # Made with rate 0: unlimited for life, an infinite capacity and
        # level (a retuned rate of 0 means "no refill", not unlimited).
        self.capacity = math.inf if rate == 0.0 else _capacity(self.rate, burst)
        self.level = self.capacity
        self.stamp = now

    @property
    def unlimited(self) -> bool:
        return self.capacity == math.inf

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def try_take(self, now: float, n: float = 1.0) -> bool:
        self._refill(now)
        if self.level + self.rate * EARLY >= n:
            self.level -= n
            return True
        return False

    def time_until(self, now: float, n: float = 1.0) -> float:
        if n > self.capacity:
            return math.inf
        self._refill(now)
        if self.level + self.rate * EARLY >= n:
            return 0.0
        return math.inf if self.rate == 0.0 else (n - self.level) / self.rate

    def reserve(self, now: float, n: float = 1.0, max_wait: float = math.inf) -> float:
        delay = self.time_until(now, n)
        if delay > max_wait:
            return -1.0
        self.level -= n
        return delay

    def set_rate(self, now: float, rate: float, burst: int) -> None:
        if self.unlimited:
            raise ValueError("an unlimited bucket (made with rate 0) has no rate to set")
        if not 0 <= rate < math.inf:
            raise ValueError(f"rate must be finite and >= 0, got {rate}")
        if burst < 0:
            raise ValueError(f"burst must be >= 0, got {burst}")
        self._refill(now)
        self.rate = float(rate)
        self.capacity = _capacity(self.rate, burst)
        self.level = min(self.level, self.capacity)

    def deposit(self, now: float, n: float) -> float:
        _check_amount(n)
        if self.unlimited:
            return 0.0
        self._refill(now)
        n = max(0.0, min(n, self.capacity - self.level))
        self.level += n
        return n

    def withdraw(self, now: float, n: float) -> float:
        _check_amount(n)
        if self.unlimited:
            return 0.0
        self._refill(now)
        n = max(0.0, min(n, self.level))
        self.level -= n
        return n

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self.level

    def idle(self, now: float) -> bool:
        return self.tokens(now) >= self.capacity


def _capacity(rate: float, burst: int) -> float:
    return float(burst) if burst > 0 else max(rate, 1.0)


def _check_amount(n: float) -> None:
    if not 0.0 <= n < math.inf:
        raise ValueError(f"a token amount must be finite and >= 0, got {n}")


class Ticket:
    __slots__ = ("arrived_at", "deadline", "held", "key", "klass", "listed", "not_before",
                 "pool", "position", "reason", "reject_status", "retry_after", "school", "seq",
                 "state", "user")

    def __init__(self, school: int, klass: int, seq: int):
        self.school, self.klass, self.seq = school, klass, seq
        self.state = QUEUED
        self.reason = ""
        self.reject_status = self.retry_after = self.position = 0
        self.held = self.listed = False
        self.user = None
        # The pool whose slot a held ticket counts in.
        self.pool: _Pool | None = None

    def order(self) -> tuple[float, float, int]:
        return (self.key, self.arrived_at, self.seq)


def _count_before(q: list[Ticket], t: Ticket) -> int:
    lo, hi, key = 0, len(q), t.order()
    while lo < hi:
        mid = (lo + hi) >> 1
        if q[mid].order() < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


class _Pool:
    def __init__(self, max_inflight: int, index: int = -1, n_classes: int = 1):
        self.max_inflight, self.members, self.index = max_inflight, [], index
        self.inflight = self.queued = 0
        # Per class over the member schools: slots held, the pool-wide limit
        # (-1 none) and the allotted slots (-1: share of max_inflight).
        self.class_inflight = [0] * n_classes
        self.class_limit = [-1] * n_classes
        self.class_fixed = [-1] * n_classes


class _School:
    def __init__(self, n_classes: int):
        self.queues: list[list[Ticket]] = [[] for _ in range(n_classes)]
        self.class_inflight = [0] * n_classes
        self.class_limit = [-1] * n_classes
        self.class_fixed = [-1] * n_classes
        self.admitted = [0] * n_classes
        self.rejected = [0] * n_classes
        self.cancelled = self.connections = self.inflight = self.queued = 0
        self.admitted_gone = 0
        self.clients: dict = {}
        self.pool: _Pool | None = None
        self.bucket: TokenBucket | None = None
        self.rate_value = self.rate_stamp = self.rate_since = 0.0

    def rate(self, now: float) -> float:
        if self.rate_value == 0.0:
            return 0.0
        r = self.rate_value * math.exp(-(now - self.rate_stamp) / RATE_TAU)
        return r / (1.0 - math.exp(-max(now - self.rate_since, 1.0) / RATE_TAU))

    def count_admission(self, now: float) -> None:
        if self.rate_value == 0.0:
            self.rate_since = self.rate_stamp = now
        self.rate_value = (self.rate_value * math.exp(-(now - self.rate_stamp) / RATE_TAU)
                           + 1.0 / RATE_TAU)
        self.rate_stamp = now

    def capacity(self) -> int:
        """The slots a class share is a share of (-1: unlimited)."""
        if self.max_inflight != UNLIMITED:
            return self.max_inflight
        return self.pool.max_inflight if self.pool is not None else -1


def _limit(value, name: str) -> int:
    if value is None:
        return UNLIMITED
    if not 0 <= value < UNLIMITED:
        raise ValueError(f"{name} must be None or 0..{UNLIMITED - 1}, got {value}")
    return int(value)


def _inverse(name: str, sources, n_new: int, n_old: int) -> list[int]:
    """Old index -> new index (-1: gone) from new index -> old index (-1: new)."""
    sources = list(sources)
    if len(sources) != n_new:
        raise ValueError(f"{name}: {len(sources)} entries for {n_new}")
    out = [-1] * n_old
    for new, old in enumerate(sources):
        if old < 0:
            continue
        if old >= n_old or out[old] >= 0:
            raise ValueError(f"{name}[{new}]: {old} is out of range or used twice")
        out[old] = new
    return out


def _carry_level(old: TokenBucket, new: TokenBucket, now: float) -> None:
    """new takes over old's tokens (and debt), capped at its own capacity."""
    old._refill(now)
    new.level = min(old.level, new.capacity)
    new.stamp = max(now, old.stamp)


class Scheduler:
    def __init__(self, schools, classes, pools=(), *, aging=30.0, min_retry=1, max_retry=120,
                 now=0.0):
        if aging <= 0:
            raise ValueError("aging must be > 0")
        if not 1 <= min_retry <= max_retry:
            raise ValueError("need 1 <= min_retry <= max_retry")
        classes = list(classes)
        if not classes:
            raise ValueError("at least one class is needed")
        self.n_classes = len(classes)
        self.priority = [float(c[0]) for c in classes]
        self.max_wait = [float(c[1]) for c in classes]
        self.reject_status = [int(c[2]) for c in classes]
        self.shares: list[float | None] = [None] * self.n_classes
        self.aging, self.min_retry, self.max_retry = aging, min_retry, max_retry
        self.pools = [_Pool(int(m), p, self.n_classes) for p, m in enumerate(pools)]
        self.schools: list[_School] = []
        for i, (max_inflight, max_connections, rate, burst, weight, pool, max_queue,
                client_rate, client_burst) in enumerate(schools):
            if weight <= 0:
                raise ValueError(f"school {i}: weight must be > 0")
            s = _School(self.n_classes)
            s.index = i
            s.max_inflight = max_inflight if max_inflight > 0 else UNLIMITED
            s.max_connections = max_connections if max_connections > 0 else UNLIMITED
            s.max_queue, s.weight = max_queue, weight
            if pool is not None and pool >= 0:
                s.pool = self.pools[pool]
                s.pool.members.append(s)
            s.bucket = TokenBucket(rate, burst, now) if rate > 0 else None
            s.client_rate, s.client_burst = client_rate, client_burst
            self.schools.append(s)
        self.seq = 0
        self.last_now = now
        self.waiting: set[_School] = set()
        self.deadlines: list = []
        self.delayed: list = []
        self.stale = 0
        self.outbox: list[Ticket] = []
        self.next_sweep = now + SWEEP_EVERY
        self.has_clients = False
        # Tickets holding a slot: what a reconfigure must carry over.
        self.held: set[Ticket] = set()

    def set_share(self, klass, share):
        self.shares[klass] = share
        for p in self.pools:
            self._pool_class_limits(p)
        for s in self.schools:
            self._class_limits(s)
            if s.queued:
                self.waiting.add(s)

    # -- allotments (invariant 8 of native/scheduler.pyx) -------------------------

    def set_allotment(self, school, now, *, max_inflight=_KEEP, max_connections=_KEEP,
                      max_queue=_KEEP, rate=_KEEP, burst=_KEEP):
        s = self.schools[school]
        inflight, connections, queue = s.max_inflight, s.max_connections, s.max_queue
        if max_inflight is not _KEEP:
            inflight = _limit(max_inflight, "max_inflight")
        if max_connections is not _KEEP:
            connections = _limit(max_connections, "max_connections")
        if max_queue is not _KEEP:
            queue = _limit(max_queue, "max_queue")
        if rate is not _KEEP or burst is not _KEEP:
            b = s.bucket
            if b is None:
                raise ValueError(f"school {school} has no token bucket (its config sets no rate)")
            r = b.rate if rate is _KEEP else rate
            if not 0 <= r < math.inf:
                raise ValueError(f"rate must be finite and >= 0, got {rate}")
            cap = b.capacity
            if burst is not _KEEP:
                if burst < 0:
                    raise ValueError(f"burst must be >= 0, got {burst}")
                cap = _capacity(r, burst)
            b._refill(now)
            b.rate, b.capacity = float(r), cap
            b.level = min(b.level, cap)
        # Only more slots admit anything now (see the native scheduler).
        raised = inflight > s.max_inflight
        s.max_inflight, s.max_connections, s.max_queue = inflight, connections, queue
        self._class_limits(s)
        self.last_now = now
        if raised and (s.queued or (s.pool is not None and s.pool.queued)):
            self._dispatch(s, now)

    def set_pool_allotment(self, pool, now, max_inflight):
        p = self.pools[pool]
        if max_inflight is None:
            raise ValueError("a pool is always limited: max_inflight must be >= 0")
        limit = _limit(max_inflight, "max_inflight")
        raised = limit > p.max_inflight
        p.max_inflight = limit
        self._pool_class_limits(p)
        for s in p.members:
            self._class_limits(s)
        self.last_now = now
        if raised and p.queued:
            self._dispatch_pool(p, now)

    def set_class_allotment(self, school, klass, now, max_inflight):
        s = self.schools[school]
        old = s.class_limit[klass]
        s.class_fixed[klass] = -1 if max_inflight is None else _limit(max_inflight,
                                                                      "max_inflight")
        self._class_limits(s)
        self.last_now = now
        if s.class_limit[klass] != old and (s.queued or (s.pool is not None
                                                         and s.pool.queued)):
            self._dispatch(s, now)

    def set_pool_class_allotment(self, pool, klass, now, max_inflight):
        p = self.pools[pool]
        old = p.class_limit[klass]
        p.class_fixed[klass] = -1 if max_inflight is None else _limit(max_inflight,
                                                                      "max_inflight")
        self._pool_class_limits(p)
        self.last_now = now
        if p.class_limit[klass] != old and p.queued:
            self._dispatch_pool(p, now)

    def grant_tokens(self, school, n, now):
        s = self.schools[school]
        if s.bucket is None:
            raise ValueError(f"school {school} has no token bucket (its config sets no rate)")
        added = s.bucket.deposit(now, n)
        self.last_now = now
        if added > 0.0 and (s.queued or (s.pool is not None and s.pool.queued)):
            self._dispatch(s, now)
        return added

    def reclaim_tokens(self, school, n, now):
        s = self.schools[school]
        if s.bucket is None:
            raise ValueError(f"school {school} has no token bucket (its config sets no rate)")
        return s.bucket.withdraw(now, n)

    def usage(self, school, now):
        s = self.schools[school]
        b = s.bucket

        def shown(limit):
            return None if limit == UNLIMITED else limit

        return {
            "inflight": s.inflight, "queued": s.queued, "connections": s.connections,
            "admitted": s.admitted_gone + sum(s.admitted),
            "admission_rate": s.rate(now),
            "tokens": math.inf if b is None else b.tokens(now),
            "max_inflight": shown(s.max_inflight),
            "max_connections": shown(s.max_connections),
            "max_queue": shown(s.max_queue),
            "rate": None if b is None else b.rate,
            "burst": None if b is None else b.capacity,
        }

    def pool_usage(self, pool, now):
        p = self.pools[pool]
        return {"inflight": p.inflight, "queued": p.queued,
                "admission_rate": sum(s.rate(now) for s in p.members),
                "max_inflight": p.max_inflight}

    def request(self, school, klass, client_key, now, arrived_at=None, max_wait=None):
        s = self.schools[school]
        wait = self.max_wait[klass] if max_wait is None else max_wait
        if not wait > 0.0:
            wait = 0.0
        self.last_now = now
        self.seq += 1
        t = Ticket(school, klass, self.seq)
        at = now if arrived_at is None or math.isnan(arrived_at) or arrived_at > now \
            else arrived_at
        t.arrived_at = at
        t.key = at - self.priority[klass] * self.aging
        t.deadline = now + wait
        delay, cb = 0.0, None
        if s.client_rate > 0.0 and client_key is not None:
            cb = s.clients.get(client_key)
            if cb is None:
                cb = s.clients[client_key] = TokenBucket(s.client_rate, s.client_burst, now)
                self.has_clients = True
            delay = cb.reserve(now, 1.0, wait)
            if delay < 0.0:
                self._reject(s, t, now, "client_rate", 429, cb.time_until(now))
                return t
        if delay == 0.0 and self._admit_at_once(s, t, now):
            return t
        if s.queued >= s.max_queue or wait == 0.0:
            if cb is not None:
                cb.level += 1.0
            self._reject(s, t, now, "queue_full" if s.queued >= s.max_queue else "busy",
                         self.reject_status[klass], -1.0)
            return t
        t.not_before = now + delay
        s.queued += 1
        if s.pool is not None:
            s.pool.queued += 1
        self.waiting.add(s)
        heapq.heappush(self.deadlines, (t.deadline, t.seq, t))
        if delay > 0.0:
            heapq.heappush(self.delayed, (t.not_before, t.seq, t))
        else:
            self._list(s, t)
            self._dispatch(s, now)
            if t.state == ADMITTED:
                self.outbox.remove(t)
        return t

    def release(self, ticket, now, refund=False):
        if not ticket.held:
            raise ValueError(f"{ticket!r} holds no slot")
        self.last_now = now
        ticket.held = False
        self.held.discard(ticket)
        pool, ticket.pool = ticket.pool, None
        if pool is not None:
            pool.inflight -= 1
            if ticket.klass >= 0:
                pool.class_inflight[ticket.klass] -= 1
        if ticket.school < 0:
            # Its school was removed by a reconfigure; only a pool slot is left.
            if pool is not None and pool.queued:
                self._dispatch_pool(pool, now)
            return self._take_outbox()
        s = self.schools[ticket.school]
        if refund:
            # Its request never reached the upstream: the token goes back and
            # the admission is not counted (see the native scheduler).
            if s.bucket is not None:
                s.bucket._refill(now)
                s.bucket.level = min(s.bucket.capacity, s.bucket.level + 1.0)
            if ticket.klass >= 0:
                s.admitted[ticket.klass] -= 1
        s.inflight -= 1
        if ticket.klass >= 0:
            s.class_inflight[ticket.klass] -= 1
        if s.queued or (s.pool is not None and s.pool.queued):
            self._dispatch(s, now)
        return self._take_outbox()

    def cancel(self, ticket, now):
        if ticket.state != QUEUED:
            return False
        s = self.schools[ticket.school]
        self.last_now = now
        self._unqueue(s, ticket)
        ticket.state = CANCELLED
        s.cancelled += 1
        return True

    def poll(self, now):
        self.last_now = now
        expired = []
        while self.delayed and self.delayed[0][0] <= now:
            t = heapq.heappop(self.delayed)[2]
            if t.state == QUEUED:
                s = self.schools[t.school]
                self._list(s, t)
                self.waiting.add(s)
        for s in sorted(self.waiting, key=lambda s: s.index):  # school order, as native
            if s.queued:
                self._dispatch(s, now)
            else:
                self.waiting.discard(s)
        while self.deadlines and self.deadlines[0][0] <= now:
            t = heapq.heappop(self.deadlines)[2]
            if t.state != QUEUED:
                self.stale -= 1
                continue
            s = self.schools[t.school]
            t.position = self._position(s, t)
            self.stale -= 1
            self._unqueue(s, t)
            self._reject(s, t, now, "max_wait", self.reject_status[t.klass], -1.0)
            expired.append(t)
        if now >= self.next_sweep:
            self._sweep(now)
        return self._take_outbox(), expired

    def next_deadline(self):
        if self.outbox:
            return self.last_now
        while self.deadlines and self.deadlines[0][2].state != QUEUED:
            heapq.heappop(self.deadlines)
            self.stale -= 1
        while self.delayed and self.delayed[0][2].state != QUEUED:
            heapq.heappop(self.delayed)
        when = [self.deadlines[0][0]] if self.deadlines else []
        if self.delayed:
            when.append(self.delayed[0][0])
        for s in self.waiting:
            b = s.bucket
            # A bucket allotted no refill waits for a grant, not for time.
            if b is not None and s.queued and b.level < 1.0 and b.rate > 0.0:
                due = b.stamp + (1.0 - b.level) / b.rate
                # Due already: not the bucket holding the school back.
                if due > self.last_now:
                    when.append(due)
        if self.has_clients:
            when.append(self.next_sweep)
        return min(when, default=None)

    def position(self, ticket):
        if ticket.state != QUEUED:
            return 0
        return self._position(self.schools[ticket.school], ticket)

    def estimated_wait(self, ticket, now):
        if ticket.state != QUEUED:
            return 0.0
        s = self.schools[ticket.school]
        return self._eta(s, self._position(s, ticket), now)

    def queue_eta(self, school, ahead, now):
        return self._eta(self.schools[school], ahead, now)

    def queued(self, school):
        return self.schools[school].queued

    def ahead(self, school, klass, arrived_at):
        s = self.schools[school]
        if not 0 <= klass < len(self.priority):
            raise IndexError(f"no class {klass}")
        probe = Ticket(school, klass, sys.maxsize)
        probe.arrived_at = arrived_at
        probe.key = arrived_at - self.priority[klass] * self.aging
        return sum(_count_before(q, probe) for q in s.queues)

    def connection_open(self, school):
        s = self.schools[school]
        if s.connections >= s.max_connections:
            return False
        s.connections += 1
        return True

    def connection_close(self, school):
        s = self.schools[school]
        if s.connections <= 0:
            raise ValueError(f"school {school} has no open connection")
        s.connections -= 1

    def reconfigure(self, schools, classes, pools=(), *, school_from, class_from,
                    pool_from=(), aging=30.0, min_retry=1, max_retry=120, now=0.0):
        fresh = Scheduler(schools, classes, pools, aging=aging, min_retry=min_retry,
                          max_retry=max_retry, now=now)
        school_from, class_from, pool_from = list(school_from), list(class_from), list(pool_from)
        school_to = _inverse("school_from", school_from, len(fresh.schools), len(self.schools))
        class_to = _inverse("class_from", class_from, fresh.n_classes, self.n_classes)
        pool_to = _inverse("pool_from", pool_from, len(fresh.pools), len(self.pools))
        shares = [self.shares[k0] if k0 >= 0 else None for k0 in class_from]
        for j, i in enumerate(school_from):
            if i < 0:
                continue
            old, s = self.schools[i], fresh.schools[j]
            s.connections, s.cancelled = old.connections, old.cancelled
            s.admitted_gone = old.admitted_gone + sum(
                n for k0, n in enumerate(old.admitted) if class_to[k0] < 0)
            s.rate_value, s.rate_stamp, s.rate_since = old.rate_value, old.rate_stamp, \
                old.rate_since
            for k, k0 in enumerate(class_from):
                if k0 >= 0:
                    s.admitted[k], s.rejected[k] = old.admitted[k0], old.rejected[k0]
            if s.bucket is not None and old.bucket is not None:
                _carry_level(old.bucket, s.bucket, now)
            if s.client_rate > 0.0:
                for key, b in old.clients.items():
                    nb = s.clients[key] = TokenBucket(s.client_rate, s.client_burst, now)
                    _carry_level(b, nb, now)
        rejected = []
        live = sorted((e[2] for e in self.deadlines if e[2].state == QUEUED),
                      key=lambda t: t.seq)
        for t in live:
            j, k = school_to[t.school], class_to[t.klass]
            if j < 0 or k < 0:
                t.state, t.reason, t.reject_status = REJECTED, "removed", 503
                t.retry_after, t.position, t.listed = fresh.min_retry, 0, False
                rejected.append(t)
                continue
            s = fresh.schools[j]
            t.school, t.klass = j, k
            t.key = t.arrived_at - fresh.priority[k] * fresh.aging
            s.queued += 1
            if s.pool is not None:
                s.pool.queued += 1
            fresh.waiting.add(s)
            heapq.heappush(fresh.deadlines, (t.deadline, t.seq, t))
            if t.listed:
                fresh._list(s, t)
            else:
                heapq.heappush(fresh.delayed, (t.not_before, t.seq, t))
        for t in self.held:
            j = school_to[t.school] if t.school >= 0 else -1
            if j >= 0:
                s = fresh.schools[j]
                t.school = j
                t.klass = class_to[t.klass] if t.klass >= 0 else -1
                s.inflight += 1
                if t.klass >= 0:
                    s.class_inflight[t.klass] += 1
                t.pool = s.pool
            else:
                p = t.pool.index if t.pool is not None else -1
                t.school = t.klass = -1
                t.pool = fresh.pools[pool_to[p]] if p >= 0 and pool_to[p] >= 0 else None
            if t.pool is not None:
                t.pool.inflight += 1
                if t.klass >= 0:
                    t.pool.class_inflight[t.klass] += 1
        fresh.held = self.held
        for k, share in enumerate(shares):
            fresh.set_share(k, share)
        (self.n_classes, self.priority, self.max_wait, self.reject_status, self.aging,
         self.min_retry, self.max_retry, self.pools, self.schools, self.waiting,
         self.deadlines, self.delayed, self.held) = (
            fresh.n_classes, fresh.priority, fresh.max_wait, fresh.reject_status,
            fresh.aging, fresh.min_retry, fresh.max_retry, fresh.pools, fresh.schools,
            fresh.waiting, fresh.deadlines, fresh.delayed, fresh.held)
        self.shares = fresh.shares
        self.stale = 0
        self.last_now = now
        self.has_clients = any(s.clients for s in self.schools)
        return rejected

    # -- internals -------------------------------------------------------------

    def _take_outbox(self):
        out, self.outbox = self.outbox, []
        return out

    def _school_room(self, s, now):
        if s.inflight >= s.max_inflight:
            return False
        return s.bucket is None or s.bucket.time_until(now) == 0.0

    def _class_room(self, s, klass):
        p = s.pool
        if p is not None and 0 <= p.class_limit[klass] <= p.class_inflight[klass]:
            return False
        return s.class_limit[klass] < 0 or s.class_inflight[klass] < s.class_limit[klass]

    def _class_limits(self, s):
        cap = s.capacity()
        s.class_limit = [
            -1 if share is None else fixed if fixed >= 0
            else -1 if cap < 0 else max(1, math.floor(share * cap + 1e-9))
            for share, fixed in zip(self.shares, s.class_fixed, strict=True)]

    def _pool_class_limits(self, p):
        p.class_limit = [
            -1 if share is None else fixed if fixed >= 0
            else max(1, math.floor(share * p.max_inflight + 1e-9))
            for share, fixed in zip(self.shares, p.class_fixed, strict=True)]

    def _admit_at_once(self, s, t, now):
        if s.queued:
            return False
        if s.pool is not None and (s.pool.queued or s.pool.inflight >= s.pool.max_inflight):
            return False
        if not self._school_room(s, now) or not self._class_room(s, t.klass):
            return False
        self._admit(s, t, now)
        return True

    def _admit(self, s, t, now):
        if s.bucket is not None:
            s.bucket.try_take(now)
        t.state, t.held = ADMITTED, True
        self.held.add(t)
        s.inflight += 1
        s.class_inflight[t.klass] += 1
        t.pool = s.pool
        if s.pool is not None:
            s.pool.inflight += 1
            s.pool.class_inflight[t.klass] += 1
        s.admitted[t.klass] += 1
        s.count_admission(now)

    def _best(self, s, now):
        if not self._school_room(s, now):
            return None
        heads = [q[0] for k, q in enumerate(s.queues) if q and self._class_room(s, k)]
        return min(heads, key=Ticket.order, default=None)

    def _dispatch(self, s, now):
        if s.pool is not None:
            self._dispatch_pool(s.pool, now)
            return
        while s.queued:
            t = self._best(s, now)
            if t is None:
                break
            self._take_from_queue(s, t, now)

    def _dispatch_pool(self, pool, now):
        while pool.inflight < pool.max_inflight:
            candidates = []
            for s in pool.members:
                t = self._best(s, now) if s.queued else None
                if t is not None:
                    candidates.append((s.inflight / s.weight, t.order(), s, t))
            if not candidates:
                break
            _, _, s, t = min(candidates, key=lambda c: (c[0], c[1]))
            self._take_from_queue(s, t, now)

    def _take_from_queue(self, s, t, now):
        self._unqueue(s, t)
        self._admit(s, t, now)
        self.outbox.append(t)

    def _list(self, s, t):
        q = s.queues[t.klass]
        q.insert(_count_before(q, t), t)
        t.listed = True

    def _unqueue(self, s, t):
        if t.listed:
            q = s.queues[t.klass]
            del q[_count_before(q, t)]
            t.listed = False
        self.stale += 1
        s.queued -= 1
        if s.pool is not None:
            s.pool.queued -= 1
        if self.stale > 64 and 2 * self.stale > len(self.deadlines):
            self.deadlines = [e for e in self.deadlines if e[2].state == QUEUED]
            self.delayed = [e for e in self.delayed if e[2].state == QUEUED]
            heapq.heapify(self.deadlines)
            heapq.heapify(self.delayed)
            self.stale = 0

    def _position(self, s, t):
        return 1 + sum(_count_before(q, t) for q in s.queues)

    def _eta(self, s, ahead, now):
        rate = s.rate(now)
        return float(self.max_retry) if rate <= 0.0 else ahead / rate

    def _retry(self, seconds):
        if not seconds <= self.max_retry:
            return self.max_retry
        if seconds <= self.min_retry:
            return self.min_retry
        return math.ceil(seconds)

    def _reject(self, s, t, now, reason, status, wait):
        t.state, t.reason, t.reject_status = REJECTED, reason, status
        if wait < 0.0:
            wait = self._eta(s, t.position or s.queued + 1, now)
        t.retry_after = self._retry(wait)
        s.rejected[t.klass] += 1

    def _sweep(self, now):
        self.has_clients = False
        for s in self.schools:
            for key in [k for k, b in s.clients.items() if b.idle(now)]:
                del s.clients[key]
            self.has_clients = self.has_clients or bool(s.clients)
        self.next_sweep = now + SWEEP_EVERY
