# Declarations for native/scheduler.pyx, which setup.py builds as gateway._native.scheduler.
#
# Cython looks a module's .pxd up by its qualified name, so the file sits in
# a package-shaped tree under the include path (native/) rather than next to
# the .pyx; scheduler.pyx cimports TokenBucket through the same name.

from gateway._native.bucket cimport TokenBucket


cdef class _Pool:
    # The pool's allotment: its config limit until set_pool_allotment.
    cdef int max_inflight
    cdef int inflight
    # QUEUED tickets over all member schools.
    cdef int queued
    cdef list members
    cdef int index
    # Per class, malloc'd: slots held over the member schools, the pool-wide
    # slot limit (-1 none) and the class's allotted slots here (-1: derived
    # from its share of the pool's allotment; see set_pool_class_allotment).
    cdef int n_classes
    cdef int* class_inflight
    cdef int* class_limit
    cdef int* class_fixed


cdef class Ticket:
    cdef readonly int state
    cdef readonly int school
    cdef readonly int klass
    cdef readonly double arrived_at
    cdef readonly double deadline
    cdef readonly int reject_status
    cdef readonly int retry_after
    cdef readonly str reason
    # Place in line when the ticket was rejected (0 otherwise).
    cdef readonly int position
    cdef readonly long long seq
    # The shell's slot (its resume callback); the scheduler never reads it.
    cdef public object user
    # Queue order: arrival pushed back by priority * aging (see invariants).
    cdef double key
    # A client-bucket reservation: not eligible before this time.
    cdef double not_before
    # True while the ticket holds an inflight slot (admitted, not released).
    cdef bint held
    # The pool whose slot a held ticket counts in (None: no pool).
    cdef _Pool pool
    # True while the ticket sits in its class queue (False while delayed).
    cdef bint listed


cdef class _School:
    cdef int index
    # The school's allotment (the limits enforced here): its config limits
    # until set_allotment; UNLIMITED (INT_MAX) where there is no limit, so
    # the hot path compares once.
    cdef int max_inflight
    cdef int max_connections
    cdef int max_queue
    cdef int connections
    cdef int inflight
    # QUEUED tickets, delayed ones included.
    cdef int queued
    cdef double weight
    cdef _Pool pool
    cdef TokenBucket bucket
    cdef double client_rate
    cdef long long client_burst
    cdef dict clients
    # One list per class, each sorted by queue order.
    cdef list queues
    # Per class, malloc'd: slots held, slot limit (-1 none), counters.
    cdef int n_classes
    cdef int* class_inflight
    cdef int* class_limit
    cdef long long* admitted
    cdef long long* rejected
    cdef long long cancelled
    # Admission-rate estimator (events/s, exponentially decayed).
    cdef double rate_value
    cdef double rate_stamp
    cdef double rate_since
    # Admissions counted under classes a reload removed (usage() stays
    # monotonic across reloads). Last: the fields above keep their offsets.
    cdef long long admitted_gone
    # Per class, malloc'd: the class's allotted slots here (-1: derived from
    # its share of the school's allotted slots; set_class_allotment).
    cdef int* class_fixed
    # What a new client bucket starts with here (client_cap_here 0: the
    # config's client_rate and client_burst; set_allotment client_rate/burst).
    cdef double client_rate_here
    cdef double client_cap_here

    cdef double rate(self, double now) noexcept
    cdef void count_admission(self, double now) noexcept
    cdef int capacity(self) noexcept


cdef class Scheduler:
    cdef list schools
    cdef list pools
    cdef int n_classes
    cdef double* priority
    cdef double* max_wait
    cdef int* reject_status
    cdef double* share
    cdef double aging
    cdef int min_retry
    cdef int max_retry
    cdef long long seq
    cdef double last_now
    # Schools with QUEUED tickets.
    cdef set waiting
    # (deadline, seq, ticket) and (not_before, seq, ticket) heaps; entries of
    # tickets no longer QUEUED are dropped lazily, counted in `stale`.
    cdef list deadlines
    cdef list delayed
    cdef long long stale
    # Tickets admitted as a side effect of a call that returns one ticket.
    cdef list outbox
    cdef double next_sweep
    # Some school holds client buckets (so a sweep is due eventually).
    cdef bint has_clients
    # Tickets holding a slot (held): what a reconfigure carries over.
    cdef set held

    cdef _School _school(self, int school)
    cdef void _check_class(self, int klass) except *
    cdef list _take_outbox(self)
    cdef bint _school_room(self, _School s, double now) noexcept
    cdef bint _class_room(self, _School s, int klass) noexcept
    cdef void _class_limits(self, _School s) noexcept
    cdef void _pool_class_limits(self, _Pool p) noexcept
    cdef list _class_queued(self, _School s)
    cdef bint _admit_at_once(self, _School s, Ticket t, double now) except -1
    cdef void _admit(self, _School s, Ticket t, double now) except *
    cdef Ticket _best(self, _School s, double now)
    cdef void _dispatch(self, _School s, double now) except *
    cdef void _dispatch_pool(self, _Pool pool, double now) except *
    cdef void _take_from_queue(self, _School s, Ticket t, double now) except *
    cdef void _list(self, _School s, Ticket t) except *
    cdef void _unqueue(self, _School s, Ticket t) except *
    cdef void _compact(self) except *
    cdef int _position(self, _School s, Ticket t) except -1
    cdef double _eta(self, _School s, double ahead, double now) noexcept
    cdef int _retry(self, double seconds) noexcept
    cdef void _reject(self, _School s, Ticket t, double now, str reason, int status,
                      double wait) except *
    cdef void _sweep(self, double now) except *
