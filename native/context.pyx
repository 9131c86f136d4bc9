"""The typed native context of one App (one config) and the worker's
admission core: what the proxy's cdef classes read per request, as C
fields instead of attribute lookups on Python objects.

App (gateway/proxy/app.py) builds a Context from its config at start and on
reload; a client connection holds the Context of its App and moves to the
new one with the App (App._move). The AdmissionCore belongs to the worker's
one Admission shell and outlives reloads like it: it lets an exchange ask
the native Scheduler for a slot, and give it back, without a Python frame
when nothing needs the shell (see Exchange.start and _finish).

Context.route routes an ordinary request (Host -> school, request -> class,
the Exchange) without a Python frame; App.route keeps the rare cases.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memset
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from gateway._native.head cimport RequestHead
from gateway._native.router cimport Classifier, Router
from gateway._native.scheduler cimport Scheduler
from gateway._native.stats cimport Stats


cdef double wall_clock() noexcept:
    # time.time() without the Python call: the admission's clock is Unix
    # time (class windows, waiting-room cookies from other workers).
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef bint may_carry_cookie(list headers, bytes name):
    """Whether a Cookie field among `headers` contains `name`: only then
    can the request carry that cookie (values joined from several Cookie
    fields contain it only if one of them does)."""
    cdef bytes key, value
    for key, value in headers:
        if len(key) == 6 and key.lower() == b"cookie" and name in value:
            return True
    return False


cdef class AdmissionCore:
    """The worker's admission state as the native side sees it: whether
    admission is on, the shell (rare paths), the controller and its
    Scheduler. Kept by gateway.proxy.admission.Admission."""

    def __init__(self, shell, controller, Scheduler scheduler, bint enabled):
        self.shell = shell
        self.controller = controller
        self.scheduler = scheduler
        self.enabled = enabled
        self.stats = Stats()
        self.held = controller.held


cdef class Context:
    """One App's protocol limits, timeouts and names, C-typed, its routing
    tables, and the worker's AdmissionCore. `app` stays reachable for the
    rare paths."""

    def __cinit__(self):
        self._school_requests = NULL
        self._n_schools = 0

    def __dealloc__(self):
        PyMem_Free(self._school_requests)

    def __init__(self, app, cfg, AdmissionCore core, Router router, Classifier classifier,
                 list schools, int fallback_class, bytes status_path, dict names):
        limits = cfg.limits
        timeouts = cfg.timeouts
        self.app = app
        self.core = core
        self.via = cfg.server.via_name.encode()
        self.draining = False
        self.reject_underscore = limits.underscore_headers == "reject"
        self.max_request_line = limits.max_request_line
        self.max_headers = limits.max_headers
        self.max_header_bytes = limits.max_header_bytes
        # Raw bytes a request head may take before it is refused outright.
        self.head_budget = limits.max_request_line + limits.max_header_bytes
        self.max_body = limits.max_body or 0
        self.max_pipeline = limits.max_pipeline
        self.max_buffer = limits.max_buffer
        self.max_chunk_ext = limits.max_chunk_ext
        self.header_timeout = timeouts.header
        self.keepalive_timeout = timeouts.keepalive
        self.client_body_timeout = timeouts.client_body
        self.upstream_read_timeout = timeouts.upstream_read
        self.tunnel_idle_timeout = timeouts.tunnel_idle
        self.client_send_timeout = timeouts.client_send
        self.temp_dir = cfg.server.temp_dir
        self.router = router
        self.classifier = classifier
        self.schools = schools
        self.fallback_class = fallback_class
        self.status_path = status_path
        self.names = names
        self.superseded = False
        self.requests_total = 0
        cdef Py_ssize_t n = len(schools)
        PyMem_Free(self._school_requests)
        self._school_requests = <long long*>PyMem_Malloc(max(n, 1) * sizeof(long long))
        if self._school_requests == NULL:
            raise MemoryError()
        memset(self._school_requests, 0, max(n, 1) * sizeof(long long))
        self._n_schools = n

    cdef object route(self, object client, RequestHead head, int conn_school,
                      bint trusted_peer):
        """The Exchange for an ordinary request, routed here without a
        Python frame, or None when App.route must decide: the config was
        replaced by a reload (the connection moves), the connection is not
        counted against a school yet (its first request: max_connections,
        the response spool's limits), the peer is a trusted proxy
        (X-Forwarded-For), or the request names no school (421), is a
        CONNECT or asks for the status path. Nothing is counted then, so
        App.route counts it once. For the rest this is what App.route
        does: head.host picks the school, the classifier (or the fallback)
        the class, and the exchange is built by the class App.route builds
        (resolved in its module per request, so a substitute sees every
        exchange)."""
        cdef int school, klass
        if self.superseded or conn_school < 0 or trusted_peer:
            return None
        school = self.router.route(head.host)
        if school < 0 or school >= self._n_schools:
            return None
        method = head.method
        path = head.path
        if method == b"CONNECT" or path == self.status_path:
            return None
        klass = self.classifier.classify(method, path, head)
        if klass < 0:
            klass = self.fallback_class
        self.requests_total += 1
        self._school_requests[school] += 1
        return self.names["Exchange"](client, head, self.schools[school], klass)

    cpdef count_request(self, int school):
        """Count a request head App.route routed: to `school` (an index of
        this config), or to none (-1: no school at its host)."""
        self.requests_total += 1
        if 0 <= school < self._n_schools:
            self._school_requests[school] += 1

    cpdef long long school_requests(self, int school) except -1:
        """Requests this config routed to `school` (an index of this config;
        IndexError if it has none such)."""
        if not 0 <= school < self._n_schools:
            raise IndexError(school)
        return self._school_requests[school]
