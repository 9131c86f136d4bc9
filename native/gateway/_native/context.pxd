# Declarations for native/context.pyx, built as gateway._native.context
# (documented in gateway/_native/context.pyi).

from gateway._native.head cimport RequestHead
from gateway._native.router cimport Classifier, Router
from gateway._native.scheduler cimport Scheduler
from gateway._native.stats cimport Stats


cdef class AdmissionCore:
    cdef public bint enabled
    cdef public object shell          # gateway.proxy.admission.Admission
    cdef public object controller     # gateway.admission.AdmissionController
    cdef public Scheduler scheduler
    # The worker's request counters (Exchange._count; outlives reloads).
    cdef public Stats stats
    # The controller's `held` set: schools whose requests and releases go
    # through the shell (AdmissionController.hold_fast_path).
    cdef public set held


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
    # Per-request routing (route): Host -> school, request -> class.
    cdef public Router router
    cdef public Classifier classifier
    cdef public list schools          # SchoolRuntime per school index
    cdef public int fallback_class    # the class of a request no class matches
    cdef public bytes status_path     # served by the admission shell (App.route)
    cdef public dict names            # where `Exchange` is resolved: gateway.proxy.app's globals
    # A reload replaced this config (App.successor is set): App.route routes.
    cdef public bint superseded
    # Request heads routed by this config, and per school (the /metrics counters).
    cdef public long long requests_total
    cdef long long* _school_requests
    cdef Py_ssize_t _n_schools

    cdef object route(self, object client, RequestHead head, int conn_school,
                      bint trusted_peer)
    cpdef count_request(self, int school)
    cpdef long long school_requests(self, int school) except -1


cdef double wall_clock() noexcept
cdef bint may_carry_cookie(list headers, bytes name)
