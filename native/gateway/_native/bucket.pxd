# Declarations for native/bucket.pyx, which setup.py builds as gateway._native.bucket.
#
# Cython looks a module's .pxd up by its qualified name, so the file sits in
# a package-shaped tree under the include path (native/) rather than next to
# the .pyx; scheduler.pyx cimports TokenBucket through the same name.

cdef class TokenBucket:
    # Tokens added per second (0 in a limited bucket: no refill, see retune).
    cdef readonly double rate
    # Most tokens the bucket holds (the burst); infinite for a bucket made
    # with rate 0, which is unlimited for life (level infinite too).
    cdef readonly double capacity
    # Tokens held at `stamp`; negative while reservations are outstanding.
    cdef double level
    cdef double stamp

    cdef void refill(self, double now) noexcept
    cdef bint take(self, double now, double n) noexcept
    cdef double wait(self, double now, double n) noexcept
    cdef double reserve_c(self, double now, double n, double max_wait) noexcept
    # Allotment changes: a new rate and capacity from now on; tokens put in
    # or taken out, up to the capacity / down to 0 (returns the amount moved).
    cdef void retune(self, double now, double rate, double capacity) noexcept
    cdef double deposit_c(self, double now, double n) noexcept
    cdef double withdraw_c(self, double now, double n) noexcept
