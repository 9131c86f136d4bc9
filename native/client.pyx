# cython: wraparound=True, nonecheck=True
# wraparound: Python index semantics here (queue[-1], piece[-3:]), where speed
# does not matter. nonecheck: a typed attribute that is unexpectedly None
# (say self.server on a path the state machine was thought to exclude) raises
# AttributeError in one connection's callback instead of crashing the worker
# with every connection on it; measured at no cost within noise (bench.load
# --quick, alternating builds: 35.5k/34.4k req/s without, 38.8k/37.7k with).
"""The client side of the proxy: one accepted client connection, the
framing verdict on each request it sends, its limits and timeouts.

The top of the request's walk (here -> exchange.pyx -> upstream.pyx): each
complete request head becomes an Exchange queued on the connection, which
reaches its client back through ClientLink (link.pxd). Re-exported and
documented by gateway.proxy.client; stub: gateway/_native/client.pyi.

These are cdef classes (attributes declared in native/gateway/_native/*.pxd)
because this code runs several times per request and, as plain Python, was
the largest user-space cost of the worker (perf: the interpreter running
these callbacks). As cdef classes their attributes are struct fields and the
calls between them are C calls.

They do not subclass asyncio.Protocol (a cdef class cannot): uvloop calls
protocol methods by name, and httptools looks its callbacks up by attribute
name, so those stay `def` methods.
"""

# Imported under private names: the module exports only the class and
# constants in gateway/_native/client.pyi.
import re as _re

import httptools as _httptools

from gateway._native.head import HeadError as _HeadError
from gateway._native.head import parse_request_head as _parse_request_head

from gateway._native.accesslog cimport D_REFUSED
from gateway._native.context cimport Context
from gateway._native.head cimport RequestHead
from gateway._native.link cimport *
from gateway._native.exchange cimport Exchange


cdef extern from "sys/ioctl.h":
    # Unsent bytes in a TCP socket's send queue (Linux: SIOCOUTQ, tcp(7)).
    int TIOCOUTQ
    int ioctl(int fd, unsigned long request, ...)

from gateway.proxy.chunks import ChunkError as _ChunkError
from gateway.proxy.chunks import ChunkedFraming as _ChunkedFraming
from gateway.proxy.spool import PIECE as _PIECE
from gateway.proxy.spool import RESPONSE_STATS as _RESPONSE_STATS
from gateway.proxy.spool import BodySpool as _BodySpool


IDLE, HEAD, BODY, UPGRADE_WAIT, BROKEN, LINGER, UPGRADED, CLOSED = (
    C_IDLE, C_HEAD, C_BODY, C_UPGRADE_WAIT, C_BROKEN, C_LINGER, C_UPGRADED, C_CLOSED)
LINGER_SECONDS = 2.0

cdef object HttpParserUpgrade = _httptools.HttpParserUpgrade
cdef object HttpParserError = _httptools.HttpParserError
cdef object HttpRequestParser = _httptools.HttpRequestParser
# The parser's methods called per request, looked up once: called through
# these, a call skips the by-name method lookup. Only ever on an object of
# exactly that type (an unbound Cython method does not check its `self`).
cdef object _feed_data = _httptools.HttpRequestParser.feed_data
cdef object _get_method = _httptools.HttpRequestParser.get_method

# What a connection does once its response spool has drained (_drain_then):
# an ending asked for while the spool still held bytes waits for them.
cdef enum:
    D_NONE = 0
    D_CLOSE = 1
    D_LINGER = 2
    D_WRITE_EOF = 3


cdef class ClientProtocol(ClientLink):
    """One accepted client connection (see gateway/proxy/client.py)."""

    def __init__(self, app, bytes proto=b"http"):
        self.app = app
        self.ctx = app.ctx
        self.proto = proto
        self.transport = None
        # The parser exists while requests flow; an idle keep-alive
        # connection gives it back (_trim_idle) and its next bytes make a new one.
        self.parser = HttpRequestParser(self)
        # A list, not a deque: it holds one exchange, or a few pipelined,
        # and an empty list is 56 bytes where an empty deque is 760 (its
        # first block is allocated with it) on every idle connection.
        self.queue = []
        # Response bytes produced while handling one upstream read, sent as
        # one writev by flush(): a head and its body leave in one syscall.
        # None while nothing is corked, so an idle connection holds no list.
        self.out = None
        # The exchange whose request body is still being parsed.
        self.current = None
        self.tunnel = None
        self.phase = C_IDLE
        self.since = 0.0
        self.touched = 0.0
        self.pause_mask = 0
        self.write_paused = False
        self.upstream_held = False
        # Response spooling (see flush): created only once the client falls
        # behind, so a client that reads costs nothing here.
        self.outspool = None
        self.resp_memory = self.ctx.max_buffer
        self.resp_max = 0  # set with the school (App.route)
        self._drain_then = D_NONE
        self._send_since = 0.0
        self._send_sent = -1
        self._send_buf = 0
        self._send_queued = -1
        # Looked up when first needed (_check_send): asking uvloop for the
        # socket creates and keeps a socket-like object per connection.
        self._fd = -2
        self.eof = False
        self.error = None
        self.client_ip = b""
        self.client_key = b""
        # The school this connection counts against (max_connections), -1
        # until its first routed request.
        self.school = -1
        self.trusted_peer = False
        self._url = b""
        self._headers = None  # made by on_message_begin
        self._n_headers = 0
        self._raw_head = 0
        self._hdr_bytes = 0
        self._body_left = -1
        self._cl_left = 0
        self._tail = b""
        self._line = None
        self._pending_cr = False
        # Made with the connection's first chunked request body: most
        # connections never send one.
        self.chunks = None

    # -- asyncio protocol -------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = _ip_bytes(peer[0]) if isinstance(peer, tuple) else b"unix"
        self.client_key = self.client_ip
        limit = self.ctx.max_buffer
        transport.set_write_buffer_limits(high=limit, low=limit // 4)
        self.since = monotonic()
        self.app.connection_opened(self)

    def data_received(self, bytes data):
        cdef int phase = self.phase
        cdef Py_ssize_t cut, end, raw
        cdef bytes piece
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
                cut = skip_empty_lines(data, 0, &self._pending_cr)
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
                    if 0 <= self._body_left < self.chunks.remaining:
                        # A chunk announced beyond max_body: refused now, not
                        # after reading up to the limit.
                        self._protocol_error(_HeadError(413, "request body too large"))
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
                end = head_end(self._tail, data, 0)
                if 0 <= end < cut:
                    cut = end
                # httptools holds a header line internally until it ends, so
                # a line that never ends is bounded here, by the raw bytes of
                # the current head (reset when a head completes).
                raw = self._raw_head + cut
                self._raw_head = raw
                if raw > self.ctx.head_budget:
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
            parser = self.parser
            if parser is None:
                parser = self.parser = HttpRequestParser(self)
            try:
                if type(parser) is HttpRequestParser:
                    _feed_data(parser, piece)
                else:
                    parser.feed_data(piece)
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
        if self.outspool is not None:
            # Half-closed while its spool still holds a response: the spool
            # is sent first (the client may still be reading), then closed.
            if not queue:
                self._defer(D_CLOSE)
            return True
        # With nothing owed, let the transport close; otherwise finish
        # answering what was asked (the client may only have half-closed),
        # then close.
        return bool(queue)

    def connection_lost(self, exc):
        cdef Exchange ex
        self.phase = C_CLOSED
        self._drop_outspool()  # a client gone away costs nothing more
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
        self.write_paused = True
        if self.resp_max <= 0 or self.tunnel is not None:
            # No spooling (response_buffer_max 0, or a tunnel, whose bytes
            # are not a response): the upstream waits for the client.
            self._hold_upstream()
        # Otherwise what comes next goes to the spool (flush), and the
        # upstream is paused only once the spool is over resp_max.

    def resume_writing(self):
        self.write_paused = False
        if self.outspool is not None:
            self._drain_spool()
            if self.outspool is not None or self.write_paused:
                return  # over the mark again: the next resume_writing goes on
        self._output_drained()

    # -- httptools callbacks ------------------------------------------------
    def on_message_begin(self):
        self.phase = C_HEAD
        # httptools calls back only from inside data_received, which read
        # the clock into `touched` for this very read.
        self.since = self.touched
        self._url = b""
        self._headers = []
        self._n_headers = 0
        self._hdr_bytes = 0

    def on_url(self, bytes url):
        url = self._url + url if self._url else url
        self._url = url
        if len(url) > self.ctx.max_request_line:
            self._fail(_HeadError(414, "request line too long"))

    def on_header(self, bytes name, bytes value):
        cdef Py_ssize_t n = self._n_headers + 1
        self._n_headers = n
        self._hdr_bytes += len(name) + len(value) + 4
        if n > self.ctx.max_headers:
            self._fail(_HeadError(431, "too many request headers"))
        if self.phase == C_HEAD:
            # (Trailer fields of a chunked body are counted, not kept.)
            self._headers.append((name, value))

    def on_headers_complete(self):
        cdef RequestHead head
        cdef Exchange ex
        cdef Context ctx = self.ctx
        cdef long long max_body = ctx.max_body
        if self._hdr_bytes > ctx.max_header_bytes:
            self._fail(_HeadError(431, "request header block too large"))
        self._raw_head = 0
        # The version from the request line's bytes when they are at hand
        # (see link.version_at), else from the parser.
        version = request_line_version(self._line)
        self._line = None
        p = self.parser
        if version is None:
            version = p.get_http_version()
        try:
            head = _parse_request_head(
                _get_method(p) if type(p) is HttpRequestParser else p.get_method(),
                self._url, version,
                                      self._headers, ctx.reject_underscore)
        except _HeadError as err:
            self._fail(err)
        self._headers = None  # handed over; on_message_begin makes the next
        if max_body and head.content_length > max_body:
            self._fail(_HeadError(413, "request body too large"))
        self._body_left = max_body or -1
        self.phase = C_BODY
        # The framing verdict for this message, taken once from its head.
        self._chunked = head.chunked
        if head.chunked:
            if self.chunks is None:
                self.chunks = _ChunkedFraming(ctx.max_chunk_ext, ctx.max_header_bytes)
            else:
                self.chunks.reset()
            self._cl_left = 0
        else:
            self._cl_left = head.content_length if head.content_length > 0 else 0
        # An ordinary request is routed by the typed context; App.route
        # (Python) takes the rest (Context.route says which).
        ex = ctx.route(self, head, self.school, self.trusted_peer)
        if ex is None:
            ex = self.app.route(self, head)
        self.current = ex
        queue = self.queue
        queue.append(ex)
        n = len(queue)
        if n == 1:
            self._start_next()
        elif n > self.ctx.max_pipeline:
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
        # What the head was parsed from is not needed any more; an idle
        # connection should not keep the last request's target alive.
        self._url = b""
        self._headers = None
        if self.phase < C_BROKEN:
            # (Not when a gateway answer already ended the connection while
            # this message was being parsed: nothing more is read then.)
            self.phase = C_IDLE
            self.since = self.touched  # (this read's time, as in on_message_begin)
        if ex is not None:
            ex.on_request_end()

    # -- used by exchanges ------------------------------------------------
    cpdef write(self, bytes data):
        if self.out:
            self.out.append(data)  # keep order behind what is corked
            return
        if self._to_spool():
            self._spool_parts([data])  # behind what the client has not taken yet
            return
        t = self.transport
        if t is not None:
            transport_write(t, data)

    cpdef writelines(self, list parts):
        if self.out:
            self.out.extend(parts)
            return
        if self._to_spool():
            self._spool_parts(parts)
            return
        t = self.transport
        if t is not None:
            transport_writelines(t, parts)

    cpdef cork(self, bytes data):
        if self.out is None:
            self.out = [data]
        else:
            self.out.append(data)

    cpdef corklines(self, list parts):
        if self.out is None:
            self.out = list(parts)
        else:
            self.out.extend(parts)

    cpdef Py_ssize_t cork_mark(self) except -1:
        return len(self.out) if self.out is not None else 0

    cpdef uncork(self, Py_ssize_t mark):
        if self.out is not None:
            del self.out[mark:]

    cpdef flush(self):
        cdef list out = self.out
        if out:
            self.out = None
            self.flushes += 1
            if self._to_spool():
                # The client is behind: the spool takes it, and the upstream
                # goes on at its own pace (pausing it would hold its slot).
                self._spool_parts(out)
                return
            t = self.transport
            if t is not None:
                if len(out) == 1:
                    transport_write(t, out[0])
                else:
                    transport_writelines(t, out)

    cpdef write_eof(self):
        self.flush()
        if self._defer(D_WRITE_EOF):
            return
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

    cpdef exchange_done(self, ExchangeLink link):
        cdef Exchange ex = <Exchange>link
        queue = self.queue
        if queue and queue[0] is ex:
            del queue[0]
        if not ex.keep_alive or (self.phase == C_BROKEN and not queue):
            self._close_after_response(ex)
            return
        if self.pause_mask & P_PIPELINE and len(queue) <= self.ctx.max_pipeline:
            self.resume_reading_for(P_PIPELINE)
        if queue:
            self._start_next()
        elif self.eof or (self.phase == C_IDLE and self.ctx.draining):
            self.close()
        elif self.phase == C_IDLE:
            self.since = monotonic()

    cpdef list enter_tunnel(self, ExchangeLink link):
        """101 received: from now on bytes are copied, not parsed. Returns
        what the client sent after its upgrade request, for the upstream."""
        cdef Exchange ex = <Exchange>link
        if self.queue and self.queue[0] is ex:
            del self.queue[0]
        self.tunnel = ex
        self.phase = C_UPGRADED
        self.touched = monotonic()
        pending = ex.pending or []
        ex.pending = None
        self.resume_reading_for(P_TUNNEL)
        return pending

    cpdef close(self):
        self.flush()
        if self._defer(D_CLOSE):
            return
        t = self.transport
        if t is not None and self.phase != C_CLOSED:
            t.close()

    cpdef abort(self):
        self.out = None
        self._drain_then = D_NONE
        self._drop_outspool()
        t = self.transport
        if t is not None and self.phase != C_CLOSED:
            t.abort()

    # -- timeouts (called by the worker's reaper) ----------------------------
    def check_timeouts(self, double now):
        cdef Exchange ex, cur
        cdef Context ctx = self.ctx
        phase = self.phase
        if phase == C_UPGRADED:
            if now - self.touched > ctx.tunnel_idle_timeout:
                self.close()
            return
        if phase == C_LINGER:
            if now - self.since > LINGER_SECONDS:
                self.abort()
            return
        stalled = self._stalled()
        if stalled:
            if self._check_send(now):
                return  # aborted
        else:
            self._send_since = 0.0
        queue = self.queue
        cur = self.current
        if phase == C_BODY and cur is not None and cur.state == S_RECEIVING \
                and not self.pause_mask and now > cur.body_deadline(self.app.timeouts):
            # A body received before admission took too long in all, however
            # steadily its bytes trickled in (the gap check below would not
            # catch a byte every few seconds).
            self._protocol_error(_HeadError(408, "request body took too long"))
            return
        if phase == C_BODY and not self.pause_mask and now - self.touched > ctx.client_body_timeout:
            # The client stopped sending the body it announced.
            self._protocol_error(_HeadError(408, "request body timeout"))
            return
        if queue:
            ex = queue[0]
            # `touched` moves with every byte either way, so a long upload or
            # download that keeps flowing never times out.
            # An upstream the gateway paused for this client (its spool is
            # full) is not late: resuming it restarts its clock.
            if ex.upstream is not None and (ex.state == S_SENT or ex.state == S_RESPONDING) \
                    and not ex.upstream.reading_paused \
                    and now - ex.touched > ctx.upstream_read_timeout:
                ex.timed_out()
            return
        if phase == C_HEAD:
            if now - self.since > ctx.header_timeout:
                self._protocol_error(_HeadError(408, "request header timeout"))
        elif phase == C_IDLE and not stalled:
            # (A connection still sending a response is not idle:
            # client_send watches it.)
            if now - self.since > ctx.keepalive_timeout:
                self.close()
            else:
                self._trim_idle()

    # -- internals ---------------------------------------------------------
    cdef _trim_idle(self):
        """Give back what only a request in progress needs, on a connection
        the reaper found idle between requests (nothing queued or owed):
        the parser (the llhttp state, its settings and six bound callbacks,
        about 0.9 KiB) is made again by the next bytes that arrive. llhttp
        holds nothing between two messages of a keep-alive connection, so a
        new parser reads the next request exactly as the old one would, and
        a CR or LF already taken before it (_pending_cr) stays here. Done by
        the reaper rather than after every response, so a busy connection
        keeps its parser and pays nothing."""
        self.parser = None
        self._tail = b""

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
        if line.find(b"\n", i) >= 0 or n > self.ctx.max_request_line + 16:
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
        # Its access-log line says refused, and why (gateway.server.logs
        # also warns about it, rate-limited).
        ex.decision = D_REFUSED
        ex.reason = err.reason
        cur = self.current
        if cur is not None and cur.state != S_RESPONDING:
            # The refusal's line names the request it cut short, which
            # gets no line of its own.
            ex.replaces = cur
            cur.logged = True
            # A half-read body must not reach the upstream as if complete.
            cur.on_client_lost()
            if cur in self.queue:
                self.queue.remove(cur)
        self.current = None
        self.queue.append(ex)
        if len(self.queue) == 1:
            self._start_next()

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
        if self.outspool is not None:
            # The ending waits for the spool (resume_writing); meanwhile
            # nothing more is parsed (and nothing started), and the decision
            # taken when it drains is to linger: the client may have sent
            # more requests that will not be answered.
            self._defer(D_LINGER)
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
        if self._defer(D_LINGER):
            return
        self.phase = C_LINGER
        self.since = monotonic()
        self.pause_mask = 0
        t.resume_reading()
        if t.can_write_eof():
            t.write_eof()
        else:
            t.close()


    # -- response spooling ----------------------------------------------------
    # Like nginx's proxy buffering to proxy_temp_path: once the client's
    # transport is over its high-water mark, what comes from the upstream goes
    # to a per-connection BodySpool (memory up to resp_memory, then an unnamed
    # temporary file) rather than pausing the upstream, so a response the
    # gateway can hold completes at the upstream's pace and gives its slot
    # and upstream connection back (Exchange._finish). While the spool holds
    # anything every later byte of the connection goes behind it, no next
    # exchange starts, and an ending (close, linger, write_eof) waits for it.

    cdef bint _to_spool(self):
        """Whether bytes for the client go to the spool: one exists, or the
        transport is over its mark and spooling is on (never in a tunnel,
        whose upstream is paused instead)."""
        return self.outspool is not None or (
            self.write_paused and self.resp_max > 0 and self.tunnel is None)

    cdef bint _stalled(self):
        """Whether the client's output is behind (over the transport's
        high-water mark, or bytes wait in the spool)."""
        return self.write_paused or self.outspool is not None

    cdef _start_next(self):
        """Start the exchange at the head of the queue, unless the output is
        stalled: then _output_drained starts it, so one connection holds at
        most one response's spool however much it pipelines."""
        cdef Exchange ex
        if self._stalled() or self._drain_then != D_NONE or not self.queue:
            return
        ex = self.queue[0]
        if ex.state == S_WAITING:
            ex.start()

    cdef bint _defer(self, int what):
        """True if an ending must wait for the spool (it is then recorded
        and done by _output_drained)."""
        if self.outspool is None:
            return False
        self._drain_then = what
        if self.phase < C_BROKEN:
            self.phase = C_BROKEN  # read and drop from now on
        return True

    cdef _spool_parts(self, list parts):
        cdef long long size
        spool = self.outspool
        if spool is None:
            spool = _BodySpool(self.resp_memory, self.ctx.temp_dir, _RESPONSE_STATS)
            self.outspool = spool
        try:
            for piece in parts:
                spool.append(piece)
        except OSError:
            # A full disk: the response cannot be held, and part of it is
            # lost; cutting the connection is the only honest answer left.
            self.abort()
            return
        size = spool.size
        if size > self.resp_max and not self.upstream_held:
            # The spool is at its bound (all it ever held counts, so the
            # file never grows past it): the upstream waits until the client
            # has taken all of it.
            self._hold_upstream()

    cdef _drain_spool(self):
        """Move spooled bytes into the transport until it is over its mark
        again (pause_writing) or the spool is empty (then it is freed)."""
        spool = self.outspool
        t = self.transport
        if spool is None or t is None:
            return
        while not self.write_paused:
            piece = spool.read(_PIECE)
            if not piece:
                break
            t.write(piece)
        if not spool.remaining:
            self._drop_outspool()

    cdef _drop_outspool(self):
        spool = self.outspool
        if spool is not None:
            self.outspool = None
            spool.close()

    cdef _hold_upstream(self):
        cdef Exchange ex
        self.upstream_held = True
        ex = self.queue[0] if self.queue else self.tunnel
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    cdef _release_upstream(self):
        cdef Exchange ex
        if not self.upstream_held:
            return
        self.upstream_held = False
        ex = self.queue[0] if self.queue else self.tunnel
        if ex is not None and ex.upstream is not None:
            # The time it was paused for this client is not the upstream's:
            # its upstream_read clock starts again.
            ex.touched = monotonic()
            ex.upstream.resume_reading()

    cdef _output_drained(self):
        """The client has taken everything (the spool is gone and the
        transport under its mark): resume the upstream, carry out an ending
        that waited, or start the next exchange."""
        cdef int what = self._drain_then
        self._send_since = 0.0
        self._release_upstream()
        if what != D_NONE:
            self._drain_then = D_NONE
            if what == D_LINGER:
                self._linger()
            elif what == D_WRITE_EOF:
                self.write_eof()
            else:
                self.close()
            return
        if self.queue:
            self._start_next()
        elif self.phase == C_IDLE:
            self.since = monotonic()  # idle from now, not from the response's end

    cdef bint _check_send(self, double now) except -1:
        """client_send: abort a client whose output made no progress (the
        kernel's send queue did not shrink, nor the transport's buffer, nor
        the spool) for that long; True if it was aborted.

        The kernel's queue counts: with a send buffer of a few MB the
        socket turns writable again only once a large part of it has gone,
        which takes a slow but steady reader longer than client_send."""
        cdef long long sent = -1
        cdef Py_ssize_t buf = 0
        cdef int queued = -1
        spool = self.outspool
        if spool is not None:
            sent = spool.sent
        t = self.transport
        if t is not None:
            buf = t.get_write_buffer_size()
        if self._fd == -2:
            self._fd = _socket_fd(t)
        if self._fd >= 0 and ioctl(self._fd, TIOCOUTQ, &queued) != 0:
            queued = -1
        if self._send_since == 0.0 or sent != self._send_sent or buf < self._send_buf \
                or 0 <= queued < self._send_queued:
            self._send_since = now
            self._send_sent = sent
            self._send_buf = buf
            self._send_queued = queued
            return False
        self._send_buf = buf
        self._send_queued = queued
        if now - self._send_since > self.ctx.client_send_timeout:
            self.abort()
            return True
        return False


# Client addresses as bytes, one object per address: a school's clients
# mostly come from a few (NAT) addresses, and each connection keeps its own
# (client_ip, client_key) for as long as it is open. Bounded: emptied when full.
cdef dict _IP_BYTES = {}
cdef Py_ssize_t _IP_BYTES_MAX = 4096


cdef bytes _ip_bytes(str ip):
    cdef bytes b = _IP_BYTES.get(ip)
    if b is None:
        if len(_IP_BYTES) >= _IP_BYTES_MAX:
            _IP_BYTES.clear()
        b = _IP_BYTES[ip] = ip.encode()
    return b


cdef int _socket_fd(object transport):
    """The file descriptor of a transport's socket, -1 if it has none."""
    if transport is None:
        return -1
    sock = transport.get_extra_info("socket")
    try:
        return sock.fileno() if sock is not None else -1
    except (AttributeError, OSError, ValueError):
        return -1


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


