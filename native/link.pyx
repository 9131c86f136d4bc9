"""The base classes that break the cimport cycles between the proxy's
modules (declared in native/gateway/_native/link.pxd), and what the client
and upstream sides share.

ClientProtocol (client.pyx) subclasses ClientLink and Exchange
(exchange.pyx) subclasses ExchangeLink; nothing else does. The methods here
are never called: every one is overridden, and a typed reference reaches
the override through the C vtable.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from gateway._native.head cimport ResponseHead


from libc.string cimport memchr, memcmp


cdef extern from "string.h":
    # GNU (Python.h defines _GNU_SOURCE).
    void* memmem(const void* haystack, size_t haystacklen, const void* needle, size_t needlelen)


cdef bytes _CRLFCRLF = b"\r\n\r\n"

# uvloop's TCP transport methods, looked up once. Called through these on a
# TCPTransport (every plain-TCP client and upstream), a write skips the
# by-name method lookup Python does for `transport.write(...)`; any other
# transport (TLS, a test's mock) is called by name as before.
try:
    from uvloop.loop import TCPTransport as _TCPTransport
except ImportError:  # pragma: no cover - uvloop is a dependency
    _TCPTransport = None
cdef object _TCP = _TCPTransport
cdef object _tcp_write = _TCPTransport.write if _TCPTransport is not None else None
cdef object _tcp_writelines = _TCPTransport.writelines if _TCPTransport is not None else None


cdef transport_write(object transport, object data):
    """transport.write(data)."""
    if _TCP is not None and type(transport) is _TCP:
        _tcp_write(transport, data)
    else:
        transport.write(data)


cdef transport_writelines(object transport, object parts):
    """transport.writelines(parts)."""
    if _TCP is not None and type(transport) is _TCP:
        _tcp_writelines(transport, parts)
    else:
        transport.writelines(parts)


cdef Py_ssize_t head_end(bytes tail, bytes data, Py_ssize_t pos) except -2:
    """Where a head that continues in `data` at `pos` ends: the offset just
    past its CRLFCRLF, counted from `pos` (at least 1), or -1 when it does
    not end in `data`. `tail` is the head's last bytes (fewer than 4) from
    earlier reads, so that a CRLFCRLF split across reads is found. Both the
    client and the upstream side feed llhttp a head on its own with it."""
    cdef Py_ssize_t end
    cdef const char* start
    cdef const char* found
    if tail:
        end = (tail + data[pos:]).find(_CRLFCRLF)
        return end + 4 - len(tail) if end >= 0 else -1
    # memmem, not bytes.find: this runs on every read of both sides, and
    # the method call parses its arguments as a Python call would.
    start = PyBytes_AS_STRING(data) + pos
    found = <const char*>memmem(start, <size_t>(PyBytes_GET_SIZE(data) - pos), b"\r\n\r\n", 4)
    return found - start + 4 if found != NULL else -1


cdef str _V11 = "1.1"
cdef str _V10 = "1.0"


cdef str version_at(bytes data, Py_ssize_t pos, Py_ssize_t end):
    """"1.1" or "1.0" when data[pos:pos + 8] (within `end`) is HTTP/1.1 or
    HTTP/1.0, else None (not there, or another version).

    The version of a head llhttp has accepted, read where it must be (a
    status line starts with it; a request line ends with it), as the string
    httptools' get_http_version() would give: that method formats it with
    str.format on every head, the largest single cost of reading one. A
    None sends the caller to get_http_version()."""
    cdef const char* p
    if pos < 0 or pos + 8 > end or end > PyBytes_GET_SIZE(data):
        return None
    p = PyBytes_AS_STRING(data) + pos
    if memcmp(p, b"HTTP/1.", 7) != 0:
        return None
    if p[7] == b'1':
        return _V11
    if p[7] == b'0':
        return _V10
    return None


cdef str request_line_version(bytes line):
    """The version ("1.1", "1.0" or None: see version_at) that ends the
    request line `line` starts with, if its LF is in `line`."""
    cdef const char* p
    cdef const char* lf
    cdef Py_ssize_t end
    if line is None:
        return None
    p = PyBytes_AS_STRING(line)
    lf = <const char*>memchr(p, 10, <size_t>PyBytes_GET_SIZE(line))
    if lf == NULL:
        return None
    end = lf - p
    if end > 0 and p[end - 1] == 13:
        end -= 1
    return version_at(line, end - 8, end)


cdef Py_ssize_t skip_empty_lines(bytes data, Py_ssize_t pos, bint* pending_cr) except -2:
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


cdef _abstract(obj, name):
    raise NotImplementedError(f"{type(obj).__name__}.{name}")


cdef class ClientLink:
    """What an exchange uses of its client connection."""

    cpdef write(self, bytes data):
        _abstract(self, "write")

    cpdef writelines(self, list parts):
        _abstract(self, "writelines")

    cpdef cork(self, bytes data):
        _abstract(self, "cork")

    cpdef corklines(self, list parts):
        _abstract(self, "corklines")

    cpdef Py_ssize_t cork_mark(self) except -1:
        """How much is corked now: what uncork(mark) goes back to."""
        _abstract(self, "cork_mark")

    cpdef uncork(self, Py_ssize_t mark):
        """Drop what was corked after `mark` (not yet flushed)."""
        _abstract(self, "uncork")

    cpdef flush(self):
        _abstract(self, "flush")

    cpdef write_eof(self):
        _abstract(self, "write_eof")

    cpdef pause_reading_for(self, int reason):
        _abstract(self, "pause_reading_for")

    cpdef resume_reading_for(self, int reason):
        _abstract(self, "resume_reading_for")

    cpdef exchange_done(self, ExchangeLink ex):
        _abstract(self, "exchange_done")

    cpdef list enter_tunnel(self, ExchangeLink ex):
        _abstract(self, "enter_tunnel")

    cpdef close(self):
        _abstract(self, "close")

    cpdef abort(self):
        _abstract(self, "abort")


cdef class ExchangeLink:
    """What an upstream connection uses of its exchange."""

    cpdef on_interim_response(self, object conn, ResponseHead head):
        _abstract(self, "on_interim_response")

    cpdef on_response_head(self, object conn, ResponseHead head):
        _abstract(self, "on_response_head")

    cpdef on_response_body(self, bytes data):
        _abstract(self, "on_response_body")

    cpdef on_response_end(self, object conn, bint reusable):
        _abstract(self, "on_response_end")

    cpdef on_upstream_lost(self, object conn, object exc):
        _abstract(self, "on_upstream_lost")

    cpdef on_upstream_write_paused(self):
        _abstract(self, "on_upstream_write_paused")

    cpdef on_upstream_write_resumed(self):
        _abstract(self, "on_upstream_write_resumed")

    cpdef on_upstream_upgraded(self, bytes rest):
        _abstract(self, "on_upstream_upgraded")

    cpdef on_tunnel_established(self, object conn, ResponseHead head):
        _abstract(self, "on_tunnel_established")

    cpdef on_tunnel_upstream_data(self, bytes data):
        _abstract(self, "on_tunnel_upstream_data")

    cpdef on_tunnel_upstream_eof(self):
        _abstract(self, "on_tunnel_upstream_eof")

    cpdef on_tunnel_upstream_lost(self):
        _abstract(self, "on_tunnel_upstream_lost")
