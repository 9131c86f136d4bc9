"""Token bucket with an injected clock (the admission rate limits).

A bucket holds up to `capacity` tokens and gains `rate` tokens a second. The
level is only brought up to date when the bucket is used, so an idle bucket
costs nothing. A clock that steps backwards is ignored (the stamp only moves
forward), so a bucket can never mint tokens out of a clock jump.

A bucket made with rate 0 is unlimited for its whole life: its capacity and
level are infinite, so the same arithmetic always succeeds and the hot path
needs no test for it. A limited bucket
can be retuned (set_rate) and topped up or drained by hand (deposit,
withdraw): the admission allotment, where the school's part of a shared rate
changes while it runs, and where tokens may come as grants from elsewhere
(a retuned rate of 0 then means "no refill here", not "unlimited").
"""

from libc.math cimport INFINITY

# Seconds of refill granted ahead: a caller that waits exactly time_until()
# must then succeed, or a timer armed for that instant would fire, find
# nothing and re-arm for "now". Unix times near 2e9 carry ~0.24 us of
# rounding, so one microsecond covers it while over-granting nothing visible.
cdef double EARLY = 1e-6


cdef inline double _capacity(double rate, long long burst) noexcept:
    if burst > 0:
        return <double>burst
    # burst 0: one second's worth, so a configured rate alone works.
    return rate if rate > 1.0 else 1.0


cdef int _check_amount(double n) except -1:
    if not 0.0 <= n < INFINITY:
        raise ValueError(f"a token amount must be finite and >= 0, got {n}")
    return 0


cdef class TokenBucket:

    def __init__(self, double rate, long long burst, double now):
        if rate < 0 or rate != rate:
            raise ValueError(f"rate must be >= 0, got {rate}")
        if burst < 0:
            raise ValueError(f"burst must be >= 0, got {burst}")
        self.rate = rate
        self.capacity = INFINITY if rate == 0.0 else _capacity(rate, burst)
        self.level = self.capacity
        self.stamp = now

    @property
    def unlimited(self):
        return self.capacity == INFINITY

    cdef void refill(self, double now) noexcept:
        if now > self.stamp:
            self.level += (now - self.stamp) * self.rate
            if self.level > self.capacity:
                self.level = self.capacity
            self.stamp = now

    cdef bint take(self, double now, double n) noexcept:
        self.refill(now)
        if self.level + self.rate * EARLY >= n:
            self.level -= n
            return True
        return False

    cdef double wait(self, double now, double n) noexcept:
        if n > self.capacity:
            return INFINITY
        self.refill(now)
        if self.level + self.rate * EARLY >= n:
            return 0.0
        if self.rate == 0.0:
            return INFINITY  # retuned to no refill: only a deposit helps
        return (n - self.level) / self.rate

    cdef double reserve_c(self, double now, double n, double max_wait) noexcept:
        cdef double delay = self.wait(now, n)
        if delay > max_wait:
            return -1.0
        self.level -= n  # an unlimited bucket's infinite level stays infinite
        return delay

    cdef void retune(self, double now, double rate, double capacity) noexcept:
        # What accrued so far accrued at the old rate; the stamp never moves
        # back, and the level is only ever capped, so retuning mints nothing.
        self.refill(now)
        self.rate = rate
        self.capacity = capacity
        if self.level > capacity:
            self.level = capacity

    cdef double deposit_c(self, double now, double n) noexcept:
        self.refill(now)
        cdef double room = self.capacity - self.level
        if room <= 0.0:
            return 0.0
        if n > room:
            n = room
        self.level += n
        return n

    cdef double withdraw_c(self, double now, double n) noexcept:
        self.refill(now)
        if self.level <= 0.0:
            return 0.0
        if n > self.level:
            n = self.level
        self.level -= n
        return n

    def try_take(self, double now, double n=1.0):
        return self.take(now, n)

    def time_until(self, double now, double n=1.0):
        return self.wait(now, n)

    def reserve(self, double now, double n=1.0, double max_wait=INFINITY):
        return self.reserve_c(now, n, max_wait)

    def set_rate(self, double now, double rate, long long burst):
        if self.unlimited:
            raise ValueError("an unlimited bucket (made with rate 0) has no rate to set")
        if rate < 0 or rate != rate or rate == INFINITY:
            raise ValueError(f"rate must be finite and >= 0, got {rate}")
        if burst < 0:
            raise ValueError(f"burst must be >= 0, got {burst}")
        self.retune(now, rate, _capacity(rate, burst))

    def deposit(self, double now, double n):
        _check_amount(n)
        return 0.0 if self.unlimited else self.deposit_c(now, n)

    def withdraw(self, double now, double n):
        _check_amount(n)
        return 0.0 if self.unlimited else self.withdraw_c(now, n)

    def tokens(self, double now):
        self.refill(now)
        return self.level

    def idle(self, double now):
        self.refill(now)
        return self.level >= self.capacity

    def __repr__(self):
        return (f"TokenBucket(rate={self.rate!r}, capacity={self.capacity!r}, "
                f"level={self.level!r})")
