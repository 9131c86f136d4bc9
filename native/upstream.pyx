# cython: wraparound=True, nonecheck=True
# (wraparound and nonecheck: see native/client.pyx.)
"""The upstream side of the proxy: one upstream connection (response
framing, its limits and reuse verdict), an upstream server's keep-alive pool
and health, and the balancer over a school's servers.

The bottom of the request's walk (client.pyx -> exchange.pyx -> here): it
calls back up to its exchange through ExchangeLink (link.pxd). Re-exported
and documented by gateway.proxy.upstream; stub: gateway/_native/upstream.pyi.
"""

# Imported under private names: the module exports only the classes and
# constants in gateway/_native/upstream.pyi.
import asyncio as _asyncio
import socket as _socket
from collections import deque as _deque

import httptools as _httptools

from gateway._native.head import HeadError as _HeadError
from gateway._native.head import parse_response_head as _parse_response_head

from gateway._native.head cimport ResponseHead
from gateway._native.link cimport ClientLink, ExchangeLink, head_end, monotonic, skip_empty_lines
from gateway._native.link cimport transport_write, transport_writelines, version_at

from gateway.proxy.chunks import ChunkError as _ChunkError
from gateway.proxy.chunks import ChunkedFraming as _ChunkedFraming

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
cdef object HttpResponseParser = _httptools.HttpResponseParser
# The parser's methods called per response, looked up once: called through
# these, a call skips the by-name method lookup. Only ever on an object of
# exactly that type (an unbound Cython method does not check its `self`):
# every parser here is one this module made; anything else is called by name.
cdef object _feed_data = _httptools.HttpResponseParser.feed_data
cdef object _get_status_code = _httptools.HttpResponseParser.get_status_code
cdef object _should_keep_alive = _httptools.HttpResponseParser.should_keep_alive


# Pieces of a read up to this size are fed to llhttp as bytes slices, larger
# ones as memoryview slices (data_received).
cdef Py_ssize_t _COPY_MAX = 2048


cdef inline _feed(object parser, object data):
    if type(parser) is HttpResponseParser:
        _feed_data(parser, data)
    else:
        parser.feed_data(data)
# The pool's deque methods, looked up once: called through the descriptor,
# a push or pop per request skips the by-name method lookup.
cdef object _deque_pop = _deque.pop
cdef object _deque_append = _deque.append


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
        self.read_at = 0.0
        self._chunks = None
        self._reset()

    cdef _reset(self):
        """Ready for the next exchange's response."""
        self._phase = R_HEAD
        self._pending_cr = False
        self._headers = None  # made by on_message_begin
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
        self._version_hint = None

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
        cdef ExchangeLink ex = self.exchange
        cdef UpstreamServer server = self.server
        cdef ClientLink client
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
        self.read_at = monotonic()
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
                cut = skip_empty_lines(data, pos, &self._pending_cr)
                if cut < 0:
                    self._fail(_HeadError(502, "bare CR or LF before the upstream status line"))
                    break
                pos = cut
                continue
            cut = n - pos
            if phase == R_HEAD:
                if self._raw_head == 0:
                    # The exchange's first head starts here (empty lines
                    # skipped above), with its status line's version.
                    self._version_hint = version_at(data, pos, n)
                tail = self._tail
                end = head_end(tail, data, pos)
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
                    _feed(self.parser, data)
                elif cut <= _COPY_MAX:
                    # A head, or a small body after its head: a copy costs
                    # less than a view (two objects, then one per slice).
                    _feed(self.parser, data[pos:pos + cut])
                else:
                    # A view: no copy of a large body that follows its head.
                    if view is None:
                        view = memoryview(data)
                    _feed(self.parser, view[pos:pos + cut])
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
        cdef ExchangeLink ex = self.exchange
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
        cdef ExchangeLink ex
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
        cdef ExchangeLink ex
        cdef int status
        if self._hdr_bytes > server.max_header_bytes:
            self._refuse(_HeadError(502, "upstream response header section too large"))
        p = self.parser
        headers = self._headers
        reason = self._reason
        # Handed over: the next head's on_message_begin makes a new list
        # (on_header adds to it only while a head is read).
        self._headers = None
        self._reason = b""
        self._n_headers = 0
        self._hdr_bytes = 0
        ex = self.exchange
        if ex is None:
            return
        version = self._version_hint
        if version is None:
            version = p.get_http_version()
        else:
            # Only the first head of an exchange starts where it was read;
            # a final head after a 1xx asks the parser.
            self._version_hint = None
        head = _parse_response_head(
            _get_status_code(p) if type(p) is HttpResponseParser else p.get_status_code(), reason, version, headers)
        status = head.status
        if status < 200:
            self._interim = True
            ex.on_interim_response(self, head)
            return
        server.learn_keep_alive(head.header(b"keep-alive"))
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
        p = self.parser
        self._reusable = (_should_keep_alive(p) if type(p) is HttpResponseParser
                          else p.should_keep_alive())
        self._phase = R_DONE

    # -- internals ----------------------------------------------------------
    cdef _end_response(self, bint leftover):
        """The response is complete: hand the connection back with the
        verdict on reuse. Bytes after the response's end, or a HEAD answer
        that announced a body, mean the upstream's framing cannot be trusted
        on this connection: it is closed, never pooled."""
        cdef ExchangeLink ex = self.exchange
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
        cdef ExchangeLink ex = self.exchange
        self.exchange = None
        self.abort()
        if ex is not None:
            ex.on_upstream_lost(self, err)

    cpdef write(self, bytes data):
        transport_write(self.transport, data)

    cpdef writelines(self, list parts):
        transport_writelines(self.transport, parts)

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
        self.connect_failures = 0
        self.retries = 0
        self.timeouts = 0

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
        """The latest response's Keep-Alive header (None: it had none) says
        what the upstream's idle timeout is now. Only the latest counts: a
        value once seen (timeout=0 on one answer, say) must not switch the
        pool off for good, and an unreadable one says nothing."""
        self.keep_alive_timeout = _keep_alive_timeout(value) if value is not None else -1.0

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
            _deque_pop(idle)
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
        _deque_append(idle, conn)

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
