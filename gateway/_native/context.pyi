"""The typed native context of one App and the worker's admission core
(native/context.pyx): what the proxy's cdef classes read per request as C
fields. App builds a Context from its config at start and on reload; the
Admission shell keeps the AdmissionCore for the worker's life.
"""

from typing import Any

from gateway._native.router import Classifier, Router
from gateway._native.scheduler import Scheduler
from gateway._native.stats import Stats

class AdmissionCore:
    """Whether admission is on, the shell (gateway.proxy.admission.Admission,
    for the rare paths), the controller, its native Scheduler and the
    worker's request counters."""

    enabled: bool
    shell: Any
    controller: Any
    scheduler: Scheduler
    held: set[int]
    """The controller's set of school indices held to the shell
    (AdmissionController.hold_fast_path); the same set object."""
    stats: Stats
    """The worker's request counters (native/stats.pyx), made empty here;
    the Admission shell keeps its layout in step with the config."""
    def __init__(self, shell: Any, controller: Any, scheduler: Scheduler,
                 enabled: bool) -> None: ...

class Context:
    """One config's protocol limits ([limits], bytes and counts), timeouts
    ([timeouts], seconds), Via name and draining flag, C-typed, its routing
    tables and request counters, with the worker's AdmissionCore; `app` is
    the App it was built for.

    Per request (a cdef method, no Python frame) it routes an ordinary
    request: Host to school, the traffic class, the Exchange. App.route
    takes the rest: a superseded config, a connection's first request, a
    trusted proxy's, an unknown host (421), CONNECT, the status path."""

    app: Any
    core: AdmissionCore
    via: bytes
    draining: bool
    reject_underscore: bool
    max_request_line: int
    max_headers: int
    max_header_bytes: int
    head_budget: int
    """Raw bytes a request head may take: max_request_line + max_header_bytes."""
    max_body: int
    """Bytes of a request body (0: unlimited)."""
    max_pipeline: int
    max_buffer: int
    max_chunk_ext: int
    header_timeout: float
    keepalive_timeout: float
    client_body_timeout: float
    upstream_read_timeout: float
    tunnel_idle_timeout: float
    client_send_timeout: float
    temp_dir: str                 # [server] temp_dir ("": $TMPDIR), for response spools
    router: Router
    classifier: Classifier
    schools: list[Any]
    """gateway.proxy.app.SchoolRuntime per school index."""
    fallback_class: int
    """The class of a request no class matches."""
    status_path: bytes
    """The admission shell's status endpoint: left to App.route."""
    names: dict[str, Any]
    """The namespace whose `Exchange` builds exchanges (gateway.proxy.app's
    globals), looked up per request so a substituted class sees them all."""
    superseded: bool
    """A reload replaced this config: App.route routes (and moves connections)."""
    requests_total: int
    """Request heads this config routed (to a school or to a 421)."""
    def __init__(self, app: Any, cfg: Any, core: AdmissionCore, router: Router,
                 classifier: Classifier, schools: list[Any], fallback_class: int,
                 status_path: bytes, names: dict[str, Any]) -> None: ...
    def count_request(self, school: int) -> None:
        """Count a request head App.route routed to `school` (-1: to none)."""
    def school_requests(self, school: int) -> int:
        """Requests this config routed to `school`; IndexError if no such."""
