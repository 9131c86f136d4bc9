# Declarations for native/upstream.pyx, built as gateway._native.upstream (documented
# in gateway/_native/upstream.pyi). Attributes read or set by the Python shell
# (app.py, admission.py, worker.py, tests) are `public`.

from gateway._native.link cimport ExchangeLink

cdef class UpstreamConnection:
    cdef public UpstreamServer server
    cdef public object transport
    cdef public object parser
    cdef public ExchangeLink exchange
    cdef public bint closed
    cdef public bint tunnel
    cdef public bint reading_paused
    cdef public double idle_since
    cdef public Py_ssize_t requests
    cdef public object error
    # monotonic time of the read being handled (set by data_received, so the
    # exchange's on_response_head/on_response_body need no clock of their own)
    cdef double read_at
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
    # The version of the head being read, from the first bytes of its status
    # line (link.version_at); None: ask the parser.
    cdef str _version_hint

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
    # Telemetry, for the server's life (it outlives reloads by address).
    cdef public long long connect_failures
    cdef public long long retries
    cdef public long long timeouts

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
