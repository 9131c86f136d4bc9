# cython: auto_pickle=False
"""Request/response head serialization (compiled hot path).

Measures every piece, allocates the result once and fills it by memcpy. The
heads come only from native/head.pyx, whose .pxd gives direct access to their
fields; tests/oracles/http.py is the plain-Python model.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.string cimport memcpy

from gateway._native.head cimport RequestHead, ResponseHead

cdef bytes _REQ_VERSION = b" HTTP/1.1\r\n"
cdef bytes _STATUS_PREFIX = b"HTTP/1.1 "
cdef bytes _SEP = b": "
cdef bytes _CRLF = b"\r\n"
cdef bytes _LIST = b", "
cdef bytes _XFF = b"X-Forwarded-For: "
cdef bytes _XFP = b"\r\nX-Forwarded-Proto: "
cdef bytes _XFH = b"\r\nX-Forwarded-Host: "
cdef bytes _VIA = b"Via: "
cdef bytes _VIA_VERSION = b"1.1 "
cdef bytes _CHUNKED = b"Transfer-Encoding: chunked\r\n"
cdef bytes _UPGRADE = b"Connection: upgrade\r\nUpgrade: "
cdef bytes _CONN_CLOSE = b"Connection: close\r\n"
cdef bytes _CONN_KEEP_ALIVE = b"Connection: keep-alive\r\n"
cdef bytes _CONTENT_LENGTH = b"Content-Length: "


cdef inline char* _put(char* w, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(w, PyBytes_AS_STRING(b), n)
    return w + n


cdef Py_ssize_t _headers_size(list headers) except -1:
    """Wire size of the header lines; also checks every entry is a (bytes, bytes) pair."""
    cdef Py_ssize_t size = 0
    cdef tuple item
    for obj in headers:
        item = <tuple?>obj
        if PyTuple_GET_SIZE(item) != 2:
            raise ValueError("headers must be (name, value) pairs")
        size += (PyBytes_GET_SIZE(<bytes?><object>PyTuple_GET_ITEM(item, 0))
                 + PyBytes_GET_SIZE(<bytes?><object>PyTuple_GET_ITEM(item, 1)) + 4)
    return size


cdef char* _put_headers(char* w, list headers) noexcept:
    cdef tuple item
    for obj in headers:
        item = <tuple>obj
        w = _put(w, <bytes><object>PyTuple_GET_ITEM(item, 0))
        w = _put(w, _SEP)
        w = _put(w, <bytes><object>PyTuple_GET_ITEM(item, 1))
        w = _put(w, _CRLF)
    return w


cdef int _check_status(int status) except -1:
    if not 100 <= status <= 999:
        raise ValueError(f"status {status} is not a three-digit code")
    return 0


cdef char* _put_status(char* w, int status, bytes reason) noexcept:
    w = _put(w, _STATUS_PREFIX)
    w[0] = 48 + status // 100
    w[1] = 48 + status // 10 % 10
    w[2] = 48 + status % 10
    w[3] = 32
    w = _put(w + 4, reason)
    return _put(w, _CRLF)


def serialize_request_head(RequestHead head not None, bytes client_ip not None,
                           bytes proto not None, bytes via not None,
                           long long body_length=-1):
    # body_length >= 0 for a chunked request whose whole body the gateway
    # holds: it is forwarded decoded, with that Content-Length instead of
    # Transfer-Encoding (RFC 9112 section 7.1.3).
    cdef bytes length = None
    cdef bint chunked = head.chunked
    if chunked and body_length >= 0:
        chunked = False
        length = b"%d\r\n" % body_length
    cdef Py_ssize_t size = (
        PyBytes_GET_SIZE(head.method) + 1 + PyBytes_GET_SIZE(head.target)
        + PyBytes_GET_SIZE(_REQ_VERSION) + _headers_size(head.headers)
        + PyBytes_GET_SIZE(_XFF) + PyBytes_GET_SIZE(client_ip)
        + PyBytes_GET_SIZE(_XFP) + PyBytes_GET_SIZE(proto)
        + PyBytes_GET_SIZE(_XFH) + PyBytes_GET_SIZE(head.host_header) + 2
        + PyBytes_GET_SIZE(_VIA) + PyBytes_GET_SIZE(_VIA_VERSION) + PyBytes_GET_SIZE(via) + 2
        + 2)
    if head.xff is not None:
        size += PyBytes_GET_SIZE(head.xff) + 2
    if head.via is not None:
        size += PyBytes_GET_SIZE(head.via) + 2
    if chunked:
        size += PyBytes_GET_SIZE(_CHUNKED)
    elif length is not None:
        size += PyBytes_GET_SIZE(_CONTENT_LENGTH) + PyBytes_GET_SIZE(length)
    if head.upgrade is not None:
        size += PyBytes_GET_SIZE(_UPGRADE) + PyBytes_GET_SIZE(head.upgrade) + 2
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* w = PyBytes_AS_STRING(out)
    w = _put(w, head.method)
    w[0] = 32
    w = _put(w + 1, head.target)
    w = _put(w, _REQ_VERSION)
    w = _put_headers(w, head.headers)
    w = _put(w, _XFF)
    if head.xff is not None:
        w = _put(_put(w, head.xff), _LIST)
    w = _put(w, client_ip)
    w = _put(_put(w, _XFP), proto)
    w = _put(_put(_put(w, _XFH), head.host_header), _CRLF)
    w = _put(w, _VIA)
    if head.via is not None:
        w = _put(_put(w, head.via), _LIST)
    w = _put(_put(_put(w, _VIA_VERSION), via), _CRLF)
    if chunked:
        w = _put(w, _CHUNKED)
    elif length is not None:
        w = _put(_put(w, _CONTENT_LENGTH), length)
    if head.upgrade is not None:
        w = _put(_put(_put(w, _UPGRADE), head.upgrade), _CRLF)
    _put(w, _CRLF)
    return out


def serialize_response_head(ResponseHead head not None, int client_version, bint chunked,
                            bint keep_alive, bytes via not None):
    cdef bytes connection = None
    cdef bint upgrade = head.status == 101 and head.upgrade is not None
    if not upgrade:
        if not keep_alive:
            connection = _CONN_CLOSE
        elif client_version == 10:
            connection = _CONN_KEEP_ALIVE
    cdef Py_ssize_t size = (
        PyBytes_GET_SIZE(_STATUS_PREFIX) + 4 + PyBytes_GET_SIZE(head.reason) + 2
        + _headers_size(head.headers)
        + PyBytes_GET_SIZE(_VIA) + PyBytes_GET_SIZE(_VIA_VERSION) + PyBytes_GET_SIZE(via) + 2
        + 2)
    if head.via is not None:
        size += PyBytes_GET_SIZE(head.via) + 2
    if chunked:
        size += PyBytes_GET_SIZE(_CHUNKED)
    if upgrade:
        size += PyBytes_GET_SIZE(_UPGRADE) + PyBytes_GET_SIZE(head.upgrade) + 2
    elif connection is not None:
        size += PyBytes_GET_SIZE(connection)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* w = _put_status(PyBytes_AS_STRING(out), head.status, head.reason)
    w = _put_headers(w, head.headers)
    w = _put(w, _VIA)
    if head.via is not None:
        w = _put(_put(w, head.via), _LIST)
    w = _put(_put(_put(w, _VIA_VERSION), via), _CRLF)
    if chunked:
        w = _put(w, _CHUNKED)
    if upgrade:
        w = _put(_put(_put(w, _UPGRADE), head.upgrade), _CRLF)
    elif connection is not None:
        w = _put(w, connection)
    _put(w, _CRLF)
    return out


def serialize_simple_response(int status, bytes reason not None, list headers not None,
                              bytes body not None, bint keep_alive):
    cdef char digits[24]
    cdef Py_ssize_t n_digits = 0, length = PyBytes_GET_SIZE(body)
    _check_status(status)
    while True:
        digits[23 - n_digits] = 48 + length % 10
        n_digits += 1
        length //= 10
        if length == 0:
            break
    cdef bytes connection = _CONN_KEEP_ALIVE if keep_alive else _CONN_CLOSE
    cdef Py_ssize_t size = (
        PyBytes_GET_SIZE(_STATUS_PREFIX) + 4 + PyBytes_GET_SIZE(reason) + 2
        + _headers_size(headers) + PyBytes_GET_SIZE(_CONTENT_LENGTH) + n_digits + 2
        + PyBytes_GET_SIZE(connection) + 2 + PyBytes_GET_SIZE(body))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* w = _put_status(PyBytes_AS_STRING(out), status, reason)
    w = _put_headers(w, headers)
    w = _put(w, _CONTENT_LENGTH)
    memcpy(w, digits + 24 - n_digits, n_digits)
    w = _put(w + n_digits, _CRLF)
    w = _put(_put(_put(w, connection), _CRLF), body)
    return out
