# cython: wraparound=True, nonecheck=True
# (wraparound and nonecheck: see native/client.pyx.)
"""One request/response exchange: admission, request buffering, the
upstream attempt (connect, retry), relaying the response, tunnels.

The middle of the request's walk (client.pyx -> here -> upstream.pyx): it
holds its client as a ClientLink and is an ExchangeLink to its upstream
connection (link.pxd). Re-exported and documented by gateway.proxy.exchange;
stub: gateway/_native/exchange.pyi.
"""

# Imported under private names: the module exports only the class and
# constants in gateway/_native/exchange.pyi.
import asyncio as _asyncio

from gateway._native.head import HeadError as _HeadError
from gateway._native.serialize import serialize_request_head as _serialize_request_head
from gateway._native.serialize import serialize_response_head as _serialize_response_head

from gateway._native.accesslog cimport D_ADMITTED, D_QUEUED, D_WAITING, D_429, D_LOCAL
from gateway._native.accesslog cimport keep_query, record, wanted
from gateway._native.context cimport AdmissionCore, Context, may_carry_cookie, wall_clock
from gateway._native.head cimport RequestHead, ResponseHead
from gateway._native.scheduler cimport Ticket
from gateway._native.stats cimport Stats
from gateway._native.link cimport *
from gateway._native.upstream cimport Balancer, UpstreamConnection, UpstreamServer

from gateway.proxy.spool import PIECE as _PIECE
from gateway.proxy.spool import BodySpool as _BodySpool
from gateway._native.scheduler import ADMITTED as _ADMITTED_STATE
from gateway._native.scheduler import Scheduler as _Scheduler

# The Scheduler's per-request methods, looked up once: called through these,
# a call skips the by-name lookup. Only on an object of exactly that type (an
# unbound Cython method does not check its `self`; see _admit).
cdef object _sched_request = _Scheduler.request
cdef object _sched_release = _Scheduler.release
cdef object _sched_next_deadline = _Scheduler.next_deadline

# The waiting-room ticket cookie's name (gateway.proxy.admission.COOKIE).
cdef bytes _COOKIE = b"schoolgate_ticket"
cdef int _ADMITTED = _ADMITTED_STATE


WAITING, ADMITTING, CONNECTING, SENT, RESPONDING, TUNNEL, DONE, RECEIVING = (
    S_WAITING, S_ADMITTING, S_CONNECTING, S_SENT, S_RESPONDING, S_TUNNEL, S_DONE, S_RECEIVING)

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CRLF = b"\r\n"

PAUSE_BUFFER = P_BUFFER        # body bytes buffered for an exchange without upstream,
                               # or a held body being forwarded before the rest is read
PAUSE_UPSTREAM = P_UPSTREAM    # the upstream transport's write buffer is full
PAUSE_PIPELINE = P_PIPELINE    # too many pipelined requests waiting
PAUSE_ADMISSION = P_ADMISSION  # waiting for admission: do not read the upload yet
PAUSE_TUNNEL = P_TUNNEL        # upgrade requested, 101 not yet received

TUNNEL_CLIENT_EOF = T_CLIENT_EOF
TUNNEL_UPSTREAM_EOF = T_UPSTREAM_EOF


cdef bint _offered(bytes offered, bytes chosen):
    """Whether `chosen` (a 101's Upgrade, lower-cased) is one of the
    protocols of the request's Upgrade list `offered` (lower-cased)."""
    if chosen is None:
        return False
    chosen = chosen.strip()
    for token in offered.split(b","):
        if token.strip() == chosen:
            return True
    return False


cdef class Exchange(ExchangeLink):
    """One request/response exchange (see gateway/proxy/exchange.py)."""

    def __init__(self, ClientLink client, RequestHead head, school, int klass):
        self.client = client
        self.head = head
        self.school = school
        self.klass = klass
        self.state = S_WAITING
        self.upstream = None
        self.server = None
        # Body bytes that came before an upstream was attached: made with the
        # first of them (most requests have none).
        self.body_buf = None
        self.body_buffered = 0
        self.request_done = False
        self.keep_alive = head.keep_alive if head is not None else False
        self.is_head = head is not None and head.method == b"HEAD"
        # Only reaches here for a school with allow_connect (App.route).
        self.is_connect = head is not None and head.method == b"CONNECT"
        self.out_chunked = False
        self.resp_mark = 0
        self.resp_flushes = -1
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
        # The access log's fields (_log).
        self.decision = -1
        self.reason = None
        self.status = 0
        self.queued = False
        self.queue_time = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.logged = False
        self.replaces = None
        self.began = monotonic()
        self.asked = 0.0
        self.asking = False
        # Telemetry (_count): the wait for its slot (seconds, -1: admission
        # off or never admitted), counted yet.
        self.queue_wait = -1.0
        self.counted = False

    # -- request side (driven by ClientProtocol) ----------------------------
    cpdef on_request_body(self, bytes data):
        cdef ClientLink client
        if not data:
            return  # framed as a chunk, an empty piece would end the body
        self.bytes_in += len(data)
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
                self._ask(False)
            return
        # Not started yet (pipelined), or queued with its body unread: what
        # the client sent anyway waits here, in order, bounded by max_buffer.
        if self.body_buf is None:
            self.body_buf = [data]
        else:
            self.body_buf.append(data)
        self.body_buffered += len(data)
        if self.body_buffered > self.client.ctx.max_buffer:
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
                self._ask(False)
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
        cdef ClientLink client = self.client
        app = client.app
        self._waited()  # a slot given back to read the body first: its wait ends
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
            self.body_buf = None
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
        self.decision = D_LOCAL
        self.reason = "the gateway could not store the request body"
        self.rejected(self.client.app.error_response(_HeadError(503, self.reason)))

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
        cdef ClientLink client = self.client
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
        self._ask(True)

    cdef _ask(self, bint native):
        """Ask for a slot (native: the frameless _admit, else the shell),
        noting when: an admission within the ask is at once, a later one
        came from the line (_waited)."""
        self.asked = monotonic()
        self.asking = True
        if native:
            self._admit()
        else:
            self.client.app.admission.admit(self)
        self.asking = False

    cdef _waited(self):
        """The answer to the last ask came now: if that was not within the
        ask, the request waited in line until now."""
        if self.asked > 0.0 and not self.asking:
            self.queued = True
            self.queue_time += monotonic() - self.asked
        self.asked = 0.0

    cdef _admit(self):
        """Admission.admit without a Python frame when the shell has
        nothing to add: no body to receive first, no second request, no
        waiting-room cookie, no class window boundary due. The Scheduler's
        decision is the one the shell would get; anything but ADMITTED goes
        on in the shell (Admission.decided: queue, waiting page)."""
        cdef AdmissionCore core = self.client.ctx.core
        cdef Ticket t
        cdef double now
        if self.school is None or self.body_first() or self.arrived_at > 0.0:
            core.shell.admit(self)
            return
        if not core.enabled:
            self.admitted()
            return
        if may_carry_cookie(self.head.headers, _COOKIE) or (
                core.held and self.school.index in core.held):
            # A ticket to read, or the school's waiting line to join.
            core.shell.admit(self)
            return
        if type(core.scheduler) is not _Scheduler:
            core.shell.admit(self)
            return
        controller = core.controller
        now = wall_clock()
        due = controller.shares_due
        if due is not None and now >= <double>due:
            core.shell.admit(self)  # the class shares change first
            return
        controller.now = now
        t = _sched_request(core.scheduler, self.school.index, self.klass, self.client.client_key,
                                   now, None, None)
        if t.state == _ADMITTED:
            self.ticket = t
            self.admitted()
        else:
            core.shell.decided(self, t, now, None)

    cdef _release(self):
        """Admission.release without a Python frame when the freed slot
        admits nothing and the shell's poll timer needs no move: none is
        armed and nothing is due, or the one armed is due no later than the
        scheduler's next deadline (the shell's _rearm would keep it; the
        controller's other deadlines are already in it, see below)."""
        cdef AdmissionCore core = self.client.ctx.core
        cdef Ticket t = self.ticket
        cdef double now
        controller = core.controller
        shell = core.shell
        if t.state != _ADMITTED or controller.shares_due is not None \
                or type(core.scheduler) is not _Scheduler \
                or (core.held and t.school in core.held):
            shell.release(self)
            return
        self.ticket = None
        now = wall_clock()
        controller.now = now
        admitted = _sched_release(core.scheduler, t, now, False)
        if admitted:
            shell.released(admitted)
            return
        due = _sched_next_deadline(core.scheduler)
        if shell._timer is None:
            if due is not None:
                shell.released(admitted)
        elif due is None or <double>due < <double>shell._timer_due:
            # (An armed timer is due no later than the controller's other
            # deadline, the allotment task's: every change of that is
            # followed by the shell's _rearm. A per-client bucket sweep keeps
            # a deadline pending under load, so this is the common case.)
            shell.released(admitted)

    cpdef admitted(self):
        if self.state != S_ADMITTING:
            return
        self._waited()
        if self.ticket is not None:
            # Admission is on: how long it waited for this slot.
            self.queue_wait = self.queue_time
        self.state = S_CONNECTING
        self._connect(None)

    cpdef rejected(self, bytes response):
        """Answer for the gateway (waiting page, upstream down). `response`
        must carry the Connection header matching self.keep_alive, which
        settle_keep_alive() fixed before it was rendered."""
        if self.state == S_DONE:
            return
        if self.state == S_ADMITTING:
            self._waited()
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
        keep = self.keep_alive and done and not self.client.ctx.draining
        self.keep_alive = keep
        return keep

    cdef _connect(self, UpstreamServer exclude, bint fresh=False):
        cdef Balancer balancer = self.school.balancer
        cdef UpstreamServer server = balancer.pick(exclude)
        cdef double now
        self.server = server
        self.attempts += 1
        if not fresh:
            now = monotonic()  # for the pool's check and the request's send
            conn = server.take_idle(now)
            if conn is not None:
                self._attach(conn, now)
                return
        _asyncio.get_running_loop().create_task(self._dial(server))

    async def _dial(self, UpstreamServer server):
        try:
            conn = await server.connect()
        except (TimeoutError, OSError) as err:
            server.record_failure(monotonic())
            server.connect_failures += 1
            if isinstance(err, TimeoutError):
                server.timeouts += 1
            if self.state != S_CONNECTING:
                return
            # Nothing of the request left the gateway: retrying is always safe.
            if self.attempts < 2 and len(self.school.balancer.servers) > 1:
                server.retries += 1
                self._connect(server)
            else:
                self._unavailable()
            return
        if self.state != S_CONNECTING:
            # The client went away while we dialed; keep the fresh connection.
            server.release(conn, monotonic())
            return
        self._attach(conn, monotonic())

    cdef _attach(self, UpstreamConnection conn, double now):
        cdef ClientLink client = self.client
        cdef RequestHead head = self.head
        cdef list parts
        self.upstream = conn
        conn.exchange = self
        self.server.inflight += 1
        self.state = S_SENT
        self.sent_at = self.touched = now
        if client.upstream_held:
            conn.pause_reading()  # the client's output is full
        spool = self.spool
        length = -1
        if spool is not None and self.body_received and head.chunked:
            # The whole chunked body is here: forwarded decoded, with its
            # length, like nginx does (old upstreams may not take chunked).
            length = spool.size
        chunked = head.chunked and length < 0
        self.up_chunked = chunked
        out = _serialize_request_head(head, client.client_ip, client.proto, client.ctx.via, length)
        if not self.body_buf and not (chunked and self.request_done and spool is None):
            # The common case, a head alone: no list to gather.
            conn.write(out)
            parts = None
        else:
            parts = [out]
        if self.body_buf:
            if chunked:
                for piece in self.body_buf:
                    parts.append(b"%x\r\n" % len(piece))
                    parts.append(piece)
                    parts.append(CRLF)
            else:
                parts.extend(self.body_buf)
            self.body_buf = None
            self.body_buffered = 0
            client.resume_reading_for(P_BUFFER)
        if parts is not None:
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
    cpdef on_interim_response(self, object up, ResponseHead head):
        cdef UpstreamConnection conn = <UpstreamConnection>up
        self.touched = monotonic()
        if head.status == 101:
            if self.head.upgrade is None or not _offered(self.head.upgrade, head.upgrade):
                # A 101 to a request that did not ask, or to a protocol it did
                # not offer (RFC 9110 7.8; h2c is never offered): unusable.
                conn.abort()
            else:
                self.status = 101
                self.tunnel_buf = [_serialize_response_head(
                    head, self.head.version, False, True, self.client.ctx.via)]
            return
        if head.status == 100 or self.head.version < 11:
            return  # 100 was answered by us; HTTP/1.0 clients get no 1xx
        self.client.cork(_serialize_response_head(head, 11, False, True, self.client.ctx.via))

    cpdef on_response_head(self, object up, ResponseHead head):
        cdef RequestHead req = self.head
        cdef ClientLink client = self.client
        cdef int status = head.status
        cdef bint keep, chunked
        self.state = S_RESPONDING
        self.status = status
        # (Called only from inside the upstream's data_received: its read_at
        # is now.)
        self.touched = (<UpstreamConnection>up).read_at
        cdef Context ctx = client.ctx
        keep = self.keep_alive and self.request_done and not ctx.draining
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
        # Until the client's output is flushed, this response can still be
        # taken back (on_upstream_lost) and answered with a page instead.
        self.resp_flushes = client.flushes
        self.resp_mark = client.cork_mark()
        self.status = status
        out = _serialize_response_head(head, req.version, chunked, keep, ctx.via)
        self.bytes_out += len(out)
        client.cork(out)

    cpdef on_response_body(self, bytes data):
        cdef bytes size
        # (Called only from inside the upstream's data_received.)
        self.touched = self.upstream.read_at
        if not data:
            return  # framed as a chunk, an empty piece would end the body
        if self.out_chunked:
            size = b"%x\r\n" % len(data)
            self.bytes_out += len(size) + len(data) + 2
            self.client.corklines([size, data, CRLF])
        else:
            self.bytes_out += len(data)
            self.client.cork(data)

    cpdef on_response_end(self, object up, bint reusable):
        cdef UpstreamConnection conn = <UpstreamConnection>up
        cdef UpstreamServer server = self.server
        cdef double now = monotonic()
        server.inflight -= 1
        server.record_success()
        self.upstream = None
        if reusable and self.request_done and not self.is_connect:
            server.release(conn, now)
        else:
            conn.close()
        if self.out_chunked:
            self.bytes_out += 5
            self.client.cork(LAST_CHUNK)
        self._finish(now)

    cpdef on_upstream_lost(self, object up, object exc):
        cdef UpstreamConnection conn = <UpstreamConnection>up
        cdef UpstreamServer server = self.server
        server.inflight -= 1
        self.upstream = None
        if self.state == S_DONE:
            return
        if self.state == S_RESPONDING:
            if self.client.flushes != self.resp_flushes:
                # Part of the response is already with the client; cutting
                # the connection is the only way left to say it is incomplete.
                self.reason = "the upstream closed before the response ended"
                self._log(self.status)
                self.state = S_DONE
                self.client.abort()
                return
            # Nothing of it has left the gateway (the upstream failed within
            # the read that brought the head): take it back and answer as if
            # no response had come.
            self.client.uncork(self.resp_mark)
            self.state = S_SENT
            self.status = 0
            self.bytes_out = 0
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
            server.retries += 1
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
        self.server.timeouts += 1
        conn = self.upstream
        if conn is not None:
            conn.exchange = None
            conn.abort()
            self.upstream = None
            self.server.inflight -= 1
        if self.state == S_RESPONDING:
            self.reason = "the upstream stopped sending (upstream_read)"
            self._log(self.status)
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
        if self.status == 0:
            self.status = 101
        conn.tunnel = True
        client = self.client
        # Counted as the tunnel opens: its hours are no request's duration.
        self._count(self.status)
        # A tunnel may stay open for hours: it counts against the school's
        # connections, not its request slots.
        if self.ticket is not None:
            client.app.admission.release(self)
        for piece in self.tunnel_buf:
            self.bytes_out += len(<bytes>piece)
        client.writelines(self.tunnel_buf)
        self.tunnel_buf = None
        if rest:
            client.write(rest)
        pending = client.enter_tunnel(self)
        if pending:
            conn.writelines(pending)

    cpdef on_tunnel_established(self, object up, ResponseHead head):
        """A 2xx answer to CONNECT: the tunnel starts right after its head
        (RFC 9110 section 9.3.6), exactly as after a 101."""
        self.touched = monotonic()
        self.status = head.status
        self.tunnel_buf = [_serialize_response_head(
            head, self.head.version, False, True, self.client.ctx.via)]
        self.on_upstream_upgraded(b"")

    cpdef on_tunnel_client_data(self, bytes data):
        self.bytes_in += len(data)
        if self.upstream is not None:
            self.upstream.write(data)

    cpdef on_tunnel_upstream_data(self, bytes data):
        self.bytes_out += len(data)
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
            self._log(self.status)
            self.state = S_DONE
            self.client.close()

    cpdef on_tunnel_upstream_lost(self):
        self.upstream = None
        self.server.inflight -= 1
        self._log(self.status)
        self.state = S_DONE
        self.client.close()

    cpdef on_client_lost(self):
        """The client connection is gone: release whatever this holds."""
        if not self.logged and self.state != S_DONE:
            if self.state == S_ADMITTING:
                self._waited()  # left the line
            if self.status > 0:
                if self.state == S_RESPONDING and self.reason is None:
                    self.reason = "the connection closed before the response ended"
                self._log(self.status)
            else:
                # nginx's "client closed request": nothing was answered.
                self.reason = "the client closed the connection"
                self._log(499)
        if not self.counted:
            # 499 (nginx's "client closed request") if no answer had begun.
            self._count(self.status or 499)
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
        self.decision = D_LOCAL
        self.reason = "upstream not answering"
        self.settle_keep_alive()
        self.rejected(self.client.app.unavailable_page(self))

    cdef _write_local(self):
        cdef bytes local = self.local
        self.state = S_RESPONDING
        if self.decision < 0:
            self.decision = D_LOCAL
        # "HTTP/1.1 NNN ...": the status the gateway chose.
        if len(local) >= 12:
            self.status = (local[9] - 48) * 100 + (local[10] - 48) * 10 + (local[11] - 48)
        self.bytes_out += len(local)
        self.client.write(local)
        self._finish(monotonic())

    cdef _finish(self, double now):
        """The exchange ended at `now` (monotonic)."""
        self._log(self.status, now)
        self.state = S_DONE
        self._count(self.status, now)
        if self.spool is not None:
            self._drop_spool()
        if self.ticket is not None:
            self._release()
        self.client.exchange_done(self)

    cdef _log(self, int status, double now=0.0):
        """Record this exchange's access-log line (once): its end, as far
        as the log is concerned (`now`, monotonic; 0: read the clock). A
        refusal that cut a half-read request short is named by that
        request's school, class and target."""
        cdef Exchange src = self.replaces if self.replaces is not None else self
        cdef RequestHead head = src.head
        cdef UpstreamServer server = self.server
        cdef int decision = self.decision
        cdef double up_ms = -1.0
        cdef long long size_in = src.bytes_in
        cdef bytes path = None, method = None
        cdef Py_ssize_t k
        cdef tuple pair
        if self.logged:
            return
        self.logged = True
        if decision < 0:
            decision = D_QUEUED if self.queued else D_ADMITTED
        elif decision == D_WAITING and status == 429:
            decision = D_429
        if not wanted(status, decision):
            return  # the log is off: none of the line's fields is built
        if now == 0.0:
            now = monotonic()
        if head is not None:
            method = head.method
            path = head.target if keep_query() or not head.path else head.path
            # The head as received, near enough: request line and fields.
            size_in += len(head.method) + len(head.target) + 13
            for pair in head._raw:
                size_in += len(<bytes>pair[0]) + len(<bytes>pair[1]) + 4
        school = src.school
        klass = None
        if school is not None:
            k = src.klass
            names = self.client.ctx.core.controller.class_names
            if 0 <= k < len(names):
                klass = names[k]
            school = school.name
        upstream = None
        if server is not None:
            if self.sent_at > 0.0:
                up_ms = (now - self.sent_at) * 1000.0
            upstream = server.addr
        record(wall_clock(), school, klass, method, path, status, decision,
               self.queue_time * 1000.0, self.reason, upstream, up_ms, size_in,
               self.bytes_out, (now - self.began) * 1000.0)

    cdef _count(self, int status, double now=0.0):
        """Add this exchange to the worker's counters, once (native/stats.pyx):
        school and class by current index, status, seconds from its head
        to `now` (monotonic; 0: read the clock), and its wait for a slot."""
        cdef Stats stats = self.client.ctx.core.stats
        school = self.school
        if self.counted:
            return
        self.counted = True
        if now == 0.0:
            now = monotonic()
        stats.record(-1 if school is None else school.index, self.klass, status,
                     now - self.began, self.queue_wait)
