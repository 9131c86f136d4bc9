# Declarations for native/context.pyx, built as gateway._native.context
# (documented in gateway/_native/context.pyi).

from gateway._native.scheduler cimport Scheduler
from gateway._native.stats cimport Stats


cdef class AdmissionCore:
    cdef public bint enabled
    cdef public object shell          # gateway.proxy.admission.Admission
    cdef public object controller     # gateway.admission.AdmissionController
    cdef public Scheduler scheduler
    # The worker's request counters (Exchange._count; outlives reloads).
    cdef public Stats stats


cdef class Context:
    cdef public object app
    cdef public AdmissionCore core
    cdef public bytes via
    cdef public bint draining
    cdef public bint reject_underscore
    cdef public Py_ssize_t max_request_line
    cdef public Py_ssize_t max_headers
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t head_budget
    cdef public long long max_body
    cdef public Py_ssize_t max_pipeline
    cdef public Py_ssize_t max_buffer
    cdef public Py_ssize_t max_chunk_ext
    cdef public double header_timeout
    cdef public double keepalive_timeout
    cdef public double client_body_timeout
    cdef public double upstream_read_timeout
    cdef public double tunnel_idle_timeout
    cdef public double client_send_timeout
    cdef public str temp_dir


cdef double wall_clock() noexcept
cdef bint may_carry_cookie(list headers, bytes name)
