# cython: wraparound=True, nonecheck=True
# wraparound: Python index semantics here (queue[-1], piece[-3:]), where speed
# does not matter. nonecheck: a typed attribute that is unexpectedly None
# (say self.server on a path the state machine was thought to exclude) raises
# AttributeError in one connection's callback instead of crashing the worker
# with every connection on it; measured at no cost within noise (bench.load
# --quick, alternating builds: 35.5k/34.4k req/s without, 38.8k/37.7k with).
"""The proxy's per-request protocol objects: client connection, exchange,
upstream connection, upstream server pool and balancer.

They are cdef classes (attributes declared in
native/gateway/_native/proxy.pxd) because this code runs several times per
request and, as plain Python, was the largest user-space cost of the worker
(perf: the interpreter running these callbacks). As cdef classes their
attributes are struct fields and the calls between them are C calls.
gateway.proxy.client, .exchange and .upstream re-export them; the
lifecycles and invariants are documented there and in proxy.pyi.

They do not subclass asyncio.Protocol (a cdef class cannot): uvloop calls
protocol methods by name, and httptools looks its callbacks up by attribute
name, so those stay `def` methods.
"""

# Imported under private names: the module exports only the proxy classes
# and constants (see gateway/_native/proxy.pyi).
import asyncio as _asyncio
import re as _re
import socket as _socket
from collections import deque as _deque

import httptools as _httptools

from gateway._native.head import HeadError as _HeadError
from gateway._native.head import parse_request_head as _parse_request_head
from gateway._native.head import parse_response_head as _parse_response_head
from gateway._native.serialize import serialize_request_head as _serialize_request_head
from gateway._native.serialize import serialize_response_head as _serialize_response_head

from gateway._native.head cimport RequestHead, ResponseHead

from gateway.proxy.chunks import ChunkLimiter as _ChunkLimiter

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef inline double monotonic() noexcept:
    # time.monotonic() without the module attribute lookup and Python call:
    # the same clock on Linux (CLOCK_MONOTONIC), read several times a request.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# Connection phases. Order matters: data_received treats every phase from
# BROKEN on as "stop parsing".
cdef enum:
    C_IDLE = 0
    C_HEAD = 1
    C_BODY = 2
    C_UPGRADE_WAIT = 3
    C_BROKEN = 4
    C_LINGER = 5
    C_UPGRADED = 6
    C_CLOSED = 7
IDLE, HEAD, BODY, UPGRADE_WAIT, BROKEN, LINGER, UPGRADED, CLOSED = (
    C_IDLE, C_HEAD, C_BODY, C_UPGRADE_WAIT, C_BROKEN, C_LINGER, C_UPGRADED, C_CLOSED)
LINGER_SECONDS = 2.0

# Exchange states (see gateway/proxy/exchange.py for the lifecycle).
cdef enum:
    S_WAITING = 0
    S_ADMITTING = 1
    S_CONNECTING = 2
    S_SENT = 3
    S_RESPONDING = 4
    S_TUNNEL = 5
    S_DONE = 6
WAITING, ADMITTING, CONNECTING, SENT, RESPONDING, TUNNEL, DONE = (
    S_WAITING, S_ADMITTING, S_CONNECTING, S_SENT, S_RESPONDING, S_TUNNEL, S_DONE)

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CRLF = b"\r\n"

# Reasons a client connection's reading is paused (a bit each); reading
# resumes only when no reason is left.
cdef enum:
    P_BUFFER = 1
    P_UPSTREAM = 2
    P_PIPELINE = 4
    P_ADMISSION = 8
    P_TUNNEL = 16
PAUSE_BUFFER = P_BUFFER        # body bytes buffered for an exchange without upstream
PAUSE_UPSTREAM = P_UPSTREAM    # the upstream transport's write buffer is full
PAUSE_PIPELINE = P_PIPELINE    # too many pipelined requests waiting
PAUSE_ADMISSION = P_ADMISSION  # waiting for admission: do not read the upload yet
PAUSE_TUNNEL = P_TUNNEL        # upgrade requested, 101 not yet received

cdef enum:
    T_CLIENT_EOF = 1
    T_UPSTREAM_EOF = 2
TUNNEL_CLIENT_EOF = T_CLIENT_EOF
TUNNEL_UPSTREAM_EOF = T_UPSTREAM_EOF

# Consecutive connect failures before a server is taken out of rotation, and
# how long it stays out before one request is let through as a probe.
cdef enum:
    FAIL_THRESHOLD_C = 3
FAIL_THRESHOLD = FAIL_THRESHOLD_C
FAIL_COOLDOWN = 5.0

cdef object HttpParserUpgrade = _httptools.HttpParserUpgrade
cdef object HttpParserError = _httptools.HttpParserError
cdef object HttpRequestParser = _httptools.HttpRequestParser
cdef object HttpResponseParser = _httptools.HttpResponseParser
cdef bytes _CRLFCRLF = b"\r\n\r\n"


# == client side ================================================================

cdef class ClientProtocol:
    """One accepted client connection (see gateway/proxy/client.py)."""

    def __init__(self, app, bytes proto=b"http"):
        self.app = app
        self.proto = proto
        self.transport = None
        self.parser = HttpRequestParser(self)
        self.queue = _deque()
        # Response bytes produced while handling one upstream read, sent as
        # one writev by flush(): a head and its body leave in one syscall.
        self.out = []
        # The exchange whose request body is still being parsed.
        self.current = None
        self.tunnel = None
        self.phase = C_IDLE
        self.since = 0.0
        self.touched = 0.0
        self.pause_mask = 0
        self.write_paused = False
        self.eof = False
        self.error = None
        self.client_ip = b""
        self.client_key = b""
        # The school this connection counts against (max_connections), -1
        # until its first routed request.
        self.school = -1
        self.trusted_peer = False
        self._url = b""
        self._headers = []
        self._n_headers = 0
        self._raw_head = 0
        self._hdr_bytes = 0
        self._body_left = -1
        self._tail = b""
        self._line = None
        self.chunks = _ChunkLimiter(app.limits.max_chunk_ext)

    # -- asyncio protocol -------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0].encode() if isinstance(peer, tuple) else b"unix"
        self.client_key = self.client_ip
        limit = self.app.limits.max_buffer
        transport.set_write_buffer_limits(high=limit, low=limit // 4)
        self.since = monotonic()
        self.app.connection_opened(self)

    def data_received(self, bytes data):
        cdef int phase = self.phase
        cdef Py_ssize_t cut, end, raw
        cdef bytes tail, piece
        cdef Exchange cur, ex
        if phase >= C_BROKEN:
            if phase == C_UPGRADED and self.tunnel is not None:
                self.touched = monotonic()
                self.tunnel.on_tunnel_client_data(data)
            return  # otherwise lingering after an error: read and drop
        if phase == C_UPGRADE_WAIT:
            # Bytes after an upgrade request wait for the upstream's 101.
            ex = self.queue[-1] if self.queue else None
            if ex is not None and ex.pending is not None:
                ex.pending.append(data)
            return
        self.touched = monotonic()
        while data:
            phase = self.phase
            cut = len(data)
            if phase == C_BODY:
                cur = self.current
                if cur is not None and cur.head.chunked:
                    cut = self.chunks.feed(data)
                    if cut < 0:
                        self._protocol_error(_HeadError(400, "chunk extension too long"))
                        return
            else:  # IDLE or HEAD
                # Feed a head on its own when more follows it, so that a
                # chunked body is measured before llhttp consumes it. The
                # previous read's tail catches a CRLFCRLF split across reads.
                tail = self._tail
                if tail:
                    end = (tail + data).find(_CRLFCRLF)
                else:
                    end = data.find(_CRLFCRLF)
                if end >= 0:
                    end += 4 - len(tail)
                    if end < cut:
                        cut = end
                # httptools holds a header line internally until it ends, so
                # a line that never ends is bounded here, by the raw bytes of
                # the current head (reset when a head completes).
                raw = self._raw_head + cut
                self._raw_head = raw
                if raw > self.app.head_budget:
                    self._protocol_error(_HeadError(431, "request header block too large"))
                    return
            if cut < len(data):
                piece = data[:cut]
                data = data[cut:]
            else:
                piece = data
                data = b""
            if phase == C_IDLE:
                # A head starts in this piece: kept (a reference, no copy)
                # until its request line is complete, for _parser_error.
                self._line = piece
            elif phase == C_HEAD and self._line is not None:
                self._line_more(piece)
            try:
                self.parser.feed_data(piece)
            except HttpParserUpgrade as upg:
                data = piece[upg.args[0]:] + data
                if not self._upgrade(data):
                    return
                self._tail = b""
                continue
            except HttpParserError as exc:
                err = self.error
                if err is None:
                    ctx = exc.__context__
                    err = ctx if isinstance(ctx, _HeadError) else _parser_error(exc, self._line)
                self._protocol_error(err)
                return
            self._tail = piece[-3:] if self.phase == C_HEAD else b""
            if self.phase >= C_BROKEN:
                return

    def eof_received(self):
        self.eof = True
        if self.phase == C_UPGRADED and self.tunnel is not None:
            self.tunnel.on_tunnel_client_eof()
            return True
        queue = self.queue
        if queue and (<Exchange>queue[0]).state == S_ADMITTING:
            # Hung up while waiting in line (a closed tab sends just this
            # FIN): the request is not sent to the school's server, and its
            # place goes to the next (like HAProxy's abortonclose). Closing
            # leads to connection_lost, which gives the place back.
            return False
        # With nothing owed, let the transport close; otherwise finish
        # answering what was asked (the client may only have half-closed),
        # then close.
        return bool(queue)

    def connection_lost(self, exc):
        cdef Exchange ex
        self.phase = C_CLOSED
        self.app.connections.discard(self)
        self.app.connection_closed(self)
        for ex in self.queue:
            ex.on_client_lost()
        self.queue.clear()
        if self.tunnel is not None:
            self.tunnel.on_client_lost()
            self.tunnel = None
        self.current = None

    def pause_writing(self):
        cdef Exchange ex
        self.write_paused = True
        ex = self.queue[0] if self.queue else self.tunnel
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self):
        cdef Exchange ex
        self.write_paused = False
        ex = self.queue[0] if self.queue else self.tunnel
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    # -- httptools callbacks ------------------------------------------------
    def on_message_begin(self):
        self.phase = C_HEAD
        self.since = monotonic()
        self._url = b""
        self._headers = []
        self._n_headers = 0
        self._hdr_bytes = 0

    def on_url(self, bytes url):
        url = self._url + url if self._url else url
        self._url = url
        if len(url) > self.app.limits.max_request_line:
            self._fail(_HeadError(414, "request line too long"))

    def on_header(self, bytes name, bytes value):
        cdef Py_ssize_t n = self._n_headers + 1
        self._n_headers = n
        self._hdr_bytes += len(name) + len(value) + 4
        if n > self.app.limits.max_headers:
            self._fail(_HeadError(431, "too many request headers"))
        self._headers.append((name, value))

    def on_headers_complete(self):
        cdef RequestHead head
        cdef Exchange ex
        app = self.app
        limits = app.limits
        if self._hdr_bytes > limits.max_header_bytes:
            self._fail(_HeadError(431, "request header block too large"))
        self._raw_head = 0
        self._line = None
        p = self.parser
        try:
            head = _parse_request_head(p.get_method(), self._url, p.get_http_version(),
                                      self._headers, app.reject_underscore)
        except _HeadError as err:
            self._fail(err)
        self._headers = []
        max_body = limits.max_body
        if max_body and head.content_length > max_body:
            self._fail(_HeadError(413, "request body too large"))
        self._body_left = max_body or -1
        self.phase = C_BODY
        if head.chunked:
            self.chunks.reset()
        ex = app.route(self, head)
        self.current = ex
        queue = self.queue
        queue.append(ex)
        n = len(queue)
        if n == 1:
            ex.start()
        elif n > limits.max_pipeline:
            self.pause_reading_for(P_PIPELINE)

    def on_body(self, bytes data):
        cdef long long left = self._body_left
        if left >= 0:
            # Only a chunked body can get here past max_body; a declared
            # Content-Length was checked at the head.
            left -= len(data)
            if left < 0:
                self._fail(_HeadError(413, "request body too large"))
            self._body_left = left
        ex = self.current
        if ex is not None:
            ex.on_request_body(data)

    def on_message_complete(self):
        ex = self.current
        self.current = None
        if self.phase < C_BROKEN:
            # (Not when a gateway answer already ended the connection while
            # this message was being parsed: nothing more is read then.)
            self.phase = C_IDLE
            self.since = monotonic()
        if ex is not None:
            ex.on_request_end()

    # -- used by exchanges ------------------------------------------------
    cpdef write(self, bytes data):
        if self.out:
            self.out.append(data)  # keep order behind what is corked
            return
        t = self.transport
        if t is not None:
            t.write(data)

    cpdef writelines(self, list parts):
        if self.out:
            self.out.extend(parts)
            return
        t = self.transport
        if t is not None:
            t.writelines(parts)

    cpdef cork(self, bytes data):
        self.out.append(data)

    cpdef corklines(self, list parts):
        self.out.extend(parts)

    cpdef flush(self):
        cdef list out = self.out
        if out:
            self.out = []
            t = self.transport
            if t is not None:
                if len(out) == 1:
                    t.write(out[0])
                else:
                    t.writelines(out)

    cpdef write_eof(self):
        self.flush()
        t = self.transport
        if t is not None and t.can_write_eof():
            t.write_eof()

    cpdef pause_reading_for(self, int reason):
        cdef int mask = self.pause_mask
        if not mask and self.transport is not None:
            self.transport.pause_reading()
        self.pause_mask = mask | reason

    cpdef resume_reading_for(self, int reason):
        cdef int mask = self.pause_mask
        if not mask & reason:
            return
        mask &= ~reason
        self.pause_mask = mask
        if not mask and self.transport is not None and self.phase != C_CLOSED:
            self.transport.resume_reading()

    cpdef exchange_done(self, Exchange ex):
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if not ex.keep_alive or (self.phase == C_BROKEN and not queue):
            self._close_after_response(ex)
            return
        if self.pause_mask & P_PIPELINE and len(queue) <= self.app.limits.max_pipeline:
            self.resume_reading_for(P_PIPELINE)
        if queue:
            (<Exchange>queue[0]).start()
        elif self.eof or (self.phase == C_IDLE and self.app.draining):
            self.close()
        elif self.phase == C_IDLE:
            self.since = monotonic()

    cpdef list enter_tunnel(self, Exchange ex):
        """101 received: from now on bytes are copied, not parsed. Returns
        what the client sent after its upgrade request, for the upstream."""
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        self.tunnel = ex
        self.phase = C_UPGRADED
        self.touched = monotonic()
        pending = ex.pending or []
        ex.pending = None
        self.resume_reading_for(P_TUNNEL)
        return pending

    cpdef close(self):
        self.flush()
        t = self.transport
        if t is not None and self.phase != C_CLOSED:
            t.close()

    cpdef abort(self):
        self.out = []
        t = self.transport
        if t is not None and self.phase != C_CLOSED:
            t.abort()

    # -- timeouts (called by the worker's reaper) ----------------------------
    def check_timeouts(self, double now):
        cdef Exchange ex
        phase = self.phase
        timeouts = self.app.timeouts
        if phase == C_UPGRADED:
            if now - self.touched > timeouts.tunnel_idle:
                self.close()
            return
        if phase == C_LINGER:
            if now - self.since > LINGER_SECONDS:
                self.abort()
            return
        queue = self.queue
        if phase == C_BODY and not self.pause_mask and now - self.touched > timeouts.client_body:
            # The client stopped sending the body it announced.
            self._protocol_error(_HeadError(408, "request body timeout"))
            return
        if queue:
            ex = queue[0]
            # `touched` moves with every byte either way, so a long upload or
            # download that keeps flowing never times out.
            if ex.upstream is not None and (ex.state == S_SENT or ex.state == S_RESPONDING) \
                    and now - ex.touched > timeouts.upstream_read:
                ex.timed_out()
            return
        if phase == C_HEAD:
            if now - self.since > timeouts.header:
                self._protocol_error(_HeadError(408, "request header timeout"))
        elif phase == C_IDLE and now - self.since > timeouts.keepalive:
            self.close()

    # -- internals ---------------------------------------------------------
    cdef _line_more(self, bytes piece):
        """A request line split across reads: join its pieces (up to the
        request-line limit) until its LF has arrived."""
        cdef bytes line = self._line
        cdef Py_ssize_t i = 0, n = len(line)
        while i < n and (line[i] == 13 or line[i] == 10):
            i += 1  # empty lines before a request line are skipped
        if line.find(b"\n", i) >= 0 or n > self.app.limits.max_request_line + 16:
            return
        self._line = line + piece

    cdef _fail(self, object err):
        # Raised inside an httptools callback; data_received picks it up.
        self.error = err
        raise err

    cdef _protocol_error(self, object err):
        """The byte stream cannot be trusted any more: answer after what is
        already owed, then close."""
        cdef Exchange ex, cur
        self.phase = C_BROKEN
        self.error = None
        self.app.count_protocol_error(err.status)
        ex = Exchange(self, None, None, -1)
        ex.local = self.app.error_response(err)
        ex.keep_alive = False
        cur = self.current
        if cur is not None and cur.state != S_RESPONDING:
            # A half-read body must not reach the upstream as if complete.
            cur.on_client_lost()
            if cur in self.queue:
                self.queue.remove(cur)
        self.current = None
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()

    cdef bint _upgrade(self, bytes rest) except -1:
        """llhttp stopped after a request asking for an upgrade; `rest` is
        what followed it. True: go on parsing `rest` as HTTP/1.1."""
        cdef Exchange ex = self.queue[-1] if self.queue else None
        if ex is not None and ex.head is not None and ex.head.upgrade is None \
                and ex.local is None and self.phase == C_IDLE:
            # An upgrade the gateway does not pass on (h2c): the request was
            # forwarded as plain HTTP/1.1, and a fresh parser reads on.
            self.parser = HttpRequestParser(self)
            return True
        if ex is None or ex.head is None or ex.head.upgrade is None or ex.local is not None:
            # Upgrade on a request we answer ourselves: the parser is spent,
            # so the connection ends after that answer.
            self.phase = C_BROKEN
            if ex is not None:
                ex.keep_alive = False  # closes once its answer is out
            else:
                self._linger()  # the answer is out already
            return False
        # The parser is spent either way: without a 101 the connection ends
        # after this response. Until then, hold (a bounded amount of) what
        # the client sends next; it belongs to the upgraded protocol.
        ex.keep_alive = False
        ex.pending = [rest] if rest else []
        self.phase = C_UPGRADE_WAIT
        self.pause_reading_for(P_TUNNEL)
        return False

    cdef _close_after_response(self, Exchange ex):
        self.flush()
        t = self.transport
        if t is None or self.phase == C_CLOSED:
            return
        phase = self.phase
        if phase == C_HEAD or phase == C_BODY or phase == C_UPGRADE_WAIT \
                or phase == C_BROKEN or (ex.head is not None and not ex.request_done):
            # The client may still be sending; closing with unread data would
            # reset the connection and could destroy the response in flight.
            # Half-close, drop what arrives, then close.
            self._linger()
            return
        t.close()

    cdef _linger(self):
        t = self.transport
        if t is None or self.phase == C_CLOSED:
            return
        self.flush()
        self.phase = C_LINGER
        self.since = monotonic()
        self.pause_mask = 0
        t.resume_reading()
        if t.can_write_eof():
            t.write_eof()
        else:
            t.close()


# A request line (RFC 9112 section 3) whose version is well formed, as far
# as it has arrived: llhttp stops at an unsupported version before the CRLF.
_VERSIONED_LINE = _re.compile(rb"[^ \r\n]+ [^ \r\n]+ HTTP/([0-9])\.([0-9])(?:\r?\n|\r?\Z)")


# The HTTP/2 connection preface (RFC 9113 section 3.4) is not an HTTP/1.1
# request with another version: to this server it is garbage (400).
_H2_PREFACE = b"PRI * HTTP/2.0"


def _parser_error(exc, line):
    """The answer to a request llhttp refused. `line`: the bytes of the
    request's head received so far (None if unknown).

    505 when the request line is well formed with a version other than
    1.0/1.1 (llhttp refuses 1.2, 3.0, ...; 2.0 and 0.9 pass it and are
    refused by parse_request_head), whatever else is wrong with the
    request: the protocol is refused, not the syntax (RFC 9110 section
    15.6.6).
    Decided from the bytes, not from llhttp's message ("Invalid HTTP
    version" in llhttp 9), so a reworded message in another llhttp cannot
    turn a 505 into a 400. Anything else is 400 with llhttp's reason."""
    if line is not None:
        line = line.lstrip(b"\r\n")
        m = _VERSIONED_LINE.match(line)
        if m is not None and (m[1], m[2]) not in ((b"1", b"1"), (b"1", b"0")) \
                and not line.startswith(_H2_PREFACE):
            return _HeadError(505, "HTTP version not supported")
    return _HeadError(400, f"malformed request: {str(exc) or type(exc).__name__}")


# == one exchange ================================================================

cdef class Exchange:
    """One request/response exchange (see gateway/proxy/exchange.py)."""

    def __init__(self, ClientProtocol client, RequestHead head, school, int klass):
        self.client = client
        self.head = head
        self.school = school
        self.klass = klass
        self.state = S_WAITING
        self.upstream = None
        self.server = None
        self.body_buf = []
        self.body_buffered = 0
        self.request_done = False
        self.keep_alive = head.keep_alive if head is not None else False
        self.is_head = head is not None and head.method == b"HEAD"
        self.out_chunked = False
        self.continue_sent = False
        self.attempts = 0
        self.sent_at = 0.0
        self.touched = 0.0
        # A response the gateway makes itself (error, waiting page), written
        # when this exchange reaches the head of the queue.
        self.local = None
        self.tunnel_buf = None
        # Which tunnel directions have ended (TUNNEL_*_EOF bits); once both
        # have, nothing more can flow and both connections are closed.
        self.tunnel_eof = 0
        # Client bytes sent after an upgrade request, held until the 101.
        self.pending = None
        self.ticket = None

    # -- request side (driven by ClientProtocol) ----------------------------
    cpdef on_request_body(self, bytes data):
        cdef list parts
        if self.local is not None or self.state == S_DONE:
            return  # the answer is already decided; drain and drop
        if self.head.chunked:
            parts = [b"%x\r\n" % len(data), data, CRLF]
        else:
            parts = [data]
        up = self.upstream
        if up is not None and (self.state == S_SENT or self.state == S_RESPONDING):
            self.touched = self.client.touched
            up.writelines(parts)
            return
        self.body_buf.extend(parts)
        self.body_buffered += len(data)
        if self.body_buffered > self.client.app.limits.max_buffer:
            self.client.pause_reading_for(P_BUFFER)

    cpdef on_request_end(self):
        self.request_done = True
        if self.local is not None or self.state == S_DONE:
            return
        if self.head.chunked:
            up = self.upstream
            if up is not None and (self.state == S_SENT or self.state == S_RESPONDING):
                up.write(LAST_CHUNK)
            else:
                self.body_buf.append(LAST_CHUNK)

    # -- driving the exchange --------------------------------------------
    cpdef start(self):
        """Called once this exchange is at the head of its client's queue."""
        if self.local is not None:
            self._write_local()
            return
        self.state = S_ADMITTING
        self.client.app.admission.admit(self)

    cpdef admitted(self):
        if self.state != S_ADMITTING:
            return
        self.state = S_CONNECTING
        self._connect(None)

    cpdef rejected(self, bytes response):
        """Answer for the gateway (waiting page, upstream down). `response`
        must carry the Connection header matching self.keep_alive, which
        settle_keep_alive() fixed before it was rendered."""
        if self.state == S_DONE:
            return
        self.local = response
        self._write_local()

    cpdef bint settle_keep_alive(self) except -1:
        """Decide whether the connection survives a gateway-made answer: not
        if the client is still sending a body nobody will read."""
        head = self.head
        # A bodiless request is complete at its head, before llhttp's
        # on_message_complete (admission decides inside on_headers_complete).
        done = self.request_done or (
            head is not None and head.content_length <= 0 and not head.chunked)
        keep = self.keep_alive and done and not self.client.app.draining
        self.keep_alive = keep
        return keep

    cdef _connect(self, UpstreamServer exclude):
        cdef Balancer balancer = self.school.balancer
        cdef UpstreamServer server = balancer.pick(exclude)
        self.server = server
        self.attempts += 1
        conn = server.take_idle()
        if conn is not None:
            self._attach(conn)
            return
        _asyncio.get_running_loop().create_task(self._dial(server))

    async def _dial(self, UpstreamServer server):
        try:
            conn = await server.connect()
        except (TimeoutError, OSError):
            server.record_failure(monotonic())
            if self.state != S_CONNECTING:
                return
            # Nothing of the request left the gateway: retrying is always safe.
            if self.attempts < 2 and len(self.school.balancer.servers) > 1:
                self._connect(server)
            else:
                self._unavailable()
            return
        if self.state != S_CONNECTING:
            # The client went away while we dialed; keep the fresh connection.
            server.release(conn, monotonic())
            return
        self._attach(conn)

    cdef _attach(self, UpstreamConnection conn):
        cdef ClientProtocol client = self.client
        cdef RequestHead head = self.head
        cdef list parts
        self.upstream = conn
        conn.exchange = self
        self.server.inflight += 1
        self.state = S_SENT
        self.sent_at = self.touched = monotonic()
        if client.write_paused:
            conn.pause_reading()
        app = client.app
        parts = [_serialize_request_head(head, client.client_ip, client.proto, app.via)]
        if self.body_buf:
            parts.extend(self.body_buf)
            self.body_buf = []
            self.body_buffered = 0
            client.resume_reading_for(P_BUFFER)
        conn.writelines(parts)
        if head.expect_continue and not self.request_done and not self.continue_sent:
            # The upstream never sees Expect: the gateway promises the body
            # only once it knows where the body will go.
            self.continue_sent = True
            client.write(CONTINUE_100)

    # -- response side (driven by UpstreamConnection) -----------------------
    cpdef on_interim_response(self, UpstreamConnection conn, ResponseHead head):
        self.touched = monotonic()
        if head.status == 101:
            if self.head.upgrade is None:
                conn.abort()  # 101 to a request that did not ask: unusable
            else:
                self.tunnel_buf = [_serialize_response_head(
                    head, self.head.version, False, True, self.client.app.via)]
            return
        if head.status == 100 or self.head.version < 11:
            return  # 100 was answered by us; HTTP/1.0 clients get no 1xx
        self.client.cork(_serialize_response_head(head, 11, False, True, self.client.app.via))

    cpdef on_response_head(self, UpstreamConnection conn, ResponseHead head):
        cdef RequestHead req = self.head
        cdef ClientProtocol client = self.client
        cdef int status = head.status
        cdef bint keep, chunked
        self.state = S_RESPONDING
        self.touched = monotonic()
        app = client.app
        keep = self.keep_alive and self.request_done and not app.draining
        if self.is_head or status == 204 or status == 304 or head.content_length >= 0:
            chunked = False
        elif req.version >= 11:
            chunked = True  # re-frame chunked or close-delimited bodies
        else:
            chunked = False
            keep = False  # HTTP/1.0 without a length: the close ends the body
        self.out_chunked = chunked
        self.keep_alive = keep
        client.cork(_serialize_response_head(head, req.version, chunked, keep, app.via))

    cpdef on_response_body(self, bytes data):
        self.touched = monotonic()
        if self.out_chunked:
            self.client.corklines([b"%x\r\n" % len(data), data, CRLF])
        else:
            self.client.cork(data)

    cpdef on_response_end(self, UpstreamConnection conn, bint reusable):
        cdef UpstreamServer server = self.server
        server.inflight -= 1
        server.record_success()
        self.upstream = None
        if reusable and self.request_done:
            server.release(conn, monotonic())
        else:
            conn.close()
        if self.out_chunked:
            self.client.cork(LAST_CHUNK)
        self._finish()

    cpdef on_upstream_lost(self, UpstreamConnection conn, object exc):
        cdef UpstreamServer server = self.server
        server.inflight -= 1
        self.upstream = None
        if self.state == S_DONE:
            return
        if self.state == S_RESPONDING:
            # Part of the response is already with the client; cutting the
            # connection is the only way left to say it is incomplete.
            self.state = S_DONE
            self.client.abort()
            return
        server.record_failure(monotonic())
        head = self.head
        replayable = head.idempotent and head.content_length <= 0 and not head.chunked
        if replayable and self.attempts < 2 and not self.continue_sent:
            self.state = S_CONNECTING
            self._connect(server)
            return
        self._unavailable()

    cpdef on_upstream_write_paused(self):
        self.client.pause_reading_for(P_UPSTREAM)

    cpdef on_upstream_write_resumed(self):
        self.client.resume_reading_for(P_UPSTREAM)

    cpdef timed_out(self):
        """The upstream sent nothing within upstream_read."""
        conn = self.upstream
        if conn is not None:
            conn.exchange = None
            conn.abort()
            self.upstream = None
            self.server.inflight -= 1
        if self.state == S_RESPONDING:
            self.state = S_DONE
            self.client.abort()
        else:
            self._unavailable()

    # -- upgrade / tunnel ----------------------------------------------
    cpdef on_upstream_upgraded(self, bytes rest):
        conn = self.upstream
        if self.tunnel_buf is None or conn is None:
            if conn is not None:
                conn.abort()
            return
        self.state = S_TUNNEL
        conn.tunnel = True
        client = self.client
        # A tunnel may stay open for hours: it counts against the school's
        # connections, not its request slots.
        if self.ticket is not None:
            client.app.admission.release(self)
        client.writelines(self.tunnel_buf)
        self.tunnel_buf = None
        if rest:
            client.write(rest)
        pending = client.enter_tunnel(self)
        if pending:
            conn.writelines(pending)

    cpdef on_tunnel_client_data(self, bytes data):
        if self.upstream is not None:
            self.upstream.write(data)

    cpdef on_tunnel_upstream_data(self, bytes data):
        self.client.write(data)
        self.client.touched = monotonic()

    cpdef on_tunnel_upstream_eof(self):
        self.client.write_eof()
        self._tunnel_half_closed(T_UPSTREAM_EOF)

    cpdef on_tunnel_client_eof(self):
        if self.upstream is not None:
            self.upstream.write_eof()
        self._tunnel_half_closed(T_CLIENT_EOF)

    cdef _tunnel_half_closed(self, int side):
        self.tunnel_eof |= side
        if self.tunnel_eof != T_CLIENT_EOF | T_UPSTREAM_EOF:
            return
        conn = self.upstream
        if conn is not None:
            # Closing the transport leads to connection_lost and from there
            # to on_tunnel_upstream_lost, which closes the client side.
            conn.close()
        else:
            self.state = S_DONE
            self.client.close()

    cpdef on_tunnel_upstream_lost(self):
        self.upstream = None
        self.server.inflight -= 1
        self.state = S_DONE
        self.client.close()

    cpdef on_client_lost(self):
        """The client connection is gone: release whatever this holds."""
        self.state = S_DONE
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.exchange = None
            self.server.inflight -= 1
            conn.abort()  # mid-exchange: the upstream's framing state is unknown
        if self.ticket is not None:
            self.client.app.admission.cancel(self)

    # -- endings -----------------------------------------------------------
    cdef _unavailable(self):
        self.settle_keep_alive()
        self.rejected(self.client.app.unavailable_page(self))

    cdef _write_local(self):
        self.state = S_RESPONDING
        self.client.write(self.local)
        self._finish()

    cdef _finish(self):
        self.state = S_DONE
        if self.ticket is not None:  # no Python call for unticketed exchanges
            self.client.app.admission.release(self)
        self.client.exchange_done(self)


# == upstream side ================================================================

cdef class UpstreamConnection:
    """One upstream TCP connection (see gateway/proxy/upstream.py)."""

    def __init__(self, UpstreamServer server):
        self.server = server
        self.transport = None
        self.parser = HttpResponseParser(self)
        self.exchange = None
        self.closed = False
        self.tunnel = False
        self.reading_paused = False
        self.idle_since = 0.0
        self.requests = 0
        self._headers = []
        self._reason = b""
        # True while the current response is delimited by the upstream closing.
        self._until_close = False
        # HEAD: llhttp would wait for Content-Length body bytes that never
        # come, so the response ends at its head and the parser is replaced.
        self._head_only = False
        self._head_seen = False
        # Inside a 1xx (or the 101 before the tunnel): its message end is not
        # the end of the exchange.
        self._interim = False

    # -- asyncio protocol -------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            except OSError:
                pass
        limit = self.server.max_buffer
        transport.set_write_buffer_limits(high=limit, low=limit // 4)

    def data_received(self, bytes data):
        cdef Exchange ex = self.exchange
        cdef ClientProtocol client
        if ex is None:
            # Bytes on an idle connection: the upstream is confused or closing.
            self.abort()
            return
        if self.tunnel:
            ex.on_tunnel_upstream_data(data)
            return
        client = ex.client
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upg:
            offset = upg.args[0]
            if self.exchange is not None:
                self.exchange.on_upstream_upgraded(data[offset:])
        except HttpParserError as exc:
            self._fail(_HeadError(502, f"invalid response from upstream: {exc}"))
        else:
            if self._head_seen and self.exchange is ex:
                self._finish_head_only()
        client.flush()

    def eof_received(self):
        cdef Exchange ex = self.exchange
        if ex is not None and self._until_close and not self.tunnel:
            self._until_close = False
            self.exchange = None
            self.closed = True
            ex.on_response_end(self, False)
            ex.client.flush()
        elif ex is not None and self.tunnel:
            ex.on_tunnel_upstream_eof()
            return True
        return False

    def connection_lost(self, exc):
        cdef Exchange ex
        self.closed = True
        self.server.forget(self)
        ex = self.exchange
        if ex is None:
            return
        self.exchange = None
        if self.tunnel:
            ex.on_tunnel_upstream_lost()
        elif self._until_close:
            self._until_close = False
            ex.on_response_end(self, False)
        else:
            ex.on_upstream_lost(self, exc)
        ex.client.flush()

    def pause_writing(self):
        if self.exchange is not None:
            self.exchange.on_upstream_write_paused()

    def resume_writing(self):
        if self.exchange is not None:
            self.exchange.on_upstream_write_resumed()

    # -- httptools callbacks ----------------------------------------------
    def on_status(self, bytes reason):
        self._reason += reason

    def on_header(self, bytes name, bytes value):
        self._headers.append((name, value))

    def on_headers_complete(self):
        cdef ResponseHead head
        cdef Exchange ex
        cdef int status
        p = self.parser
        headers = self._headers
        self._headers = []
        reason = self._reason
        self._reason = b""
        ex = self.exchange
        if ex is None:
            return
        head = _parse_response_head(p.get_status_code(), reason, p.get_http_version(), headers)
        status = head.status
        if status < 200:
            self._interim = True
            ex.on_interim_response(self, head)
            return
        if status != 204 and status != 304:
            if ex.is_head:
                self._head_only = True
            elif head.content_length < 0 and not head.chunked:
                self._until_close = True
        ex.on_response_head(self, head)
        if self._head_only:
            self._head_seen = True

    def on_body(self, bytes data):
        if self._head_only:
            if data:
                # A body after a HEAD response: never reuse this connection.
                self._head_only = False
                self.abort()
            return
        ex = self.exchange
        if ex is not None and data:
            ex.on_response_body(data)

    def on_message_complete(self):
        cdef Exchange ex = self.exchange
        if ex is None or self._head_only:
            return
        if self._interim:
            self._interim = False
            return
        self._until_close = False
        self.exchange = None
        ex.on_response_end(self, self.parser.should_keep_alive())

    # -- used by the exchange ---------------------------------------------
    cdef _finish_head_only(self):
        cdef Exchange ex
        self._head_only = self._head_seen = False
        ex = self.exchange
        self.exchange = None
        reusable = self.parser.should_keep_alive()
        self.parser = HttpResponseParser(self)
        if ex is not None:
            ex.on_response_end(self, reusable)

    cdef _fail(self, object err):
        cdef Exchange ex = self.exchange
        self.exchange = None
        self.abort()
        if ex is not None:
            ex.on_upstream_lost(self, err)

    cpdef write(self, bytes data):
        self.transport.write(data)

    cpdef writelines(self, list parts):
        self.transport.writelines(parts)

    cpdef write_eof(self):
        t = self.transport
        if t is not None and t.can_write_eof():
            t.write_eof()

    cpdef pause_reading(self):
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    cpdef resume_reading(self):
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    cpdef abort(self):
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    cpdef close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.close()


cdef class UpstreamServer:
    """One upstream host:port: its idle keep-alive pool and health state."""

    def __init__(self, str host, int port, *, Py_ssize_t keepalive, double connect_timeout,
                 double idle_timeout, Py_ssize_t max_buffer):
        self.host = host
        self.port = port
        self.addr = f"{host}:{port}"
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_buffer = max_buffer
        # LIFO: the most recently used connection is the least likely to
        # have been closed by the upstream's own idle timeout.
        self.idle = _deque()
        self.inflight = 0
        self.total = set()
        self.failures = 0
        self.down_until = 0.0
        self.loop = None

    cpdef bint available(self, double now):
        return now >= self.down_until

    cpdef UpstreamConnection take_idle(self):
        cdef UpstreamConnection conn
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self):
        loop = self.loop or _asyncio.get_running_loop()
        conn = UpstreamConnection(self)
        await _asyncio.wait_for(
            loop.create_connection(lambda: conn, self.host, self.port),
            self.connect_timeout,
        )
        self.total.add(conn)
        return conn

    cpdef release(self, UpstreamConnection conn, double now):
        """Return a connection whose exchange finished cleanly."""
        if conn.closed or len(self.idle) >= self.keepalive:
            conn.close()
            return
        conn.requests += 1
        conn.idle_since = now
        conn.resume_reading()
        self.idle.append(conn)

    cpdef forget(self, UpstreamConnection conn):
        self.total.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    cpdef reap_idle(self, double now):
        cdef double deadline = now - self.idle_timeout
        idle = self.idle
        # Oldest first (left end); stop at the first one still fresh.
        while idle and (<UpstreamConnection>idle[0]).idle_since < deadline:
            idle.popleft().close()

    cpdef record_success(self):
        self.failures = 0
        self.down_until = 0.0

    cpdef record_failure(self, double now):
        self.failures += 1
        if self.failures >= FAIL_THRESHOLD_C:
            self.down_until = now + FAIL_COOLDOWN

    cpdef close_all(self):
        for conn in list(self.total):
            conn.close()
        self.idle.clear()


cdef class Balancer:
    """Chooses among a school's upstream servers: round-robin or least in-flight,
    skipping servers taken out of rotation unless all of them are."""

    def __init__(self, list servers, bint least_inflight):
        self.servers = servers
        self.least_inflight = least_inflight
        self._next = 0

    cpdef UpstreamServer pick(self, UpstreamServer exclude=None):
        cdef list servers = self.servers
        cdef Py_ssize_t n = len(servers), i, start
        cdef UpstreamServer s, best
        cdef double now
        if n == 1:
            return servers[0]
        now = monotonic()
        if self.least_inflight:
            best = None
            for s in servers:
                if s is exclude or not s.available(now):
                    continue
                if best is None or s.inflight < best.inflight:
                    best = s
            if best is not None:
                return best
        else:
            start = self._next
            for i in range(n):
                s = servers[(start + i) % n]
                if s is not exclude and s.available(now):
                    self._next = (start + i + 1) % n
                    return s
        # Everything is excluded or cooling down: probe the next one anyway
        # rather than fail without trying.
        for s in servers:
            if s is not exclude:
                return s
        return servers[0]
