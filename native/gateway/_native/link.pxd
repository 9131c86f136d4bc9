# Declarations for native/link.pyx, built as gateway._native.link: what the
# three proxy modules share, below all of them.
#
# A request walks down client.pyx -> exchange.pyx -> upstream.pyx, and each
# cimports the one below it. Calls back up (an upstream connection telling
# its exchange a response arrived, an exchange writing to its client) go
# through the two base classes here, which the concrete classes subclass:
# a typed ExchangeLink/ClientLink reference calls the subclass's cpdef
# method through the C vtable, as a call between classes of one module
# would, and Cython needs no cimport cycle.

from gateway._native.context cimport Context
from gateway._native.head cimport ResponseHead
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef inline double monotonic() noexcept:
    # time.monotonic() without the module attribute lookup and Python call:
    # the same clock on Linux (CLOCK_MONOTONIC), read several times a request.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# Client connection phases. Order matters: data_received treats every phase
# from BROKEN on as "stop parsing".
cdef enum:
    C_IDLE = 0
    C_HEAD = 1
    C_BODY = 2
    C_UPGRADE_WAIT = 3
    C_BROKEN = 4
    C_LINGER = 5
    C_UPGRADED = 6
    C_CLOSED = 7

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

# Reasons a client connection's reading is paused (a bit each); reading
# resumes only when no reason is left.
cdef enum:
    P_BUFFER = 1
    P_UPSTREAM = 2
    P_PIPELINE = 4
    P_ADMISSION = 8
    P_TUNNEL = 16

# Which directions of a tunnel have ended (Exchange.tunnel_eof bits).
cdef enum:
    T_CLIENT_EOF = 1
    T_UPSTREAM_EOF = 2


cdef Py_ssize_t skip_empty_lines(bytes data, Py_ssize_t pos, bint* pending_cr) except -2
cdef Py_ssize_t head_end(bytes tail, bytes data, Py_ssize_t pos) except -2
cdef transport_write(object transport, object data)
cdef transport_writelines(object transport, object parts)
cdef str version_at(bytes data, Py_ssize_t pos, Py_ssize_t end)
cdef str request_line_version(bytes line)


cdef class ExchangeLink


cdef class ClientLink:
    """What an exchange uses of its client connection (ClientProtocol)."""
    cdef public object app
    cdef public Context ctx           # app's typed native context (App.ctx)
    cdef public bytes client_key
    cdef public bytes proto
    cdef public object transport
    cdef public double touched
    cdef public bint write_paused
    # The responding exchange's upstream is to be paused: the client's output
    # is full (response_buffer_max 0, or a tunnel) or its spool is.
    cdef public bint upstream_held
    cdef public bytes client_ip
    # How many times corked output has gone out (flush): an exchange that
    # notes it can tell whether its response has reached the client yet.
    cdef public long long flushes

    cpdef write(self, bytes data)
    cpdef writelines(self, list parts)
    cpdef cork(self, bytes data)
    cpdef corklines(self, list parts)
    cpdef Py_ssize_t cork_mark(self) except -1
    cpdef uncork(self, Py_ssize_t mark)
    cpdef flush(self)
    cpdef write_eof(self)
    cpdef pause_reading_for(self, int reason)
    cpdef resume_reading_for(self, int reason)
    cpdef exchange_done(self, ExchangeLink ex)
    cpdef list enter_tunnel(self, ExchangeLink ex)
    cpdef close(self)
    cpdef abort(self)


cdef class ExchangeLink:
    """What an upstream connection uses of its exchange (Exchange). `conn`
    is the UpstreamConnection calling (typed object here: this module is
    below upstream.pyx)."""
    cdef public ClientLink client
    cdef public bint is_head
    cdef public bint is_connect

    cpdef on_interim_response(self, object conn, ResponseHead head)
    cpdef on_response_head(self, object conn, ResponseHead head)
    cpdef on_response_body(self, bytes data)
    cpdef on_response_end(self, object conn, bint reusable)
    cpdef on_upstream_lost(self, object conn, object exc)
    cpdef on_upstream_write_paused(self)
    cpdef on_upstream_write_resumed(self)
    cpdef on_upstream_upgraded(self, bytes rest)
    cpdef on_tunnel_established(self, object conn, ResponseHead head)
    cpdef on_tunnel_upstream_data(self, bytes data)
    cpdef on_tunnel_upstream_eof(self)
    cpdef on_tunnel_upstream_lost(self)
