"""Per-worker request counters and histograms in C arrays: what an
exchange adds at its end (Exchange._count), without a Python call.

The admin process (gateway/server/telemetry.py) receives exports of these
from every worker and publishes them through prometheus_client; nothing
here knows about Prometheus. Stub: gateway/_native/stats.pyi.
"""

from libc.stdlib cimport calloc, free

# Histogram upper bounds, seconds (Prometheus `le`); a last bucket is +Inf.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Kinds of refusal counted by count_page.
PAGE_WAITING = 0
PAGE_429 = 1
# Status codes counted apart; any further code is counted under CODE_OTHER.
MAX_CODES = 64
CODE_OTHER = 0

DEF ND = 13
DEF NW = 12
DEF NKINDS = 2
DEF NCODES = 64

cdef double[ND] _dur_le = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                           30.0, 60.0]
cdef double[NW] _wait_le = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                            120.0]


cdef inline int _bucket(const double* bounds, int n, double value) noexcept:
    cdef int i = 0
    while i < n and value > bounds[i]:
        i += 1
    return i


cdef class Stats:
    """See gateway/_native/stats.pyi."""

    def __cinit__(self):
        cdef int i
        self.n_schools = 0
        self.n_classes = 0
        self.school_names = []
        self.class_names = []
        self.school_slot = NULL
        self.class_slot = NULL
        self.n_school_index = 0
        self.n_class_index = 0
        for i in range(600):
            self.code_slot[i] = -1
        self.n_codes = 0
        self.requests = NULL
        self.duration = NULL
        self.duration_sum = NULL
        self.wait = NULL
        self.wait_sum = NULL
        self.pages = NULL

    def __init__(self, schools=(), classes=()):
        self.set_layout(list(schools), list(classes))

    def __dealloc__(self):
        free(self.school_slot)
        free(self.class_slot)
        free(self.requests)
        free(self.duration)
        free(self.duration_sum)
        free(self.wait)
        free(self.wait_sum)
        free(self.pages)

    def set_layout(self, list schools, list classes):
        """See gateway/_native/stats.pyi."""
        cdef int i
        cdef int* sslot
        cdef int* cslot
        names = self.school_names
        cnames = self.class_names
        slots = _slots(names, schools)
        cslots = _slots(cnames, classes)
        self._grow(len(names), len(cnames))
        sslot = <int*>calloc(len(slots) + 1, sizeof(int))
        cslot = <int*>calloc(len(cslots) + 1, sizeof(int))
        if sslot == NULL or cslot == NULL:
            free(sslot)
            free(cslot)
            raise MemoryError()
        for i in range(len(slots)):
            sslot[i] = slots[i]
        for i in range(len(cslots)):
            cslot[i] = cslots[i]
        free(self.school_slot)
        free(self.class_slot)
        self.school_slot = sslot
        self.class_slot = cslot
        self.n_school_index = len(slots)
        self.n_class_index = len(cslots)

    cdef int _grow(self, int n_schools, int n_classes) except -1:
        # Reallocate every array for the larger shape, each old cell copied
        # to the same (school, class) slot.
        cdef int s, c, k, os_ = self.n_schools, oc = self.n_classes
        if n_schools == os_ and n_classes == oc:
            return 0
        cdef long long* req = <long long*>calloc(n_schools * n_classes * NCODES, sizeof(long long))
        cdef long long* dur = <long long*>calloc(n_schools * n_classes * (ND + 1), sizeof(long long))
        cdef double* dsum = <double*>calloc(n_schools * n_classes, sizeof(double))
        cdef long long* wt = <long long*>calloc(n_schools * n_classes * (NW + 1), sizeof(long long))
        cdef double* wsum = <double*>calloc(n_schools * n_classes, sizeof(double))
        cdef long long* pg = <long long*>calloc(n_schools * n_classes * NKINDS, sizeof(long long))
        if req == NULL or dur == NULL or dsum == NULL or wt == NULL or wsum == NULL or pg == NULL:
            free(req)
            free(dur)
            free(dsum)
            free(wt)
            free(wsum)
            free(pg)
            raise MemoryError()
        for s in range(os_):
            for c in range(oc):
                for k in range(NCODES):
                    req[(s * n_classes + c) * NCODES + k] = self.requests[(s * oc + c) * NCODES + k]
                for k in range(ND + 1):
                    dur[(s * n_classes + c) * (ND + 1) + k] = \
                        self.duration[(s * oc + c) * (ND + 1) + k]
                for k in range(NW + 1):
                    wt[(s * n_classes + c) * (NW + 1) + k] = self.wait[(s * oc + c) * (NW + 1) + k]
                for k in range(NKINDS):
                    pg[(s * n_classes + c) * NKINDS + k] = self.pages[(s * oc + c) * NKINDS + k]
                dsum[s * n_classes + c] = self.duration_sum[s * oc + c]
                wsum[s * n_classes + c] = self.wait_sum[s * oc + c]
        free(self.requests)
        free(self.duration)
        free(self.duration_sum)
        free(self.wait)
        free(self.wait_sum)
        free(self.pages)
        self.requests = req
        self.duration = dur
        self.duration_sum = dsum
        self.wait = wt
        self.wait_sum = wsum
        self.pages = pg
        self.n_schools = n_schools
        self.n_classes = n_classes
        return 0

    cdef void record(self, int school, int klass, int status, double duration,
                     double wait) noexcept:
        """One finished exchange: school and class are config indices (-1:
        none), status its response's code, duration and wait in seconds
        (wait < 0: it never waited for a slot, not observed)."""
        cdef int s = 0, c = 0, code, cell
        if 0 <= school < self.n_school_index:
            s = self.school_slot[school]
        if 0 <= klass < self.n_class_index:
            c = self.class_slot[klass]
        if 0 <= status < 600:
            code = self.code_slot[status]
            if code < 0:
                if self.n_codes < NCODES - 1:
                    # Slot 0 is CODE_OTHER; a code gets the next slot.
                    self.n_codes += 1
                    code = self.n_codes
                    self.codes[code] = status
                else:
                    code = 0
                self.code_slot[status] = code
        else:
            code = 0
        cell = s * self.n_classes + c
        self.requests[cell * NCODES + code] += 1
        if duration < 0.0:
            duration = 0.0
        self.duration[cell * (ND + 1) + _bucket(_dur_le, ND, duration)] += 1
        self.duration_sum[cell] += duration
        if wait >= 0.0:
            self.wait[cell * (NW + 1) + _bucket(_wait_le, NW, wait)] += 1
            self.wait_sum[cell] += wait

    def add(self, int school, int klass, int status, double duration, double wait=-1.0):
        """See gateway/_native/stats.pyi."""
        self.record(school, klass, status, duration, wait)

    def count_page(self, int school, int klass, int kind):
        """See gateway/_native/stats.pyi."""
        cdef int s = 0, c = 0
        if not 0 <= kind < NKINDS:
            raise ValueError(f"no page kind {kind}")
        if 0 <= school < self.n_school_index:
            s = self.school_slot[school]
        if 0 <= klass < self.n_class_index:
            c = self.class_slot[klass]
        self.pages[(s * self.n_classes + c) * NKINDS + kind] += 1

    def export(self):
        """See gateway/_native/stats.pyi."""
        cdef int s, c, k, cell
        cdef long long n
        requests = []
        duration = []
        wait = []
        pages = []
        for s in range(self.n_schools):
            school = self.school_names[s]
            for c in range(self.n_classes):
                klass = self.class_names[c]
                cell = s * self.n_classes + c
                for k in range(self.n_codes + 1):
                    n = self.requests[cell * NCODES + k]
                    if n:
                        requests.append((school, klass, self.codes[k] if k else CODE_OTHER, n))
                _histogram(duration, school, klass, self.duration + cell * (ND + 1), ND + 1,
                           self.duration_sum[cell])
                _histogram(wait, school, klass, self.wait + cell * (NW + 1), NW + 1,
                           self.wait_sum[cell])
                for k in range(NKINDS):
                    n = self.pages[cell * NKINDS + k]
                    if n:
                        pages.append((school, klass, k, n))
        return {"requests": requests, "duration": duration, "wait": wait, "pages": pages}


cdef list _slots(list names, list current):
    """Each of `current`'s names as its slot in `names`, the names a worker
    has counted under in its life: a name not seen before is appended (slot
    0 is "", for requests of no school or class). Slots never move, so a
    reload that renumbers keeps every count with its name."""
    if not names:
        names.append("")
    known = {n: k for k, n in enumerate(names)}
    slots = []
    for name in current:
        if name not in known:
            known[name] = len(names)
            names.append(name)
        slots.append(known[name])
    return slots


cdef _histogram(list out, school, klass, long long* counts, int n, double total_sum):
    """Append (school, class, bucket counts, sum) to `out` for one cell of a
    histogram (`n` buckets, the last one +Inf), unless nothing was counted."""
    cdef int k
    cdef long long total = 0
    for k in range(n):
        total += counts[k]
    if total:
        out.append((school, klass, [counts[k] for k in range(n)], total_sum))
