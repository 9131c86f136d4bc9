"""Admission scheduler: per-school priority queues and pool fair sharing.

Pure state machine. Every call takes `now` (seconds, the caller's clock) and
nothing here reads a clock, sleeps or does I/O. Schools, classes and pools are
small integers, fixed at construction and renumbered only by `reconfigure`.

Invariants (each call preserves them; the property tests check them):

1. Slots. A ticket holds a slot from admission until `release`. For every
   school: inflight <= max_inflight (unlimited when the config sets 0); per
   class: class_inflight <= class_limit (when limited); per pool:
   inflight <= max_inflight, and per class over the pool's member schools:
   class_inflight <= the pool's class_limit (a class's max_share of the
   pool as a whole). These are the allotted limits (invariant 8).
   Tokens are taken from the school bucket only at admission, one per
   ticket, and given back only by release(refund=True) (an admitted request
   that gave its slot back unused).
2. Order. Waiting tickets of a school are ordered by
   key = arrived_at - priority * aging, then arrived_at, then seq.
   With aging seconds per priority step, this is the order of "priority +
   time waited / aging" at any instant, so it never needs re-sorting; within
   a class it is FCFS by (arrived_at, seq). A class at its share limit is
   skipped, it does not block other classes.
3. Work conservation. After every call no queued, eligible ticket could be
   admitted: the scheduler dispatches whenever a slot frees, and `poll`
   catches up on what time changed (bucket refill, client delays, shares).
4. Pool fairness. When a pool slot frees, it goes to the member school with
   an eligible ticket and the smallest inflight / weight (ties: the earliest
   ticket), so schools converge to weight-proportional slot shares.
5. Bounded. At most max_queue QUEUED tickets per school; a ticket leaves the
   queue by admission, by cancel, or by expiry at its deadline
   (now + max_wait at request time). Nothing is dropped silently: every
   ticket ends ADMITTED, REJECTED or CANCELLED.
6. Client buckets. A ticket whose client bucket is empty reserves its token
   and waits (QUEUED, not yet listed) until the token is due, then joins its
   class queue at its (arrived_at, seq) place. A reservation due after the
   deadline rejects at once with 429.
7. Reconfiguration keeps the state. `reconfigure` swaps in new limits while
   schools, classes and pools continue by the caller's mapping: connections,
   tokens, counters, queued tickets and held slots carry over, re-indexed.
   Limits apply to the counts carried over (a lowered max_inflight admits
   nothing until inflight is below it). A held ticket counts in exactly one
   school, class and pool (those it records) and release undoes exactly
   that, so nothing is counted twice, lost or driven negative; a ticket
   whose school is gone keeps only its pool's slot, if the pool continues.
   Queued tickets of a removed school or class end REJECTED ("removed").
   Allotments start again from the new config's limits.
8. Allotments. The limits enforced here are each school's and pool's
   allotment: the part of its configured limit this participant (worker)
   may use now. They start as the configured limits and a slower, separate
   task moves them (set_allotment, set_pool_allotment, grant_tokens,
   reclaim_tokens; gateway/admission/allotment.py). The hot path reads the
   same fields as ever, so an allotment costs nothing per request. An
   allotment lowered below what is in use takes nothing back: nothing more
   is admitted until use is below it (as for a lowered limit in 7). Only
   more slots (a school's or pool's max_inflight raised) or granted tokens
   admit, at once, in queue order (2) and pool fairness (4), into the
   outbox that the next poll() or release() returns; so a pass that lowers
   first and raises after never admits beyond where it ends.
   Class shares follow the school's allotted slots. Tokens: the school
   bucket refills at its allotted rate up to its allotted burst; granted
   tokens fill it up to that burst and reclaimed ones leave it; neither
   ever drives its level below zero or above its capacity.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.limits cimport INT_MAX
from libc.math cimport INFINITY, ceil, exp, floor, isfinite, isnan

import heapq

from gateway._native.bucket cimport TokenBucket

QUEUED = 0
ADMITTED = 1
REJECTED = 2
CANCELLED = 3

cdef enum:
    S_QUEUED = 0
    S_ADMITTED = 1
    S_REJECTED = 2
    S_CANCELLED = 3

# An absent limit: above any count, so "count >= limit" is the whole check.
cdef enum:
    UNLIMITED = INT_MAX

# set_allotment's "leave this limit as it is".
_KEEP = object()

# Time constant of the admission-rate estimate, seconds.
cdef double RATE_TAU = 10.0
# How often idle client buckets are forgotten, seconds.
cdef double SWEEP_EVERY = 60.0


cdef inline bint before(Ticket a, Ticket b) noexcept:
    if a.key != b.key:
        return a.key < b.key
    if a.arrived_at != b.arrived_at:
        return a.arrived_at < b.arrived_at
    return a.seq < b.seq


cdef Py_ssize_t count_before(list q, Ticket t):
    """Number of tickets in sorted q that come before t."""
    cdef Py_ssize_t lo = 0, hi = len(q), mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if before(<Ticket>q[mid], t):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _inverse(str name, list sources, Py_ssize_t n_new, Py_ssize_t n_old):
    """Old index -> new index (-1: gone), from new -> old (-1: new)."""
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


def _ticket_seq(Ticket t):
    return t.seq


cdef void _carry_level(TokenBucket old, TokenBucket new, double now) noexcept:
    """new takes over old's tokens (and debt), capped at its own capacity;
    its stamp never moves back, so no clock step mints tokens."""
    old.refill(now)
    new.level = old.level if old.level < new.capacity else new.capacity
    new.stamp = now if now > old.stamp else old.stamp


cdef class Ticket:

    def __repr__(self):
        names = ("QUEUED", "ADMITTED", "REJECTED", "CANCELLED")
        return (f"<Ticket school={self.school} class={self.klass} "
                f"{names[self.state]} arrived_at={self.arrived_at:.3f} "
                f"seq={self.seq}>")


cdef class _Pool:

    def __cinit__(self, int max_inflight, int index=-1, int n_classes=1):
        self.n_classes = n_classes
        self.class_inflight = <int*>PyMem_Malloc(n_classes * sizeof(int))
        self.class_limit = <int*>PyMem_Malloc(n_classes * sizeof(int))
        self.class_fixed = <int*>PyMem_Malloc(n_classes * sizeof(int))
        if not self.class_inflight or not self.class_limit or not self.class_fixed:
            raise MemoryError()
        for k in range(n_classes):
            self.class_inflight[k] = 0
            self.class_limit[k] = -1
            self.class_fixed[k] = -1

    def __init__(self, int max_inflight, int index=-1, int n_classes=1):
        self.max_inflight = max_inflight
        self.index = index
        self.inflight = 0
        self.members = []

    def __dealloc__(self):
        PyMem_Free(self.class_inflight)
        PyMem_Free(self.class_limit)
        PyMem_Free(self.class_fixed)


cdef class _School:

    def __cinit__(self, int n_classes):
        self.n_classes = n_classes
        self.class_inflight = <int*>PyMem_Malloc(n_classes * sizeof(int))
        self.class_limit = <int*>PyMem_Malloc(n_classes * sizeof(int))
        self.admitted = <long long*>PyMem_Malloc(n_classes * sizeof(long long))
        self.rejected = <long long*>PyMem_Malloc(n_classes * sizeof(long long))
        self.class_fixed = <int*>PyMem_Malloc(n_classes * sizeof(int))
        if (not self.class_inflight or not self.class_limit or not self.admitted
                or not self.rejected or not self.class_fixed):
            raise MemoryError()
        for k in range(n_classes):
            self.class_inflight[k] = 0
            self.class_limit[k] = -1
            self.class_fixed[k] = -1
            self.admitted[k] = 0
            self.rejected[k] = 0
        self.queues = [[] for _ in range(n_classes)]
        self.clients = {}

    def __dealloc__(self):
        PyMem_Free(self.class_inflight)
        PyMem_Free(self.class_limit)
        PyMem_Free(self.admitted)
        PyMem_Free(self.rejected)
        PyMem_Free(self.class_fixed)

    cdef double rate(self, double now) noexcept:
        if self.rate_value == 0.0:
            return 0.0
        cdef double r = self.rate_value * exp(-(now - self.rate_stamp) / RATE_TAU)
        # Bias correction: in the first seconds the decayed sum has not
        # filled up yet and would understate the rate.
        cdef double span = now - self.rate_since
        if span < 1.0:
            span = 1.0
        return r / (1.0 - exp(-span / RATE_TAU))

    cdef void count_admission(self, double now) noexcept:
        if self.rate_value == 0.0:
            self.rate_since = now
            self.rate_stamp = now
        self.rate_value = (self.rate_value * exp(-(now - self.rate_stamp) / RATE_TAU)
                           + 1.0 / RATE_TAU)
        self.rate_stamp = now

    cdef int capacity(self) noexcept:
        """The slots a class share is a share of (-1: unlimited)."""
        if self.max_inflight != UNLIMITED:
            return self.max_inflight
        if self.pool is not None:
            return self.pool.max_inflight
        return -1


cdef int _limit(object value, str name) except -2:
    """A count limit given to set_allotment: None -> UNLIMITED, else >= 0."""
    if value is None:
        return UNLIMITED
    cdef long long n = value
    if not 0 <= n < UNLIMITED:
        raise ValueError(f"{name} must be None or 0..{UNLIMITED - 1}, got {value}")
    return <int>n


cdef inline int _config_limit(long long value) noexcept:
    """A configured count limit: 0 (and below) means none."""
    return <int>value if value > 0 else UNLIMITED


cdef class Scheduler:

    def __init__(self, schools, classes, pools=(), *, double aging=30.0,
                 int min_retry=1, int max_retry=120, double now=0.0):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s
        cdef int k
        if aging <= 0:
            raise ValueError("aging must be > 0")
        if not 1 <= min_retry <= max_retry:
            raise ValueError("need 1 <= min_retry <= max_retry")
        classes = list(classes)
        if not classes:
            raise ValueError("at least one class is needed")
        self.n_classes = len(classes)
        self.priority = <double*>PyMem_Malloc(self.n_classes * sizeof(double))
        self.max_wait = <double*>PyMem_Malloc(self.n_classes * sizeof(double))
        self.share = <double*>PyMem_Malloc(self.n_classes * sizeof(double))
        self.reject_status = <int*>PyMem_Malloc(self.n_classes * sizeof(int))
        if not self.priority or not self.max_wait or not self.share or not self.reject_status:
            raise MemoryError()
        for k, (priority, max_wait, reject_status) in enumerate(classes):
            if max_wait < 0:
                raise ValueError(f"class {k}: max_wait must be >= 0")
            self.priority[k] = priority
            self.max_wait[k] = max_wait
            self.reject_status[k] = reject_status
            self.share[k] = 0.0
        self.aging = aging
        self.min_retry = min_retry
        self.max_retry = max_retry
        self.pools = [_Pool(int(m), p, self.n_classes) for p, m in enumerate(pools)]
        self.schools = []
        for i, (max_inflight, max_connections, rate, burst, weight, pool, max_queue,
                client_rate, client_burst) in enumerate(schools):
            s = _School(self.n_classes)
            s.index = i
            s.max_inflight = _config_limit(max_inflight)
            s.max_connections = _config_limit(max_connections)
            s.max_queue = max_queue
            s.weight = weight
            if weight <= 0:
                raise ValueError(f"school {i}: weight must be > 0")
            if pool is not None and pool >= 0:
                s.pool = self.pools[pool]
                s.pool.members.append(s)
            s.bucket = TokenBucket(rate, burst, now) if rate > 0 else None
            s.client_rate = client_rate
            s.client_burst = client_burst
            self.schools.append(s)
        self.waiting = set()
        self.deadlines = []
        self.delayed = []
        self.outbox = []
        self.held = set()
        self.last_now = now
        self.next_sweep = now + SWEEP_EVERY

    def __dealloc__(self):
        PyMem_Free(self.priority)
        PyMem_Free(self.max_wait)
        PyMem_Free(self.share)
        PyMem_Free(self.reject_status)

    # -- shares -----------------------------------------------------------

    def set_share(self, int klass, share):
        """Limit `klass` to `share` of each school's slots (None: no limit).

        Takes effect for admissions from the next call on; a raised limit is
        acted upon by the next `poll`.
        """
        cdef _School s
        cdef _Pool p
        self._check_class(klass)
        self.share[klass] = 0.0 if share is None else share
        for p in self.pools:
            self._pool_class_limits(p)
        for s in self.schools:
            self._class_limits(s)
            if s.queued:
                self.waiting.add(s)

    # -- allotments (invariant 8) ---------------------------------------------

    def set_allotment(self, int school, double now, *, max_inflight=_KEEP,
                      max_connections=_KEEP, max_queue=_KEEP, rate=_KEEP, burst=_KEEP,
                      client_rate=_KEEP, client_burst=_KEEP):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s = self._school(school)
        cdef int inflight = s.max_inflight, connections = s.max_connections
        cdef int queue = s.max_queue
        cdef double r = 0.0, cap = 0.0
        cdef double cr = s.client_rate_here, ccap = s.client_cap_here
        cdef long long b = 0
        if client_rate is not _KEEP or client_burst is not _KEEP:
            if s.client_rate <= 0.0:
                raise ValueError(f"school {school} has no client buckets (no client_rate)")
            if client_rate is not _KEEP:
                cr = client_rate
            if client_burst is not _KEEP:
                ccap = client_burst
            if ccap == 0.0:
                cr = s.client_rate  # back to the config's
            elif not (cr >= 0.0 and isfinite(cr) and ccap >= 1.0 and isfinite(ccap)):
                raise ValueError(f"client_rate must be finite and >= 0 and client_burst "
                                 f"finite and >= 1 (0: the config's), got {client_rate}, "
                                 f"{client_burst}")
        # Everything is checked before anything changes.
        if max_inflight is not _KEEP:
            inflight = _limit(max_inflight, "max_inflight")
        if max_connections is not _KEEP:
            connections = _limit(max_connections, "max_connections")
        if max_queue is not _KEEP:
            queue = _limit(max_queue, "max_queue")
        if rate is not _KEEP or burst is not _KEEP:
            if s.bucket is None:
                raise ValueError(f"school {school} has no token bucket (its config sets no rate)")
            r = s.bucket.rate if rate is _KEEP else rate
            if not (r >= 0.0 and isfinite(r)):
                raise ValueError(f"rate must be finite and >= 0, got {rate}")
            cap = s.bucket.capacity
            if burst is not _KEEP:
                b = burst
                if b < 0:
                    raise ValueError(f"burst must be >= 0, got {burst}")
                # 0: one second's worth of the allotted rate, as in the config.
                cap = <double>b if b > 0 else (r if r > 1.0 else 1.0)
            s.bucket.retune(now, r, cap)
        # Only more slots can admit anything now (more tokens per second or
        # a bigger burst hold no more tokens yet). A pass of calls that
        # lowers first therefore admits nothing until its raises, when every
        # lowered value is already in force.
        cdef bint raised = inflight > s.max_inflight
        s.max_inflight = inflight
        s.max_connections = connections
        s.max_queue = queue
        s.client_rate_here = cr
        s.client_cap_here = ccap
        self._class_limits(s)
        self.last_now = now
        if raised and (s.queued or (s.pool is not None and s.pool.queued)):
            self._dispatch(s, now)

    def set_pool_allotment(self, int pool, double now, max_inflight):
        """See gateway/_native/scheduler.pyi."""
        cdef _Pool p
        cdef _School s
        if not 0 <= pool < len(self.pools):
            raise IndexError(f"no pool {pool}")
        p = <_Pool>self.pools[pool]
        if max_inflight is None:
            raise ValueError("a pool is always limited: max_inflight must be >= 0")
        cdef int limit = _limit(max_inflight, "max_inflight")
        cdef bint raised = limit > p.max_inflight
        p.max_inflight = limit
        self._pool_class_limits(p)
        for s in p.members:
            self._class_limits(s)
        self.last_now = now
        if raised and p.queued:
            self._dispatch_pool(p, now)

    def set_class_allotment(self, int school, int klass, double now, max_inflight):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s = self._school(school)
        self._check_class(klass)
        cdef int old = s.class_limit[klass]
        s.class_fixed[klass] = -1 if max_inflight is None else _limit(max_inflight,
                                                                      "max_inflight")
        self._class_limits(s)
        self.last_now = now
        if s.class_limit[klass] != old and (s.queued or (s.pool is not None
                                                         and s.pool.queued)):
            self._dispatch(s, now)

    def set_pool_class_allotment(self, int pool, int klass, double now, max_inflight):
        """See gateway/_native/scheduler.pyi."""
        cdef _Pool p
        if not 0 <= pool < len(self.pools):
            raise IndexError(f"no pool {pool}")
        self._check_class(klass)
        p = <_Pool>self.pools[pool]
        cdef int old = p.class_limit[klass]
        p.class_fixed[klass] = -1 if max_inflight is None else _limit(max_inflight,
                                                                      "max_inflight")
        self._pool_class_limits(p)
        self.last_now = now
        if p.class_limit[klass] != old and p.queued:
            self._dispatch_pool(p, now)

    def set_client_allotment(self, int school, client_key, double now, double rate,
                             double burst, double grant=0.0):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s = self._school(school)
        cdef TokenBucket cb = s.clients.get(client_key)
        if not (rate >= 0.0 and isfinite(rate) and burst >= 1.0 and isfinite(burst)
                and grant >= 0.0 and isfinite(grant)):
            raise ValueError(f"need finite rate >= 0, burst >= 1, grant >= 0; got "
                             f"{rate}, {burst}, {grant}")
        if cb is None:
            return False
        cb.retune(now, rate, burst)
        if grant > 0.0:
            cb.deposit_c(now, grant)
        return True

    def active_clients(self, int school, double now):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s = self._school(school)
        cdef TokenBucket cb
        out = []
        for key, cb in s.clients.items():
            cb.refill(now)
            if cb.level < cb.capacity:
                out.append(key)
        return out

    def grant_tokens(self, int school, double n, double now):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s = self._school(school)
        cdef double added
        if s.bucket is None:
            raise ValueError(f"school {school} has no token bucket (its config sets no rate)")
        if not (n >= 0.0 and isfinite(n)):
            raise ValueError(f"a token amount must be finite and >= 0, got {n}")
        added = s.bucket.deposit_c(now, n)
        self.last_now = now
        if added > 0.0 and (s.queued or (s.pool is not None and s.pool.queued)):
            self._dispatch(s, now)
        return added

    def reclaim_tokens(self, int school, double n, double now):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s = self._school(school)
        if s.bucket is None:
            raise ValueError(f"school {school} has no token bucket (its config sets no rate)")
        if not (n >= 0.0 and isfinite(n)):
            raise ValueError(f"a token amount must be finite and >= 0, got {n}")
        return s.bucket.withdraw_c(now, n)

    def usage(self, int school, double now):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s = self._school(school)
        cdef TokenBucket b = s.bucket
        cdef long long admitted = s.admitted_gone
        cdef int k
        for k in range(self.n_classes):
            admitted += s.admitted[k]
        if b is not None:
            b.refill(now)
        return {
            "inflight": s.inflight,
            "queued": s.queued,
            "connections": s.connections,
            "admitted": admitted,
            "admission_rate": s.rate(now),
            "tokens": INFINITY if b is None else b.level,
            "max_inflight": None if s.max_inflight == UNLIMITED else s.max_inflight,
            "max_connections": None if s.max_connections == UNLIMITED else s.max_connections,
            "max_queue": None if s.max_queue == UNLIMITED else s.max_queue,
            "rate": None if b is None else b.rate,
            "burst": None if b is None else b.capacity,
            "class_inflight": [s.class_inflight[k] for k in range(self.n_classes)],
            "class_queued": self._class_queued(s),
        }

    def pool_usage(self, int pool, double now):
        """See gateway/_native/scheduler.pyi."""
        cdef _Pool p
        cdef _School s
        cdef double rate = 0.0
        if not 0 <= pool < len(self.pools):
            raise IndexError(f"no pool {pool}")
        p = <_Pool>self.pools[pool]
        cdef list queued = [0] * self.n_classes
        for s in p.members:
            rate += s.rate(now)
            if s.queued:
                for k, n in enumerate(self._class_queued(s)):
                    queued[k] += n
        return {"inflight": p.inflight, "queued": p.queued, "admission_rate": rate,
                "max_inflight": p.max_inflight,
                "class_inflight": [p.class_inflight[k] for k in range(self.n_classes)],
                "class_queued": queued}

    cdef list _class_queued(self, _School s):
        """QUEUED tickets of the school per class (delayed ones included)."""
        cdef list queued = [len(q) for q in s.queues]
        if s.queued > sum(queued):
            for _, _, t in self.delayed:
                if (<Ticket>t).state == S_QUEUED and (<Ticket>t).school == s.index:
                    queued[(<Ticket>t).klass] += 1
        return queued

    # -- the shell's calls --------------------------------------------------

    def request(self, int school, int klass, client_key, double now, arrived_at=None,
                max_wait=None):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s = self._school(school)
        cdef Ticket t = Ticket.__new__(Ticket)
        cdef TokenBucket cb = None
        cdef double delay = 0.0, at, wait
        self._check_class(klass)
        wait = self.max_wait[klass] if max_wait is None else max_wait
        if not wait > 0.0:  # also NaN: no wait at all
            wait = 0.0
        self.last_now = now
        self.seq += 1
        t.seq = self.seq
        t.school = school
        t.klass = klass
        at = now if arrived_at is None else arrived_at
        if isnan(at) or at > now:
            at = now
        t.arrived_at = at
        t.key = at - self.priority[klass] * self.aging
        t.deadline = now + wait
        t.reason = ""
        if s.client_rate > 0.0 and client_key is not None:
            cb = s.clients.get(client_key)
            if cb is None:
                cb = TokenBucket(s.client_rate, s.client_burst, now)
                if s.client_cap_here > 0.0:
                    # This participant's part of a bucket shared by several.
                    cb.retune(now, s.client_rate_here, s.client_cap_here)
                    cb.level = s.client_cap_here
                s.clients[client_key] = cb
                self.has_clients = True
            delay = cb.reserve_c(now, 1.0, wait)
            if delay < 0.0:
                self._reject(s, t, now, "client_rate", 429, cb.wait(now, 1.0))
                return t
        if delay == 0.0 and self._admit_at_once(s, t, now):
            return t
        if s.queued >= s.max_queue or wait == 0.0:
            if cb is not None:
                cb.level += 1.0  # give the reservation back
            self._reject(s, t, now,
                         "queue_full" if s.queued >= s.max_queue else "busy",
                         self.reject_status[klass], -1.0)
            return t
        t.state = S_QUEUED
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
            # Others ahead may be eligible since the last poll (a refill);
            # dispatch so the order is kept, t may come out admitted.
            self._dispatch(s, now)
            if t.state == S_ADMITTED:
                self.outbox.remove(t)
        return t

    def release(self, Ticket ticket not None, double now, bint refund=False):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s
        cdef _Pool pool = ticket.pool
        cdef TokenBucket b
        if not ticket.held:
            raise ValueError(f"{ticket!r} holds no slot")
        self.last_now = now
        ticket.held = False
        self.held.discard(ticket)
        # Undo exactly what the ticket counts in (a reconfigure may have
        # moved it; see reconfigure).
        if pool is not None:
            ticket.pool = None
            pool.inflight -= 1
            if ticket.klass >= 0:
                pool.class_inflight[ticket.klass] -= 1
        if ticket.school < 0:
            # Its school was removed by a reconfigure: only a pool slot is left.
            if pool is not None and pool.queued:
                self._dispatch_pool(pool, now)
            return self._take_outbox()
        s = self._school(ticket.school)
        if refund:
            # Its request never reached the upstream: the school's token
            # goes back (up to the bucket's capacity) and the admission is
            # not counted, so the request's later admission is its only one.
            b = s.bucket
            if b is not None:
                b.refill(now)
                b.level += 1.0
                if b.level > b.capacity:
                    b.level = b.capacity
            if ticket.klass >= 0:
                s.admitted[ticket.klass] -= 1
        s.inflight -= 1
        if ticket.klass >= 0:
            s.class_inflight[ticket.klass] -= 1
        if s.queued or (s.pool is not None and s.pool.queued):
            self._dispatch(s, now)
        return self._take_outbox()

    def cancel(self, Ticket ticket not None, double now):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s
        if ticket.state != S_QUEUED:
            return False
        s = self._school(ticket.school)
        self.last_now = now
        self._unqueue(s, ticket)
        ticket.state = S_CANCELLED
        s.cancelled += 1
        return True

    def poll(self, double now):
        """See gateway/_native/scheduler.pyi."""
        cdef Ticket t
        cdef _School s
        cdef list expired = []
        self.last_now = now
        while self.delayed and self.delayed[0][0] <= now:
            t = heapq.heappop(self.delayed)[2]
            if t.state == S_QUEUED:
                s = self.schools[t.school]
                self._list(s, t)
                self.waiting.add(s)
        # In school order, not the set's (address) order: which school a
        # freed pool slot or refilled bucket serves first must not depend on
        # where objects happen to live in memory.
        for s in sorted(self.waiting, key=_school_index):
            if s.queued:
                self._dispatch(s, now)
            else:
                self.waiting.discard(s)
        while self.deadlines and self.deadlines[0][0] <= now:
            t = heapq.heappop(self.deadlines)[2]
            if t.state != S_QUEUED:
                self.stale -= 1
                continue
            s = self.schools[t.school]
            # Position first: it is the ticket's place in the line it leaves.
            t.position = self._position(s, t)
            self.stale -= 1  # its deadline entry is the one just popped
            self._unqueue(s, t)
            self._reject(s, t, now, "max_wait", self.reject_status[t.klass], -1.0)
            expired.append(t)
        if now >= self.next_sweep:
            self._sweep(now)
        return self._take_outbox(), expired

    def next_deadline(self):
        """See gateway/_native/scheduler.pyi."""
        cdef double when = INFINITY, due
        cdef _School s
        cdef TokenBucket b
        if self.outbox:
            return self.last_now
        while self.deadlines and (<Ticket>self.deadlines[0][2]).state != S_QUEUED:
            heapq.heappop(self.deadlines)
            self.stale -= 1
        if self.deadlines:
            when = self.deadlines[0][0]
        while self.delayed and (<Ticket>self.delayed[0][2]).state != S_QUEUED:
            heapq.heappop(self.delayed)
        if self.delayed and self.delayed[0][0] < when:
            when = self.delayed[0][0]
        for s in self.waiting:
            b = s.bucket
            # A bucket allotted no refill waits for a grant, not for time.
            if b is not None and s.queued and b.level < 1.0 and b.rate > 0.0:
                due = b.stamp + (1.0 - b.level) / b.rate
                # A token due by the last call is not what holds the school
                # back (a slot or the pool is); a release dispatches it, so
                # reporting it would only make the shell poll in vain.
                if due <= self.last_now:
                    continue
                if due < when:
                    when = due
        if self.has_clients and self.next_sweep < when:
            when = self.next_sweep
        return None if when == INFINITY else when

    def position(self, Ticket ticket not None):
        """See gateway/_native/scheduler.pyi."""
        if ticket.state != S_QUEUED:
            return 0
        return self._position(self._school(ticket.school), ticket)

    def estimated_wait(self, Ticket ticket not None, double now):
        """See gateway/_native/scheduler.pyi."""
        if ticket.state != S_QUEUED:
            return 0.0
        cdef _School s = self._school(ticket.school)
        return self._eta(s, self._position(s, ticket), now)

    def queue_eta(self, int school, int ahead, double now):
        """Seconds until `ahead` more admissions at the school's measured rate."""
        return self._eta(self._school(school), ahead, now)

    def queued(self, int school):
        """QUEUED tickets of the school (delayed ones included)."""
        return self._school(school).queued

    def ahead(self, int school, int klass, double arrived_at):
        """See gateway/_native/scheduler.pyi."""
        cdef _School s = self._school(school)
        self._check_class(klass)
        # A probe in the queue order, after every ticket with the same key.
        cdef Ticket probe = Ticket.__new__(Ticket)
        probe.key = arrived_at - self.priority[klass] * self.aging
        probe.arrived_at = arrived_at
        probe.seq = 0x7FFFFFFFFFFFFFFF
        cdef Py_ssize_t n = 0
        for q in s.queues:
            n += count_before(<list>q, probe)
        return n

    def free_slots(self, int school, double now):
        """Requests the school could admit right now with nobody queued."""
        cdef _School s = self._school(school)
        cdef double free = INFINITY
        if s.max_inflight != UNLIMITED:
            free = s.max_inflight - s.inflight
        if s.pool is not None and s.pool.max_inflight - s.pool.inflight < free:
            free = s.pool.max_inflight - s.pool.inflight
        if s.bucket is not None and s.bucket.wait(now, 1.0) > 0.0:
            free = 0.0
        elif s.bucket is not None and s.bucket.level < free:
            free = floor(s.bucket.level)
        free -= s.queued
        if free < 0:
            return 0
        return -1 if free == INFINITY else <long long>free

    def connection_open(self, int school):
        """Count a client connection; False (not counted) at max_connections."""
        cdef _School s = self._school(school)
        if s.connections >= s.max_connections:
            return False
        s.connections += 1
        return True

    def connection_close(self, int school):
        """Forget a connection counted by connection_open."""
        cdef _School s = self._school(school)
        if s.connections <= 0:
            raise ValueError(f"school {school} has no open connection")
        s.connections -= 1

    def reconfigure(self, schools, classes, pools=(), *, school_from, class_from,
                    pool_from=(), double aging=30.0, int min_retry=1, int max_retry=120,
                    double now=0.0):
        """See gateway/_native/scheduler.pyi."""
        # Built (and so validated) in full before anything here changes.
        cdef Scheduler fresh = Scheduler(schools, classes, pools, aging=aging,
                                         min_retry=min_retry, max_retry=max_retry, now=now)
        cdef _School s, old
        cdef Ticket t
        cdef TokenBucket b, nb
        cdef int i, j, k, k0, p
        cdef double* swap_d
        cdef int* swap_i
        cdef list rejected = [], shares = []
        school_from = list(school_from)
        class_from = list(class_from)
        pool_from = list(pool_from)
        cdef list school_to = _inverse("school_from", school_from, len(fresh.schools),
                                       len(self.schools))
        cdef list class_to = _inverse("class_from", class_from, fresh.n_classes, self.n_classes)
        cdef list pool_to = _inverse("pool_from", pool_from, len(fresh.pools), len(self.pools))
        for k in range(fresh.n_classes):
            k0 = class_from[k]
            shares.append(self.share[k0] if k0 >= 0 else 0.0)
        # Schools that continue keep their connections, counters, rate
        # estimate and tokens (a reload must not refill a bucket).
        for j in range(len(school_from)):
            i = school_from[j]
            if i < 0:
                continue
            old = self.schools[i]
            s = fresh.schools[j]
            s.connections = old.connections
            s.cancelled = old.cancelled
            s.admitted_gone = old.admitted_gone
            for k0 in range(self.n_classes):
                if class_to[k0] < 0:
                    s.admitted_gone += old.admitted[k0]
            s.rate_value = old.rate_value
            s.rate_stamp = old.rate_stamp
            s.rate_since = old.rate_since
            for k in range(fresh.n_classes):
                k0 = class_from[k]
                if k0 >= 0:
                    s.admitted[k] = old.admitted[k0]
                    s.rejected[k] = old.rejected[k0]
            if s.bucket is not None and old.bucket is not None:
                _carry_level(old.bucket, s.bucket, now)
            if s.client_rate > 0.0:
                for key, b in old.clients.items():
                    nb = TokenBucket(s.client_rate, s.client_burst, now)
                    _carry_level(b, nb, now)
                    s.clients[key] = nb
        # Queued tickets keep their arrival, deadline and place (re-keyed by
        # the new priorities); those whose school or class is gone end here.
        live = sorted([e[2] for e in self.deadlines if (<Ticket>e[2]).state == S_QUEUED],
                      key=_ticket_seq)
        for t in live:
            j = school_to[t.school]
            k = class_to[t.klass]
            if j < 0 or k < 0:
                t.state = S_REJECTED
                t.reason = "removed"
                t.reject_status = 503
                t.retry_after = fresh.min_retry
                t.position = 0
                t.listed = False
                rejected.append(t)
                continue
            s = fresh.schools[j]
            t.school = j
            t.klass = k
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
        # Held slots count where they now belong: their school (and its pool)
        # if it continues, else only the pool they held if that continues.
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
                t.school = -1
                t.klass = -1
                t.pool = fresh.pools[pool_to[p]] if p >= 0 and pool_to[p] >= 0 else None
            if t.pool is not None:
                t.pool.inflight += 1
                if t.klass >= 0:
                    t.pool.class_inflight[t.klass] += 1
        fresh.held = self.held
        for k in range(fresh.n_classes):
            fresh.set_share(k, shares[k] if shares[k] > 0.0 else None)
        # Take fresh's state; fresh frees the old arrays when it goes.
        swap_d = self.priority
        self.priority = fresh.priority
        fresh.priority = swap_d
        swap_d = self.max_wait
        self.max_wait = fresh.max_wait
        fresh.max_wait = swap_d
        swap_d = self.share
        self.share = fresh.share
        fresh.share = swap_d
        swap_i = self.reject_status
        self.reject_status = fresh.reject_status
        fresh.reject_status = swap_i
        self.n_classes = fresh.n_classes
        self.aging = fresh.aging
        self.min_retry = fresh.min_retry
        self.max_retry = fresh.max_retry
        self.pools = fresh.pools
        self.schools = fresh.schools
        self.waiting = fresh.waiting
        self.deadlines = fresh.deadlines
        self.delayed = fresh.delayed
        self.held = fresh.held
        self.stale = 0
        self.last_now = now
        self.has_clients = False
        for s in self.schools:
            if s.clients:
                self.has_clients = True
        return rejected

    def stats(self, int school, double now):
        """Counters for one school; per-class values are lists by class index."""
        cdef _School s = self._school(school)
        cdef int k
        queued = [len(q) for q in s.queues]
        for _, _, t in self.delayed:
            if (<Ticket>t).state == S_QUEUED and (<Ticket>t).school == school:
                queued[(<Ticket>t).klass] += 1
        return {
            "inflight": s.inflight,
            "connections": s.connections,
            "queued": queued,
            "inflight_by_class": [s.class_inflight[k] for k in range(self.n_classes)],
            "admitted": [s.admitted[k] for k in range(self.n_classes)],
            "rejected": [s.rejected[k] for k in range(self.n_classes)],
            "cancelled": s.cancelled,
            "admission_rate": s.rate(now),
            "pool_inflight": None if s.pool is None else s.pool.inflight,
            "client_buckets": len(s.clients),
        }

    # -- internals ----------------------------------------------------------

    cdef _School _school(self, int school):
        if not 0 <= school < len(self.schools):
            raise IndexError(f"no school {school}")
        return <_School>self.schools[school]

    cdef void _check_class(self, int klass) except *:
        if not 0 <= klass < self.n_classes:
            raise IndexError(f"no class {klass}")

    cdef list _take_outbox(self):
        cdef list out = self.outbox
        self.outbox = []
        return out

    cdef bint _school_room(self, _School s, double now) noexcept:
        if s.inflight >= s.max_inflight:
            return False
        if s.bucket is not None and s.bucket.wait(now, 1.0) > 0.0:
            return False
        return True

    cdef bint _class_room(self, _School s, int klass) noexcept:
        cdef _Pool p = s.pool
        if p is not None and 0 <= p.class_limit[klass] <= p.class_inflight[klass]:
            return False
        return s.class_limit[klass] < 0 or s.class_inflight[klass] < s.class_limit[klass]

    cdef void _pool_class_limits(self, _Pool p) noexcept:
        """Each class's slot limit over the whole pool: its allotted slots
        (set_pool_class_allotment), else its share of the pool's allotment
        (at least one slot); none while the class has no share."""
        cdef int k, limit
        for k in range(self.n_classes):
            if self.share[k] == 0.0:
                limit = -1
            elif p.class_fixed[k] >= 0:
                limit = p.class_fixed[k]
            else:
                limit = <int>floor(self.share[k] * p.max_inflight + 1e-9)
                if limit < 1:
                    limit = 1
            p.class_limit[k] = limit

    cdef void _class_limits(self, _School s) noexcept:
        """Each class's slot limit at the school: its allotted slots
        (set_class_allotment), else its share of the school's allotted slots
        (of its pool's when the school has no own limit)."""
        cdef int k, limit
        cdef int cap = s.capacity()
        cdef double share
        for k in range(self.n_classes):
            share = self.share[k]
            if share == 0.0:
                limit = -1
            elif s.class_fixed[k] >= 0:
                limit = s.class_fixed[k]  # this participant's lease of the class
            elif cap < 0:
                limit = -1
            else:
                # At least one slot, so a limited class still moves.
                limit = <int>floor(share * cap + 1e-9)
                if limit < 1:
                    limit = 1
            s.class_limit[k] = limit

    cdef bint _admit_at_once(self, _School s, Ticket t, double now) except -1:
        # Only when nobody could be ahead: an empty school queue and, in a
        # pool, no school waiting for a pool slot (fair sharing decides then).
        if s.queued:
            return False
        if s.pool is not None and (s.pool.queued or s.pool.inflight >= s.pool.max_inflight):
            return False
        if not self._school_room(s, now) or not self._class_room(s, t.klass):
            return False
        self._admit(s, t, now)
        return True

    cdef void _admit(self, _School s, Ticket t, double now) except *:
        if s.bucket is not None:
            s.bucket.take(now, 1.0)
        t.state = S_ADMITTED
        t.held = True
        self.held.add(t)
        s.inflight += 1
        s.class_inflight[t.klass] += 1
        if s.pool is not None:
            t.pool = s.pool
            s.pool.inflight += 1
            s.pool.class_inflight[t.klass] += 1
        s.admitted[t.klass] += 1
        s.count_admission(now)

    cdef Ticket _best(self, _School s, double now):
        """The eligible ticket the school would admit next, or None."""
        cdef Ticket best = None, head
        cdef int k
        cdef list q
        if not self._school_room(s, now):
            return None
        for k in range(self.n_classes):
            q = <list>s.queues[k]
            if q and self._class_room(s, k):
                head = <Ticket>q[0]
                if best is None or before(head, best):
                    best = head
        return best

    cdef void _dispatch(self, _School s, double now) except *:
        cdef Ticket t
        if s.pool is not None:
            self._dispatch_pool(s.pool, now)
            return
        while s.queued:
            t = self._best(s, now)
            if t is None:
                break
            self._take_from_queue(s, t, now)

    cdef void _dispatch_pool(self, _Pool pool, double now) except *:
        cdef _School s, pick
        cdef Ticket t, pick_t
        cdef double load, pick_load
        while pool.inflight < pool.max_inflight:
            pick = None
            pick_t = None
            pick_load = INFINITY
            for s in pool.members:
                if not s.queued:
                    continue
                t = self._best(s, now)
                if t is None:
                    continue
                load = s.inflight / s.weight
                if load < pick_load or (load == pick_load and before(t, pick_t)):
                    pick, pick_t, pick_load = s, t, load
            if pick is None:
                break
            self._take_from_queue(pick, pick_t, now)

    cdef void _take_from_queue(self, _School s, Ticket t, double now) except *:
        self._unqueue(s, t)
        self._admit(s, t, now)
        self.outbox.append(t)

    cdef void _list(self, _School s, Ticket t) except *:
        cdef list q = <list>s.queues[t.klass]
        if not q or before(<Ticket>q[len(q) - 1], t):
            q.append(t)  # the common case: arrivals come in order
        else:
            q.insert(count_before(q, t), t)
        t.listed = True

    cdef void _unqueue(self, _School s, Ticket t) except *:
        cdef list q
        cdef Py_ssize_t i
        if t.listed:
            q = <list>s.queues[t.klass]
            i = count_before(q, t)
            del q[i]
            t.listed = False
        # Its heap entries stay behind and are dropped when they surface, or
        # all at once when they make up half the deadline heap.
        self.stale += 1
        s.queued -= 1
        if s.pool is not None:
            s.pool.queued -= 1
        if self.stale > 64 and 2 * self.stale > len(self.deadlines):
            self._compact()

    cdef void _compact(self) except *:
        self.deadlines = [e for e in self.deadlines if (<Ticket>e[2]).state == S_QUEUED]
        self.delayed = [e for e in self.delayed if (<Ticket>e[2]).state == S_QUEUED]
        heapq.heapify(self.deadlines)
        heapq.heapify(self.delayed)
        self.stale = 0

    cdef int _position(self, _School s, Ticket t) except -1:
        cdef Py_ssize_t ahead = 0
        for q in s.queues:
            ahead += count_before(<list>q, t)
        return <int>ahead + 1

    cdef double _eta(self, _School s, double ahead, double now) noexcept:
        cdef double rate = s.rate(now)
        if rate <= 0.0:
            return <double>self.max_retry
        return ahead / rate

    cdef int _retry(self, double seconds) noexcept:
        if not seconds <= self.max_retry:  # also catches inf and nan
            return self.max_retry
        if seconds <= self.min_retry:
            return self.min_retry
        return <int>ceil(seconds)

    cdef void _reject(self, _School s, Ticket t, double now, str reason, int status,
                      double wait) except *:
        t.state = S_REJECTED
        t.reason = reason
        t.reject_status = status
        if wait < 0.0:
            wait = self._eta(s, t.position if t.position else s.queued + 1, now)
        t.retry_after = self._retry(wait)
        s.rejected[t.klass] += 1

    cdef void _sweep(self, double now) except *:
        cdef _School s
        self.has_clients = False
        for s in self.schools:
            if s.clients:
                for key in [k for k, b in s.clients.items() if b.idle(now)]:
                    del s.clients[key]
                self.has_clients = self.has_clients or bool(s.clients)
        self.next_sweep = now + SWEEP_EVERY


def _school_index(_School s):
    """Sort key of the schools waiting for a poll: their config index."""
    return s.index
