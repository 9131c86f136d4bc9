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

from gateway.proxy.chunks import ChunkError as _ChunkError
from gateway.proxy.chunks import ChunkedFraming as _ChunkedFraming
from gateway.proxy.spool import PIECE as _PIECE
from gateway.proxy.spool import BodySpool as _BodySpool

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
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
    S_RECEIVING = 7
WAITING, ADMITTING, CONNECTING, SENT, RESPONDING, TUNNEL, DONE, RECEIVING = (
    S_WAITING, S_ADMITTING, S_CONNECTING, S_SENT, S_RESPONDING, S_TUNNEL, S_DONE, S_RECEIVING)

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
PAUSE_BUFFER = P_BUFFER        # body bytes buffered for an exchange without upstream,
                               # or a held body being forwarded before the rest is read
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

# Where an upstream connection is in the response it is reading.
cdef enum:
    R_HEAD = 0   # until the final head ends (1xx heads come before it)
    R_BODY = 1   # final head forwarded; its body, if any, is being read
    R_DONE = 2   # the response ended: nothing more may arrive

# Reusing pooled connections (UpstreamServer.reuse_limit): a connection is
# reused only while its idle time is below what is known of the upstream's
# keep-alive timeout, less max(REUSE_MARGIN, REUSE_MARGIN_SHARE x timeout)
# for the request's way there and the upstream's timer granularity. Until
# anything is known, only what was seen to survive, or UNPROVEN_IDLE: no
# server we know closes idle connections sooner than 1 s by default (gunicorn
# 2 s; Apache, Node.js, uvicorn 5 s; nginx 75 s), and 0.5 s leaves the margin
# even for one set to 0.75 s.
cdef double _REUSE_MARGIN = 0.25
cdef double _REUSE_MARGIN_SHARE = 0.1
cdef double _UNPROVEN_IDLE = 0.5
REUSE_MARGIN = _REUSE_MARGIN
REUSE_MARGIN_SHARE = _REUSE_MARGIN_SHARE
UNPROVEN_IDLE = _UNPROVEN_IDLE

cdef object HttpParserUpgrade = _httptools.HttpParserUpgrade
cdef object HttpParserError = _httptools.HttpParserError
cdef object HttpRequestParser = _httptools.HttpRequestParser
cdef object HttpResponseParser = _httptools.HttpResponseParser
cdef bytes _CRLFCRLF = b"\r\n\r\n"


cdef Py_ssize_t _skip_empty_lines(bytes data, Py_ssize_t pos, bint* pending_cr) except -2:
    """Skip the empty lines before a start line, from `pos`.

    RFC 9112 section 2.2 lets a recipient skip CRLFs there; llhttp skips any
    CR or LF. A bare CR or LF is read differently by different parsers (h11
    refuses it), so it is refused: -1. Otherwise returns the offset of the
    first byte that is neither; a CR that ends `data` is remembered in
    `pending_cr` and must be followed by LF in the next read.
    """
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if pending_cr[0] and pos < n:
        if p[pos] != 10:
            return -1
        pending_cr[0] = False
        pos += 1
    while pos < n:
        if p[pos] == 13:
            if pos + 1 == n:
                pending_cr[0] = True
                return n
            if p[pos + 1] != 10:
                return -1
            pos += 2
        elif p[pos] == 10:
            return -1
        else:
            break
    return pos


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
        self._cl_left = 0
        self._tail = b""
        self._line = None
        self._pending_cr = False
        self.chunks = _ChunkedFraming(app.limits.max_chunk_ext, app.limits.max_header_bytes)

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
            if phase == C_IDLE and (self._pending_cr or data[0] == 13 or data[0] == 10):
                cut = _skip_empty_lines(data, 0, &self._pending_cr)
                if cut < 0:
                    self._protocol_error(_HeadError(400, "bare CR or LF before the request line"))
                    return
                data = data[cut:]
                continue
            cut = len(data)
            if phase == C_BODY:
                # The gateway's verdict says where the body ends; llhttp gets
                # exactly that much and must end the message there too.
                if self._chunked:
                    try:
                        cut = self.chunks.feed(data)
                    except _ChunkError as err:
                        self._protocol_error(_HeadError(400, err.reason))
                        return
                elif self._cl_left < cut:
                    cut = <Py_ssize_t>self._cl_left
                if cut == 0:
                    # The verdict ended the body but llhttp did not end the
                    # message: the two read these bytes differently.
                    self._protocol_error(_HeadError(400, "ambiguous message framing"))
                    return
                if not self._chunked:
                    self._cl_left -= cut
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
            if self.phase == C_BODY and self._body_framed():
                # The verdict's body ended with this piece; llhttp did not.
                self._protocol_error(_HeadError(400, "ambiguous message framing"))
                return

    def eof_received(self):
        self.eof = True
        if self.phase == C_UPGRADED and self.tunnel is not None:
            self.tunnel.on_tunnel_client_eof()
            return True
        queue = self.queue
        if queue and ((<Exchange>queue[0]).state == S_ADMITTING
                      or (<Exchange>queue[0]).state == S_RECEIVING):
            # Hung up while waiting in line (a closed tab sends just this
            # FIN): the request is not sent to the school's server, and its
            # place goes to the next (like HAProxy's abortonclose). Closing
            # leads to connection_lost, which gives the place back. A body
            # being received can never be completed after a FIN either: its
            # buffer is freed at once.
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
        # The framing verdict for this message, taken once from its head.
        self._chunked = head.chunked
        if head.chunked:
            self.chunks.reset()
            self._cl_left = 0
        else:
            self._cl_left = head.content_length if head.content_length > 0 else 0
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
        if not data:
            return  # nothing to pass on (an empty piece is never a last-chunk)
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
        if self.phase == C_BODY and not self._body_framed():
            # llhttp ended the message before the gateway's verdict did.
            self._fail(_HeadError(400, "ambiguous message framing"))
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
        cdef Exchange ex, cur
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
        cur = self.current
        if phase == C_BODY and cur is not None and cur.state == S_RECEIVING \
                and not self.pause_mask and now > cur.body_deadline(timeouts):
            # A body received before admission took too long in all, however
            # steadily its bytes trickled in (the gap check below would not
            # catch a byte every few seconds).
            self._protocol_error(_HeadError(408, "request body took too long"))
            return
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
    cdef bint _body_framed(self):
        """Whether the framing verdict has read the current body to its end."""
        return self.chunks.done if self._chunked else self._cl_left == 0

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
        cdef bint tunnel = ex is not None and ex.head is not None and (
            ex.head.upgrade is not None or ex.is_connect)
        if ex is not None and ex.head is not None and not tunnel \
                and ex.local is None and self.phase == C_IDLE:
            # An upgrade the gateway does not pass on (h2c): the request was
            # forwarded as plain HTTP/1.1, and a fresh parser reads on.
            self.parser = HttpRequestParser(self)
            return True
        if not tunnel or ex.local is not None:
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
                or phase == C_BROKEN or (ex.head is not None and not ex.request_done
                                         and not ex.body_received):
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
        # Only reaches here for a school with allow_connect (App.route).
        self.is_connect = head is not None and head.method == b"CONNECT"
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
        # Headers the gateway adds to the upstream's response (the cookie of
        # a waiting-room ticket this request used up, cleared).
        self.response_headers = None
        # Request buffering: the body held at the gateway (a BodySpool) from
        # receive_body() until it has been forwarded.
        self.spool = None
        self.body_received = False
        self.up_chunked = False
        self.body_since = 0.0
        # Set when the request gave an admitted slot back to read its body:
        # its first arrival and what was left of its max_wait then.
        self.arrived_at = 0.0
        self.wait_left = 0.0

    # -- request side (driven by ClientProtocol) ----------------------------
    cpdef on_request_body(self, bytes data):
        cdef ClientProtocol client
        if not data:
            return  # framed as a chunk, an empty piece would end the body
        if self.local is not None or self.state == S_DONE:
            return  # the answer is already decided; drain and drop
        up = self.upstream
        spool = self.spool
        if up is not None and spool is None and (self.state == S_SENT or self.state == S_RESPONDING):
            self.touched = self.client.touched
            if self.up_chunked:
                up.writelines([b"%x\r\n" % len(data), data, CRLF])
            else:
                up.write(data)
            return
        if spool is not None:
            try:
                spool.append(data)
            except OSError:
                self._spool_failed()
                return
            if self.state == S_RECEIVING and spool.size > self.school.request_buffer_max:
                # Too large to hold whole: it asks for a slot with what is
                # here, and once forwarded the rest streams from the client.
                client = self.client
                client.pause_reading_for(P_BUFFER)
                self.state = S_ADMITTING
                client.app.admission.admit(self)
            return
        # Not started yet (pipelined), or queued with its body unread: what
        # the client sent anyway waits here, in order, bounded by max_buffer.
        self.body_buf.append(data)
        self.body_buffered += len(data)
        if self.body_buffered > self.client.app.limits.max_buffer:
            self.client.pause_reading_for(P_BUFFER)

    cpdef on_request_end(self):
        self.body_received = True
        if self.local is not None or self.state == S_DONE:
            self.request_done = True
            return
        if self.spool is not None:
            if self.state == S_RECEIVING:
                # The whole body is here: only now does it ask for a slot.
                self.state = S_ADMITTING
                self.client.app.admission.admit(self)
            # Being forwarded from the spool: _pump ends the request.
            return
        up = self.upstream
        if up is not None and (self.state == S_SENT or self.state == S_RESPONDING) \
                and self.up_chunked:
            up.write(LAST_CHUNK)
        # (Before an upstream is attached, _attach frames what body_buf holds.)
        self.request_done = True

    cpdef bint body_first(self) except -1:
        """Whether the body is to be received whole before the request asks
        for a slot: its school buffers requests, a body is announced, and it
        is neither all here already nor being received."""
        cdef RequestHead head = self.head
        if head is None or self.school is None or self.local is not None \
                or self.body_received or self.spool is not None or head.upgrade is not None:
            return False
        if head.content_length <= 0 and not head.chunked:
            return False
        return self.school.request_buffering

    cpdef receive_body(self):
        """Read the body into a spool (memory, then a temporary file) before
        the request takes a slot; 100 Continue if the client asked for it.
        on_request_end (or the body outgrowing request_buffer_max) asks the
        admission shell for a slot afterwards."""
        cdef ClientProtocol client = self.client
        app = client.app
        spool = _BodySpool(self.school.request_buffer_memory, app.cfg.server.temp_dir)
        self.spool = spool
        self.state = S_RECEIVING
        self.body_since = monotonic()
        if self.body_buf:
            try:
                for piece in self.body_buf:
                    spool.append(piece)
            except OSError:
                self._spool_failed()
                return
            self.body_buf = []
            self.body_buffered = 0
        client.resume_reading_for(P_BUFFER)
        if self.head.expect_continue and not self.continue_sent:
            self.continue_sent = True
            client.write(CONTINUE_100)

    cpdef double body_deadline(self, object timeouts) except? -1.0:
        """Monotonic time by which a body being received must be complete:
        client_body_total after receiving began, plus one second per
        client_body_min_rate bytes received (Apache mod_reqtimeout's
        MinRate), so a real upload always has time and a trickle does not."""
        cdef double deadline = self.body_since + timeouts.client_body_total
        rate = timeouts.client_body_min_rate
        if rate > 0 and self.spool is not None:
            deadline += self.spool.size / rate
        return deadline

    cdef _spool_failed(self):
        # The temporary file could not be written (a full disk): the body
        # cannot be held, so the request is answered here and the rest of
        # the body drained.
        self._drop_spool()
        if self.ticket is not None:  # queued past request_buffer_max: leave the line
            self.client.app.admission.cancel(self)
        self.keep_alive = False
        self.rejected(self.client.app.error_response(
            _HeadError(503, "the gateway could not store the request body")))

    cdef _drop_spool(self):
        spool = self.spool
        if spool is not None:
            self.spool = None
            spool.close()

    cdef _pump(self):
        """Forward the held body as far as the upstream takes it now (its
        transport's write buffer up to its high-water mark); the rest goes
        from on_upstream_write_resumed. Once all of it is out the request is
        done, or, for a body beyond request_buffer_max, the client is read
        again and the rest streams through."""
        cdef ClientProtocol client = self.client
        cdef UpstreamConnection up = self.upstream
        spool = self.spool
        if spool is None or up is None or up.transport is None:
            return
        transport = up.transport
        high = self.server.max_buffer
        chunked = self.up_chunked
        while transport.get_write_buffer_size() <= high:
            piece = spool.read(_PIECE)
            if not piece:
                break
            if chunked:
                up.writelines([b"%x\r\n" % len(piece), piece, CRLF])
            else:
                up.write(piece)
        self.touched = monotonic()
        if spool.remaining:
            return  # pause_writing fired; resume_writing brings us back
        self._drop_spool()
        if not self.body_received:
            client.resume_reading_for(P_BUFFER)
            return
        if chunked:
            up.write(LAST_CHUNK)
        self.request_done = True

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
        done = self.request_done or self.body_received or (
            head is not None and head.content_length <= 0 and not head.chunked)
        keep = self.keep_alive and done and not self.client.app.draining
        self.keep_alive = keep
        return keep

    cdef _connect(self, UpstreamServer exclude, bint fresh=False):
        cdef Balancer balancer = self.school.balancer
        cdef UpstreamServer server = balancer.pick(exclude)
        self.server = server
        self.attempts += 1
        if not fresh:
            conn = server.take_idle(monotonic())
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
        spool = self.spool
        length = -1
        if spool is not None and self.body_received and head.chunked:
            # The whole chunked body is here: forwarded decoded, with its
            # length, like nginx does (old upstreams may not take chunked).
            length = spool.size
        chunked = head.chunked and length < 0
        self.up_chunked = chunked
        parts = [_serialize_request_head(head, client.client_ip, client.proto, app.via, length)]
        if self.body_buf:
            if chunked:
                for piece in self.body_buf:
                    parts.append(b"%x\r\n" % len(piece))
                    parts.append(piece)
                    parts.append(CRLF)
            else:
                parts.extend(self.body_buf)
            self.body_buf = []
            self.body_buffered = 0
            client.resume_reading_for(P_BUFFER)
        if chunked and self.request_done and spool is None:
            parts.append(LAST_CHUNK)
        conn.writelines(parts)
        if spool is not None:
            self._pump()
        elif head.expect_continue and not self.request_done and not self.continue_sent:
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
        if self.response_headers is not None:
            head.headers.extend(self.response_headers)
        client.cork(_serialize_response_head(head, req.version, chunked, keep, app.via))

    cpdef on_response_body(self, bytes data):
        self.touched = monotonic()
        if not data:
            return  # framed as a chunk, an empty piece would end the body
        if self.out_chunked:
            self.client.corklines([b"%x\r\n" % len(data), data, CRLF])
        else:
            self.client.cork(data)

    cpdef on_response_end(self, UpstreamConnection conn, bint reusable):
        cdef UpstreamServer server = self.server
        server.inflight -= 1
        server.record_success()
        self.upstream = None
        if reusable and self.request_done and not self.is_connect:
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
        if conn.requests > 0 and conn._raw_head == 0:
            # A pooled connection that ended before any byte of an answer:
            # most likely the upstream closed it, idle, as the request went
            # out. That dates its keep-alive timeout; the server is fine.
            server.observe_closed(self.sent_at - conn.idle_since)
        else:
            server.record_failure(monotonic())
        head = self.head
        replayable = head.idempotent and head.content_length <= 0 and not head.chunked
        if replayable and self.attempts < 2 and not self.continue_sent:
            self.state = S_CONNECTING
            # On a new connection: another pooled one may be just as stale.
            self._connect(server, True)
            return
        self._unavailable()

    cpdef on_upstream_write_paused(self):
        self.client.pause_reading_for(P_UPSTREAM)

    cpdef on_upstream_write_resumed(self):
        self.client.resume_reading_for(P_UPSTREAM)
        if self.spool is not None:
            self._pump()

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

    cpdef on_tunnel_established(self, UpstreamConnection conn, ResponseHead head):
        """A 2xx answer to CONNECT: the tunnel starts right after its head
        (RFC 9110 section 9.3.6), exactly as after a 101."""
        self.touched = monotonic()
        self.tunnel_buf = [_serialize_response_head(
            head, self.head.version, False, True, self.client.app.via)]
        self.on_upstream_upgraded(b"")

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
        self._drop_spool()
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
        if self.spool is not None:
            self._drop_spool()
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
        self.error = None
        self._chunks = None
        self._reset()

    cdef _reset(self):
        """Ready for the next exchange's response."""
        self._phase = R_HEAD
        self._pending_cr = False
        self._headers = []
        self._reason = b""
        self._n_headers = 0
        self._hdr_bytes = 0
        self._raw_head = 0
        self._tail = b""
        self._body_left = -1
        self._chunked = False
        self._reusable = False
        # True while the current response is delimited by the upstream closing.
        self._until_close = False
        # HEAD: llhttp would wait for Content-Length body bytes that never
        # come, so the response ends at its head and the parser is replaced.
        self._head_only = False
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
        cdef UpstreamServer server = self.server
        cdef ClientProtocol client
        cdef Py_ssize_t n = len(data), pos = 0, cut, end, raw
        cdef bytes tail
        cdef int phase
        cdef bint leftover = False
        cdef object view = None
        if ex is None:
            # Bytes on an idle connection: the rest of a response that ran
            # past its end, or the upstream closing (some send a 408 first).
            # Either way the connection cannot carry another request.
            self.abort()
            return
        if self.tunnel:
            ex.on_tunnel_upstream_data(data)
            return
        client = ex.client
        # Each turn feeds llhttp one piece that ends where this side's own
        # framing says a head or body ends, so that (1) the raw bytes of a
        # head are counted before llhttp buffers them (an unfinished header
        # line is held inside httptools, where no callback sees it), (2) a
        # chunked body's size and trailer lines are measured (llhttp skips
        # chunk extensions without a limit), and (3) nothing after the end
        # of the response reaches the parser: llhttp would go on parsing it
        # as the next response of whatever request uses this connection
        # next. Every turn consumes at least one byte or stops.
        while pos < n:
            phase = self._phase
            if phase == R_HEAD and self._raw_head == 0 and (
                    self._pending_cr or data[pos] == 13 or data[pos] == 10):
                # Empty lines before the status line, as before a request line.
                cut = _skip_empty_lines(data, pos, &self._pending_cr)
                if cut < 0:
                    self._fail(_HeadError(502, "bare CR or LF before the upstream status line"))
                    break
                pos = cut
                continue
            cut = n - pos
            if phase == R_HEAD:
                tail = self._tail
                if tail:  # a head continued from the last read (pos is 0)
                    end = (tail + data).find(_CRLFCRLF)
                    if end >= 0:
                        end += 4 - len(tail)  # >= 1: the tail is shorter than CRLFCRLF
                else:
                    end = data.find(_CRLFCRLF, pos)
                    if end >= 0:
                        end += 4 - pos
                if end >= 0:
                    cut = end
                    self._tail = b""
                else:
                    self._tail = (tail + data[max(pos, n - 3):])[-3:]
                raw = self._raw_head + cut
                self._raw_head = raw
                if raw > server.head_budget:
                    self._fail(_HeadError(502, "upstream response head too large"))
                    break
            elif phase == R_BODY:
                if self._chunked:
                    try:
                        cut = self._chunks.feed(data[pos:] if pos else data)
                    except _ChunkError as err:
                        self._fail(_HeadError(502, f"upstream chunked framing: {err.reason}"))
                        break
                elif self._body_left >= 0:
                    if self._body_left < cut:
                        cut = <Py_ssize_t>self._body_left
                    self._body_left -= cut
                if cut <= 0:
                    # This side's framing ended the body but llhttp did not:
                    # the two read the message differently.
                    self._fail(_HeadError(502, "upstream response framing is ambiguous"))
                    break
            else:  # R_DONE: bytes after the end of the response
                leftover = True
                break
            try:
                if cut == n:
                    self.parser.feed_data(data)
                else:
                    # A view: no copy of a body that follows its head.
                    if view is None:
                        view = memoryview(data)
                    self.parser.feed_data(view[pos:pos + cut])
            except HttpParserUpgrade as upg:
                if self.exchange is ex:
                    ex.on_upstream_upgraded(data[pos + <Py_ssize_t>upg.args[0]:])
                break
            except HttpParserError as exc:
                if self.exchange is not ex:
                    break  # already ended inside a callback
                if self._phase == R_DONE:
                    self.error = None
                    leftover = True  # llhttp went on into a second response
                    break
                err = self.error
                self.error = None
                if err is None:
                    ctx = exc.__context__
                    err = ctx if isinstance(ctx, _HeadError) else _HeadError(
                        502, f"invalid response from upstream: {exc}")
                self._fail(err)
                break
            if self.exchange is not ex:
                break  # ended inside a callback (a 101 nobody asked for)
            pos += cut
            if self.tunnel:
                # A 2xx to CONNECT ended with that head: the rest is the tunnel's.
                if pos < n:
                    ex.on_tunnel_upstream_data(data[pos:])
                break
        if self._phase == R_DONE and self.exchange is ex:
            self._end_response(leftover)
        client.flush()

    def eof_received(self):
        cdef Exchange ex = self.exchange
        if ex is not None and self._until_close and not self.tunnel:
            self.exchange = None
            self.closed = True
            self._reset()
            ex.on_response_end(self, False)
            ex.client.flush()
        elif ex is not None and self.tunnel:
            ex.on_tunnel_upstream_eof()
            return True
        return False

    def connection_lost(self, exc):
        cdef Exchange ex
        cdef bint ours = self.closed
        self.closed = True
        ex = self.exchange
        if ex is None:
            if self.server.forget(self) and not ours:
                # The upstream closed it while it was idle in the pool: how
                # long it had been idle dates the upstream's keep-alive timeout.
                self.server.observe_closed(monotonic() - self.idle_since)
            return
        self.server.forget(self)
        self.exchange = None
        if self.tunnel:
            ex.on_tunnel_upstream_lost()
        elif self._until_close:
            self._reset()
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
    def on_message_begin(self):
        if self._phase == R_DONE:
            # A second response in the bytes of one: stop llhttp here.
            self._refuse(_HeadError(502, "upstream sent more than one response"))
        self._headers = []
        self._reason = b""
        self._n_headers = 0
        self._hdr_bytes = 0

    def on_status(self, bytes reason):
        reason = self._reason + reason if self._reason else reason
        self._reason = reason
        # "HTTP/1.1 200 " + reason is the status line.
        if len(reason) + 13 > self.server.max_status_line:
            self._refuse(_HeadError(502, "upstream status line too long"))

    def on_header(self, bytes name, bytes value):
        cdef UpstreamServer server = self.server
        cdef Py_ssize_t n = self._n_headers + 1
        self._n_headers = n
        self._hdr_bytes += len(name) + len(value) + 4
        if n > server.max_headers:
            self._refuse(_HeadError(502, "too many upstream response header or trailer fields"))
        if self._phase == R_HEAD:
            self._headers.append((name, value))
        elif self._hdr_bytes > server.max_header_bytes:
            # Trailer fields are counted like a head, then dropped: the
            # gateway re-frames bodies and forwards no trailers.
            self._refuse(_HeadError(502, "upstream trailer section too large"))

    def on_headers_complete(self):
        cdef UpstreamServer server = self.server
        cdef ResponseHead head
        cdef Exchange ex
        cdef int status
        if self._hdr_bytes > server.max_header_bytes:
            self._refuse(_HeadError(502, "upstream response header section too large"))
        p = self.parser
        headers = self._headers
        reason = self._reason
        self._headers = []
        self._reason = b""
        self._n_headers = 0
        self._hdr_bytes = 0
        ex = self.exchange
        if ex is None:
            return
        head = _parse_response_head(p.get_status_code(), reason, p.get_http_version(), headers)
        status = head.status
        if status < 200:
            self._interim = True
            ex.on_interim_response(self, head)
            return
        keep_alive = head.header(b"keep-alive")
        if keep_alive is not None:
            server.learn_keep_alive(keep_alive)
        self._phase = R_BODY
        if ex.is_connect and status < 300:
            if head.content_length >= 0 or head.chunked:
                # A 2xx to CONNECT has no framing (RFC 9110 9.3.6): one that
                # claims some would be read two ways.
                self._refuse(_HeadError(502, "upstream framed its answer to CONNECT"))
            ex.on_tunnel_established(self, head)
            return
        if status != 204 and status != 304:
            if ex.is_head:
                self._head_only = True
            elif head.chunked:
                chunks = self._chunks
                if chunks is None:
                    chunks = self._chunks = _ChunkedFraming(server.max_chunk_ext,
                                                            server.max_header_bytes)
                else:
                    chunks.reset()
                self._chunked = True
            elif head.content_length >= 0:
                self._body_left = head.content_length
            else:
                self._until_close = True
        ex.on_response_head(self, head)
        if self._head_only:
            # The answer to HEAD ends at its head, whatever it announces.
            self._reusable = head.keep_alive
            self._phase = R_DONE

    def on_body(self, bytes data):
        ex = self.exchange
        if ex is not None and data:
            ex.on_response_body(data)

    def on_message_complete(self):
        if self._interim:
            self._interim = False
            return
        if self._phase != R_BODY:
            return  # a HEAD answer already ended at its head
        self._until_close = False
        self._reusable = self.parser.should_keep_alive()
        self._phase = R_DONE

    # -- internals ----------------------------------------------------------
    cdef _end_response(self, bint leftover):
        """The response is complete: hand the connection back with the
        verdict on reuse. Bytes after the response's end, or a HEAD answer
        that announced a body, mean the upstream's framing cannot be trusted
        on this connection: it is closed, never pooled."""
        cdef Exchange ex = self.exchange
        cdef bint reusable = self._reusable and not leftover
        self.exchange = None
        if self._head_only:
            # llhttp is still waiting for the body the head announced.
            self.parser = HttpResponseParser(self)
        self._reset()
        ex.on_response_end(self, reusable)

    cdef _refuse(self, object err):
        # Raised inside an httptools callback; data_received picks it up.
        self.error = err
        raise err

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


cdef inline double _reuse_margin(double timeout) noexcept:
    cdef double margin = timeout * _REUSE_MARGIN_SHARE
    return margin if margin > _REUSE_MARGIN else _REUSE_MARGIN


cdef double _keep_alive_timeout(bytes value):
    # The timeout parameter of a Keep-Alive header, in seconds, or -1.
    for part in value.split(b","):
        name, eq, arg = part.partition(b"=")
        if eq and name.strip().lower() == b"timeout":
            arg = arg.strip().strip(b'"')
            if 0 < len(arg) <= 9 and arg.isdigit():
                return int(arg)
            return -1.0
    return -1.0


cdef class UpstreamServer:
    """One upstream host:port: its idle keep-alive pool and health state."""

    def __init__(self, str host, int port, *, Py_ssize_t keepalive, double connect_timeout,
                 double idle_timeout, Py_ssize_t max_buffer, Py_ssize_t max_status_line,
                 Py_ssize_t max_header_bytes, Py_ssize_t max_headers, Py_ssize_t max_chunk_ext):
        self.host = host
        self.port = port
        self.addr = f"{host}:{port}"
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_buffer = max_buffer
        self.set_limits(max_status_line, max_header_bytes, max_headers, max_chunk_ext)
        # LIFO: the most recently used connection is the least likely to
        # have been closed by the upstream's own idle timeout.
        self.idle = _deque()
        self.inflight = 0
        self.total = set()
        self.failures = 0
        self.down_until = 0.0
        self.loop = None
        # What is known about how long the upstream keeps an idle
        # connection open (seconds; negative: nothing known).
        self.keep_alive_timeout = -1.0
        self.closed_idle = -1.0
        self.open_idle = 0.0

    cpdef set_limits(self, Py_ssize_t max_status_line, Py_ssize_t max_header_bytes,
                     Py_ssize_t max_headers, Py_ssize_t max_chunk_ext):
        self.max_status_line = max_status_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_chunk_ext = max_chunk_ext
        # Raw bytes the heads of one exchange (1xx ones included) may take.
        self.head_budget = max_status_line + max_header_bytes

    cpdef bint available(self, double now):
        return now >= self.down_until

    # -- keep-alive timeout ---------------------------------------------------
    cpdef learn_keep_alive(self, bytes value):
        cdef double timeout = _keep_alive_timeout(value)
        if timeout >= 0:
            self.keep_alive_timeout = timeout

    cpdef observe_closed(self, double idle):
        if self.closed_idle < 0 or idle < self.closed_idle:
            self.closed_idle = idle
        if self.open_idle > idle:
            self.open_idle = idle

    cpdef observe_open(self, double idle):
        if idle > self.open_idle:
            self.open_idle = idle
        if 0 <= self.closed_idle < idle:
            # A connection outlived the idle time at which another one was
            # closed: that close was not the idle timeout (a restart, a
            # crash, a per-connection request limit), so it says nothing.
            self.closed_idle = -1.0

    cpdef double reuse_limit(self):
        cdef double limit = self.idle_timeout, t, bound
        t = self.keep_alive_timeout
        if t >= 0:
            bound = t - _reuse_margin(t)
            if bound < limit:
                limit = bound
        t = self.closed_idle
        if t >= 0:
            bound = t - _reuse_margin(t)
            if bound < limit:
                limit = bound
        elif self.keep_alive_timeout < 0:
            # Nothing learned yet: reuse only within what was seen to survive.
            t = self.open_idle
            bound = t - _reuse_margin(t)
            if bound < _UNPROVEN_IDLE:
                bound = _UNPROVEN_IDLE
            if bound < limit:
                limit = bound
        return limit

    # -- the pool ---------------------------------------------------------------
    cpdef UpstreamConnection take_idle(self, double now):
        cdef UpstreamConnection conn
        cdef double limit
        idle = self.idle
        if not idle:
            return None
        limit = self.reuse_limit()
        while idle:
            conn = idle[-1]
            if conn.closed:
                idle.pop()
                continue
            if now - conn.idle_since >= limit:
                # The newest is too old to trust, so all are. They stay until
                # the upstream or upstream_idle closes them: when that
                # happens is what keeps the estimate current.
                return None
            idle.pop()
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
        idle = self.idle
        if conn.closed or self.keepalive <= 0:
            conn.close()
            return
        if len(idle) >= self.keepalive:
            # Full: the oldest goes, being the least likely to be reused.
            (<UpstreamConnection>idle.popleft()).close()
        conn.requests += 1
        conn.idle_since = now
        conn.resume_reading()
        idle.append(conn)

    cpdef bint forget(self, UpstreamConnection conn):
        self.total.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            return False
        return True

    cpdef reap_idle(self, double now):
        cdef double deadline = now - self.idle_timeout
        cdef UpstreamConnection conn
        idle = self.idle
        # Oldest first (left end); stop at the first one still fresh.
        while idle and (<UpstreamConnection>idle[0]).idle_since < deadline:
            idle.popleft().close()
        while idle:
            conn = idle[0]
            if not conn.closed:
                # Still open after this long idle (an upstream's close would
                # have been read at once): the timeout is longer.
                self.observe_open(now - conn.idle_since)
                break
            idle.popleft()

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
