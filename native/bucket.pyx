"""Token bucket with an injected clock (the admission rate limits).

A bucket holds up to `capacity` tokens and gains `rate` tokens a second. The
level is only brought up to date when the bucket is used, so an idle bucket
costs nothing. A clock that steps backwards is ignored (the stamp only moves
forward), so a bucket can never mint tokens out of a clock jump.
"""

from libc.math cimport INFINITY

# Seconds of refill granted ahead: a caller that waits exactly time_until()
# must then succeed, or a timer armed for that instant would fire, find
# nothing and re-arm for "now". Unix times near 2e9 carry ~0.24 us of
# rounding, so one microsecond covers it while over-granting nothing visible.
cdef double EARLY = 1e-6


cdef class TokenBucket:

    def __init__(self, double rate, long long burst, double now):
        if rate < 0 or rate != rate:
            raise ValueError(f"rate must be >= 0, got {rate}")
        if burst < 0:
            raise ValueError(f"burst must be >= 0, got {burst}")
        self.rate = rate
        if burst > 0:
            self.capacity = <double>burst
        else:
            # burst 0: one second's worth, so a configured rate alone works.
            self.capacity = rate if rate > 1.0 else 1.0
        self.level = self.capacity
        self.stamp = now

    cdef void refill(self, double now) noexcept:
        if now > self.stamp:
            self.level += (now - self.stamp) * self.rate
            if self.level > self.capacity:
                self.level = self.capacity
            self.stamp = now

    cdef bint take(self, double now, double n) noexcept:
        if self.rate == 0.0:
            return True
        self.refill(now)
        if self.level + self.rate * EARLY >= n:
            self.level -= n
            return True
        return False

    cdef double wait(self, double now, double n) noexcept:
        if self.rate == 0.0:
            return 0.0
        if n > self.capacity:
            return INFINITY
        self.refill(now)
        if self.level + self.rate * EARLY >= n:
            return 0.0
        return (n - self.level) / self.rate

    cdef double reserve_c(self, double now, double n, double max_wait) noexcept:
        cdef double delay = self.wait(now, n)
        if delay > max_wait:
            return -1.0
        if self.rate != 0.0:
            self.level -= n
        return delay

    def try_take(self, double now, double n=1.0):
        return self.take(now, n)

    def time_until(self, double now, double n=1.0):
        return self.wait(now, n)

    def reserve(self, double now, double n=1.0, double max_wait=INFINITY):
        return self.reserve_c(now, n, max_wait)

    def tokens(self, double now):
        if self.rate == 0.0:
            return INFINITY
        self.refill(now)
        return self.level

    def idle(self, double now):
        if self.rate == 0.0:
            return True
        self.refill(now)
        return self.level >= self.capacity

    def __repr__(self):
        return (f"TokenBucket(rate={self.rate!r}, capacity={self.capacity!r}, "
                f"level={self.level!r})")
