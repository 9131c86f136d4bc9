# Declarations for native/exchange.pyx, built as gateway._native.exchange (documented
# in gateway/_native/exchange.pyi). Attributes read or set by the Python shell
# (app.py, admission.py, worker.py, tests) are `public`.

from gateway._native.head cimport RequestHead
from gateway._native.link cimport ClientLink, ExchangeLink
from gateway._native.upstream cimport UpstreamConnection, UpstreamServer

# Inherited from ExchangeLink: client (the ClientProtocol), is_head,
# is_connect, and the on_* methods the upstream side calls.
cdef class Exchange(ExchangeLink):
    cdef public RequestHead head
    cdef public object school         # SchoolRuntime or None
    cdef public int klass
    cdef public int state
    cdef public UpstreamConnection upstream
    cdef public UpstreamServer server
    cdef public list body_buf
    cdef public Py_ssize_t body_buffered
    cdef public bint request_done
    cdef public bint keep_alive
    cdef public bint out_chunked
    cdef Py_ssize_t resp_mark         # the client's cork mark before this response's head
    cdef long long resp_flushes       # the client's flush count then
    cdef public bint continue_sent
    cdef public int attempts
    cdef public double sent_at
    cdef public double touched
    cdef public object local          # bytes or None
    cdef public object tunnel_buf     # list[bytes] or None
    cdef public int tunnel_eof
    cdef public object pending        # list[bytes] or None
    cdef public object ticket
    cdef public object response_headers  # list[(bytes, bytes)] or None
    cdef public object spool          # BodySpool or None
    cdef public bint body_received
    cdef public bint up_chunked
    cdef public double body_since
    cdef public double arrived_at
    cdef public double wait_left
    # The access log (native/accesslog.pyx): recorded once, at the end.
    cdef public int decision          # accesslog D_* of a gateway-made answer; -1: by admission
    cdef public object reason         # str: why the gateway answered itself, or None
    cdef public int status            # the status sent (0: none yet)
    cdef public bint queued           # waited in line before admission
    cdef public double queue_time     # seconds waited in line
    cdef public long long bytes_in    # request bytes received from the client
    cdef public long long bytes_out   # response bytes for the client
    cdef public bint logged           # recorded (or never to be: see replaces)
    cdef public Exchange replaces     # a refusal's half-read request, named in its line
    cdef double began                 # monotonic, when the head was complete
    cdef double asked                 # monotonic, when it last asked for a slot (0: not)
    cdef bint asking                  # inside an ask: an admission now is at once
    # Telemetry (Exchange._count): the wait for its slot (seconds, -1:
    # none), counted yet.
    cdef public double queue_wait
    cdef public bint counted

    cpdef on_request_body(self, bytes data)
    cpdef on_request_end(self)
    cpdef bint body_first(self) except -1
    cpdef receive_body(self)
    cpdef double body_deadline(self, object timeouts) except? -1.0
    cpdef start(self)
    cpdef admitted(self)
    cpdef rejected(self, bytes response)
    cpdef bint settle_keep_alive(self) except -1
    cpdef timed_out(self)
    cpdef on_tunnel_client_data(self, bytes data)
    cpdef on_tunnel_client_eof(self)
    cpdef on_client_lost(self)
    cdef _admit(self)
    cdef _release(self)
    cdef _spool_failed(self)
    cdef _drop_spool(self)
    cdef _pump(self)
    cdef _connect(self, UpstreamServer exclude, bint fresh=*)
    cdef _attach(self, UpstreamConnection conn, double now)
    cdef _tunnel_half_closed(self, int side)
    cdef _unavailable(self)
    cdef _write_local(self)
    cdef _finish(self, double now)
    cdef _ask(self, bint native)
    cdef _waited(self)
    cdef _log(self, int status, double now=*)
    cdef _count(self, int status, double now=*)


