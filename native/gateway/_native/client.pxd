# Declarations for native/client.pyx, built as gateway._native.client (documented
# in gateway/_native/client.pyi). Attributes read or set by the Python shell
# (app.py, admission.py, worker.py, tests) are `public`.

from gateway._native.exchange cimport Exchange
from gateway._native.link cimport ClientLink

# Inherited from ClientLink: app, ctx, client_key, proto, transport, touched, write_paused,
# client_ip, and the cpdef methods an exchange calls.
cdef class ClientProtocol(ClientLink):
    cdef public object parser
    cdef public list queue            # [Exchange], the oldest first
    cdef public list out              # corked bytes, None while nothing is corked
    cdef public Exchange current
    cdef public Exchange tunnel
    cdef public int phase
    cdef public double since
    cdef public int pause_mask
    cdef public bint eof
    cdef public object error
    cdef public int school
    cdef public bint trusted_peer
    cdef public object chunks
    cdef public object outspool       # BodySpool of response bytes not yet in the transport, or None
    cdef public Py_ssize_t resp_memory   # its bytes in memory (the school's response_buffer)
    cdef public long long resp_max    # its bound before the upstream is paused (0: never spool)
    cdef int _drain_then              # D_*: what to do once the spool is drained
    cdef double _send_since           # when output was last seen making progress (0: not stalled)
    cdef long long _send_sent         # the spool's `sent` then (-1: no spool)
    cdef Py_ssize_t _send_buf         # the transport's write buffer size then
    cdef int _send_queued             # the kernel send queue's unsent bytes then (-1: unknown)
    cdef int _fd                      # the socket's fd for TIOCOUTQ (-1: none, -2: not asked yet)
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

    cdef bint _body_framed(self)
    cdef _line_more(self, bytes piece)
    cdef _fail(self, object err)
    cdef _protocol_error(self, object err)
    cdef bint _upgrade(self, bytes rest) except -1
    cdef _close_after_response(self, Exchange ex)
    cdef _linger(self)
    cdef _trim_idle(self)
    cdef bint _to_spool(self)
    cdef bint _stalled(self)
    cdef _start_next(self)
    cdef bint _defer(self, int what)
    cdef _spool_parts(self, list parts)
    cdef _drain_spool(self)
    cdef _drop_outspool(self)
    cdef _hold_upstream(self)
    cdef _release_upstream(self)
    cdef _output_drained(self)
    cdef bint _check_send(self, double now) except -1
