"""The proxy's per-request protocol objects under their former module name
(native/proxy.pyx): aliases of what gateway._native.client, .exchange and
.upstream define, kept so that imports of gateway._native.proxy keep
working. New code imports gateway.proxy.client, .exchange or .upstream.
"""

import gateway._native.client as _client
import gateway._native.exchange as _exchange
import gateway._native.upstream as _upstream

BODY = _client.BODY
BROKEN = _client.BROKEN
CLOSED = _client.CLOSED
ClientProtocol = _client.ClientProtocol
HEAD = _client.HEAD
IDLE = _client.IDLE
LINGER = _client.LINGER
LINGER_SECONDS = _client.LINGER_SECONDS
UPGRADED = _client.UPGRADED
UPGRADE_WAIT = _client.UPGRADE_WAIT

ADMITTING = _exchange.ADMITTING
CONNECTING = _exchange.CONNECTING
CONTINUE_100 = _exchange.CONTINUE_100
CRLF = _exchange.CRLF
DONE = _exchange.DONE
Exchange = _exchange.Exchange
LAST_CHUNK = _exchange.LAST_CHUNK
PAUSE_ADMISSION = _exchange.PAUSE_ADMISSION
PAUSE_BUFFER = _exchange.PAUSE_BUFFER
PAUSE_PIPELINE = _exchange.PAUSE_PIPELINE
PAUSE_TUNNEL = _exchange.PAUSE_TUNNEL
PAUSE_UPSTREAM = _exchange.PAUSE_UPSTREAM
RECEIVING = _exchange.RECEIVING
RESPONDING = _exchange.RESPONDING
SENT = _exchange.SENT
TUNNEL = _exchange.TUNNEL
TUNNEL_CLIENT_EOF = _exchange.TUNNEL_CLIENT_EOF
TUNNEL_UPSTREAM_EOF = _exchange.TUNNEL_UPSTREAM_EOF
WAITING = _exchange.WAITING

Balancer = _upstream.Balancer
FAIL_COOLDOWN = _upstream.FAIL_COOLDOWN
FAIL_THRESHOLD = _upstream.FAIL_THRESHOLD
REUSE_MARGIN = _upstream.REUSE_MARGIN
REUSE_MARGIN_SHARE = _upstream.REUSE_MARGIN_SHARE
UNPROVEN_IDLE = _upstream.UNPROVEN_IDLE
UpstreamConnection = _upstream.UpstreamConnection
UpstreamServer = _upstream.UpstreamServer
