"""The proxy's per-request protocol objects under their former module name.

They live in native/client.pyx, native/exchange.pyx and native/upstream.pyx
(a request walks down them in that order; link.pyx holds the base classes
that let each call back up). This module re-exports all of them, so code
and tests that import gateway._native.proxy keep working; new code imports
gateway.proxy.client, .exchange or .upstream.
"""

from gateway._native.client import (
    BODY,
    BROKEN,
    CLOSED,
    HEAD,
    IDLE,
    LINGER,
    LINGER_SECONDS,
    UPGRADE_WAIT,
    UPGRADED,
    ClientProtocol,
)
from gateway._native.client import _parser_error  # noqa: F401 (tests)
from gateway._native.exchange import (
    ADMITTING,
    CONNECTING,
    CONTINUE_100,
    CRLF,
    DONE,
    LAST_CHUNK,
    PAUSE_ADMISSION,
    PAUSE_BUFFER,
    PAUSE_PIPELINE,
    PAUSE_TUNNEL,
    PAUSE_UPSTREAM,
    RECEIVING,
    RESPONDING,
    SENT,
    TUNNEL,
    TUNNEL_CLIENT_EOF,
    TUNNEL_UPSTREAM_EOF,
    WAITING,
    Exchange,
)
from gateway._native.upstream import (
    FAIL_COOLDOWN,
    FAIL_THRESHOLD,
    REUSE_MARGIN,
    REUSE_MARGIN_SHARE,
    UNPROVEN_IDLE,
    Balancer,
    UpstreamConnection,
    UpstreamServer,
)
