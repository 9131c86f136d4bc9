# Declarations for native/stats.pyx, built as gateway._native.stats
# (documented in gateway/_native/stats.pyi).

cdef class Stats:
    # Slots: a school or class name gets one the first time a layout names
    # it and keeps it for the worker's life (slot 0: no school / no class).
    cdef int n_schools
    cdef int n_classes
    cdef list school_names
    cdef list class_names
    # Current config index -> slot (set_layout); index -1 maps to slot 0.
    cdef int* school_slot
    cdef int n_school_index
    cdef int* class_slot
    cdef int n_class_index
    # Status code -> code slot (-1: not seen yet); the codes seen, in order.
    cdef short code_slot[600]
    cdef int codes[64]
    cdef int n_codes
    # [school][class][code] request counts.
    cdef long long* requests
    # [school][class][bucket] histogram counts (not cumulative; the last
    # bucket is +Inf) and [school][class] sums, in seconds.
    cdef long long* duration
    cdef double* duration_sum
    cdef long long* wait
    cdef double* wait_sum
    # [school][class][kind] gateway-made refusals (PAGE_WAITING, PAGE_429).
    cdef long long* pages

    cdef void record(self, int school, int klass, int status, double duration,
                     double wait) noexcept
    cdef int _grow(self, int n_schools, int n_classes) except -1
