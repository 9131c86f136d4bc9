# Declarations for native/proxy.pyx, built as gateway._native.proxy (the
# classes are documented in gateway/_native/proxy.pyi).
#
# The per-request protocol objects are cdef classes so that their attributes
# are C struct fields and their calls to one another (cpdef/cdef methods) are
# C calls, not attribute lookups and Python calls. Attributes read or set by
# the Python shell (app.py, admission.py, worker.py, tests) are `public`.

from gateway._native.head cimport RequestHead, ResponseHead


cdef class ClientProtocol:
    cdef public object app
    cdef public bytes proto
    cdef public object transport
    cdef public object parser
    cdef public object queue          # deque[Exchange]
    cdef public list out
    cdef public Exchange current
    cdef public Exchange tunnel
    cdef public int phase
    cdef public double since
    cdef public double touched
    cdef public int pause_mask
    cdef public bint write_paused
    cdef public bint eof
    cdef public object error
    cdef public bytes client_ip
    cdef public bytes client_key
    cdef public int school
    cdef public bint trusted_peer
    cdef public object chunks
    cdef bytes _url
    cdef list _headers
    cdef Py_ssize_t _n_headers
    cdef Py_ssize_t _raw_head
    cdef Py_ssize_t _hdr_bytes
    cdef long long _body_left
    cdef long long _cl_left           # Content-Length bytes of the body still to come
    cdef bint _chunked                # the current body's verdict: chunked framing
    cdef bytes _tail
    cdef bytes _line
    cdef bint _pending_cr             # a CR ended the last read, before a request line

    cpdef write(self, bytes data)
    cpdef writelines(self, list parts)
    cpdef cork(self, bytes data)
    cpdef corklines(self, list parts)
    cpdef flush(self)
    cpdef write_eof(self)
    cpdef pause_reading_for(self, int reason)
    cpdef resume_reading_for(self, int reason)
    cpdef exchange_done(self, Exchange ex)
    cpdef list enter_tunnel(self, Exchange ex)
    cpdef close(self)
    cpdef abort(self)
    cdef bint _body_framed(self)
    cdef _line_more(self, bytes piece)
    cdef _fail(self, object err)
    cdef _protocol_error(self, object err)
    cdef bint _upgrade(self, bytes rest) except -1
    cdef _close_after_response(self, Exchange ex)
    cdef _linger(self)


cdef class Exchange:
    cdef public ClientProtocol client
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
    cdef public bint is_head
    cdef public bint is_connect
    cdef public bint out_chunked
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

    cpdef on_request_body(self, bytes data)
    cpdef on_request_end(self)
    cpdef bint body_first(self) except -1
    cpdef receive_body(self)
    cpdef double body_deadline(self, object timeouts) except? -1.0
    cpdef start(self)
    cpdef admitted(self)
    cpdef rejected(self, bytes response)
    cpdef bint settle_keep_alive(self) except -1
    cpdef on_interim_response(self, UpstreamConnection conn, ResponseHead head)
    cpdef on_response_head(self, UpstreamConnection conn, ResponseHead head)
    cpdef on_response_body(self, bytes data)
    cpdef on_response_end(self, UpstreamConnection conn, bint reusable)
    cpdef on_upstream_lost(self, UpstreamConnection conn, object exc)
    cpdef on_upstream_write_paused(self)
    cpdef on_upstream_write_resumed(self)
    cpdef timed_out(self)
    cpdef on_upstream_upgraded(self, bytes rest)
    cpdef on_tunnel_established(self, UpstreamConnection conn, ResponseHead head)
    cpdef on_tunnel_client_data(self, bytes data)
    cpdef on_tunnel_upstream_data(self, bytes data)
    cpdef on_tunnel_upstream_eof(self)
    cpdef on_tunnel_client_eof(self)
    cpdef on_tunnel_upstream_lost(self)
    cpdef on_client_lost(self)
    cdef _spool_failed(self)
    cdef _drop_spool(self)
    cdef _pump(self)
    cdef _connect(self, UpstreamServer exclude, bint fresh=*)
    cdef _attach(self, UpstreamConnection conn)
    cdef _tunnel_half_closed(self, int side)
    cdef _unavailable(self)
    cdef _write_local(self)
    cdef _finish(self)


cdef class UpstreamConnection:
    cdef public UpstreamServer server
    cdef public object transport
    cdef public object parser
    cdef public Exchange exchange
    cdef public bint closed
    cdef public bint tunnel
    cdef public bint reading_paused
    cdef public double idle_since
    cdef public Py_ssize_t requests
    cdef public object error
    cdef int _phase                   # R_HEAD, R_BODY or R_DONE
    cdef list _headers
    cdef bytes _reason
    cdef Py_ssize_t _n_headers
    cdef Py_ssize_t _hdr_bytes
    cdef Py_ssize_t _raw_head         # raw bytes of this exchange's response heads
    cdef bint _pending_cr             # a CR ended the last read, before a status line
    cdef bytes _tail
    cdef long long _body_left         # Content-Length bytes still due, or -1
    cdef bint _chunked
    cdef object _chunks               # ChunkedFraming, made for the first chunked body
    cdef bint _reusable
    cdef bint _until_close
    cdef bint _head_only
    cdef bint _interim

    cpdef write(self, bytes data)
    cpdef writelines(self, list parts)
    cpdef write_eof(self)
    cpdef pause_reading(self)
    cpdef resume_reading(self)
    cpdef abort(self)
    cpdef close(self)
    cdef _reset(self)
    cdef _end_response(self, bint leftover)
    cdef _refuse(self, object err)
    cdef _fail(self, object err)


cdef class UpstreamServer:
    cdef public str host
    cdef public int port
    cdef public str addr
    cdef public Py_ssize_t keepalive
    cdef public double connect_timeout
    cdef public double idle_timeout
    cdef public Py_ssize_t max_buffer
    cdef public Py_ssize_t max_status_line
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t max_headers
    cdef public Py_ssize_t max_chunk_ext
    cdef public Py_ssize_t head_budget
    cdef public object idle           # deque[UpstreamConnection], LIFO
    cdef public Py_ssize_t inflight
    cdef public set total
    cdef public int failures
    cdef public double down_until
    cdef public object loop
    cdef public double keep_alive_timeout
    cdef public double closed_idle
    cdef public double open_idle

    cpdef set_limits(self, Py_ssize_t max_status_line, Py_ssize_t max_header_bytes,
                     Py_ssize_t max_headers, Py_ssize_t max_chunk_ext)
    cpdef bint available(self, double now)
    cpdef learn_keep_alive(self, bytes value)
    cpdef observe_closed(self, double idle)
    cpdef observe_open(self, double idle)
    cpdef double reuse_limit(self)
    cpdef UpstreamConnection take_idle(self, double now)
    cpdef release(self, UpstreamConnection conn, double now)
    cpdef bint forget(self, UpstreamConnection conn)
    cpdef reap_idle(self, double now)
    cpdef record_success(self)
    cpdef record_failure(self, double now)
    cpdef close_all(self)


cdef class Balancer:
    cdef public list servers
    cdef public bint least_inflight
    cdef Py_ssize_t _next

    cpdef UpstreamServer pick(self, UpstreamServer exclude=*)
