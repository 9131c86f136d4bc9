"""The typed native context of one App (one config) and the worker's
admission core: what the proxy's cdef classes read per request, as C
fields instead of attribute lookups on Python objects.

App (gateway/proxy/app.py) builds a Context from its config at start and on
reload; a client connection holds the Context of its App and moves to the
new one with the App (App._move). The AdmissionCore belongs to the worker's
one Admission shell and outlives reloads like it: it lets an exchange ask
the native Scheduler for a slot, and give it back, without a Python frame
when nothing needs the shell (see Exchange.start and _finish).
"""

from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

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


cdef class Context:
    """One App's protocol limits, timeouts and names, C-typed, and the
    worker's AdmissionCore. `app` stays reachable for the rare paths."""

    def __init__(self, app, cfg, AdmissionCore core):
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
