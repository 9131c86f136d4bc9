# Declarations for native/bucket.pyx, which setup.py builds as gateway._native.bucket.
#
# Cython looks a module's .pxd up by its qualified name, so the file sits in
# a package-shaped tree under the include path (native/) rather than next to
# the .pyx; scheduler.pyx cimports TokenBucket through the same name.

cdef class TokenBucket:
    # Tokens added per second; 0 means unlimited (every take succeeds).
    cdef readonly double rate
    # Most tokens the bucket holds (the burst).
    cdef readonly double capacity
    # Tokens held at `stamp`; negative while reservations are outstanding.
    cdef double level
    cdef double stamp

    cdef void refill(self, double now) noexcept
    cdef bint take(self, double now, double n) noexcept
    cdef double wait(self, double now, double n) noexcept
    cdef double reserve_c(self, double now, double n, double max_wait) noexcept
