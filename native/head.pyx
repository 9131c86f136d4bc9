# cython: auto_pickle=False
"""Request/response head validation (compiled hot path); native/serialize.pyx
writes heads back out.

Mirrors tests/oracles/http.py check for check and in the same order, so
a head with several faults gets the same HeadError from either. Work is done
on the bytes' buffers: received (name, value) tuples are forwarded as the
same objects, Host/path/values are only copied when they actually change,
and each serialized head is one bytes object filled by memcpy.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.string cimport memchr, memcmp, memcpy

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
    b"proxy-authenticate", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"expect",
})

# Larger lengths cannot be real bodies; the bound keeps the arithmetic in int64.
DEF MAX_CONTENT_LENGTH = 4611686018427387903  # 2**62 - 1

# Character classes, one bit each, indexed by byte value.
DEF C_TOKEN = 1
DEF C_REG_NAME = 2
DEF C_IP_LITERAL = 4
DEF C_DIGIT = 8
DEF C_SCHEME = 16

cdef unsigned char _LOWER[256]
cdef unsigned char _CLASS[256]


cdef void _init_tables():
    cdef int c
    for c in range(256):
        _LOWER[c] = c + 32 if 65 <= c <= 90 else c
        _CLASS[c] = 0
    for c in b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
        _CLASS[c] |= C_TOKEN
    # RFC 3986 reg-name: unreserved, sub-delims and "%". No "@": Host carries no userinfo.
    for c in b"-._~!$&'()*+,;=%0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
        _CLASS[c] |= C_REG_NAME
    for c in b"0123456789abcdefABCDEF:.":
        _CLASS[c] |= C_IP_LITERAL
    for c in b"0123456789":
        _CLASS[c] |= C_DIGIT
    for c in b"+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
        _CLASS[c] |= C_SCHEME


_init_tables()


class HeadError(Exception):
    """A head the gateway refuses; `status` is the answer to send."""

    def __init__(self, status, reason):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self):
        return f"{self.status} {self.reason}"


# What a header name means to the gateway.
cdef enum:
    K_OTHER, K_HOST, K_CL, K_TE, K_CONN, K_UPGRADE, K_EXPECT, K_XFF, K_VIA, K_DROP


cdef inline bint _is(const unsigned char* p, const char* lower, Py_ssize_t n) noexcept:
    """Case-insensitive equality with a lower-case literal of the same length."""
    cdef Py_ssize_t i
    for i in range(n):
        if _LOWER[p[i]] != <unsigned char>lower[i]:
            return False
    return True


cdef int _kind(const unsigned char* p, Py_ssize_t n, bint request) noexcept:
    # Forwarding headers only mean something in requests; in a response they
    # are ordinary end-to-end headers. Via is rewritten in both directions.
    if n == 2:
        if _is(p, b"te", 2): return K_DROP
    elif n == 3:
        if _is(p, b"via", 3): return K_VIA
    elif n == 4:
        if request and _is(p, b"host", 4): return K_HOST
    elif n == 6:
        if _is(p, b"expect", 6): return K_EXPECT if request else K_DROP
    elif n == 7:
        if _is(p, b"upgrade", 7): return K_UPGRADE
        if _is(p, b"trailer", 7): return K_DROP
    elif n == 9:
        # RFC 7239 Forwarded: what the client claims about itself; the
        # gateway says who the client is in X-Forwarded-For.
        if request and _is(p, b"forwarded", 9): return K_DROP
    elif n == 10:
        if _is(p, b"connection", 10): return K_CONN
        if _is(p, b"keep-alive", 10): return K_DROP
    elif n == 14:
        if _is(p, b"content-length", 14): return K_CL
    elif n == 15:
        if request and _is(p, b"x-forwarded-for", 15): return K_XFF
    elif n == 16:
        if _is(p, b"proxy-connection", 16): return K_DROP
        if request and _is(p, b"x-forwarded-host", 16): return K_DROP
    elif n == 17:
        if _is(p, b"transfer-encoding", 17): return K_TE
        if request and _is(p, b"x-forwarded-proto", 17): return K_DROP
    elif n == 18:
        if _is(p, b"proxy-authenticate", 18): return K_DROP
    elif n == 19:
        if _is(p, b"proxy-authorization", 19): return K_DROP
    return K_OTHER


cdef int _dashed_kind(bytes name):
    """What a header name would mean with its underscores read as dashes."""
    cdef bytes dashed = name.replace(b"_", b"-")
    return _kind(<const unsigned char*>PyBytes_AS_STRING(dashed), PyBytes_GET_SIZE(dashed), False)


cdef inline bint _bad_value(const char* p, Py_ssize_t n) noexcept:
    return (memchr(p, 0, n) != NULL or memchr(p, 13, n) != NULL
            or memchr(p, 10, n) != NULL)


cdef inline bint _ows(unsigned char c) noexcept:
    return c == 32 or c == 9


cdef bytes _trim(bytes value):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t start = 0, end = PyBytes_GET_SIZE(value)
    while start < end and _ows(p[start]):
        start += 1
    while end > start and _ows(p[end - 1]):
        end -= 1
    if start == 0 and end == PyBytes_GET_SIZE(value):
        return value
    return PyBytes_FromStringAndSize(<const char*>p + start, end - start)


cdef bytes _lower(bytes value):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(value)
    cdef bytes out
    cdef unsigned char* w
    for i in range(n):
        if _LOWER[p[i]] != p[i]:
            break
    else:
        return value
    out = PyBytes_FromStringAndSize(NULL, n)
    w = <unsigned char*>PyBytes_AS_STRING(out)
    for i in range(n):
        w[i] = _LOWER[p[i]]
    return out


cdef bint _trimmed_is(bytes value, const char* lower, Py_ssize_t n) noexcept:
    """Whether value, OWS-trimmed, equals a lower-case literal case-insensitively."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t start = 0, end = PyBytes_GET_SIZE(value)
    while start < end and _ows(p[start]):
        start += 1
    while end > start and _ows(p[end - 1]):
        end -= 1
    return end - start == n and _is(p + start, lower, n)


cdef long long _content_length(bytes value, int status, str who) except -1:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t start = 0, end = PyBytes_GET_SIZE(value), i
    cdef long long length = 0
    cdef bint digits = True, too_large = False
    while start < end and _ows(p[start]):
        start += 1
    while end > start and _ows(p[end - 1]):
        end -= 1
    for i in range(start, end):
        if not _CLASS[p[i]] & C_DIGIT:
            digits = False
            break
        if not too_large:
            # Checked before multiplying: a wrapped int64 could pass as small.
            if length > (MAX_CONTENT_LENGTH - (p[i] - 48)) // 10:
                too_large = True
            else:
                length = length * 10 + (p[i] - 48)
    if start == end or not digits:
        raise HeadError(status, f"invalid {who}Content-Length")
    if too_large:
        raise HeadError(status, f"{who}Content-Length too large")
    return length


cdef bint _is_content_length(bytes name) noexcept:
    return PyBytes_GET_SIZE(name) == 14 and _is(
        <const unsigned char*>PyBytes_AS_STRING(name), b"content-length", 14)


cdef bint _canonical_digits(bytes value) noexcept:
    """A valid Content-Length value as the gateway would write it: digits
    only, no leading zero, no surrounding whitespace."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    return (n > 0 and _CLASS[p[0]] & C_DIGIT and _CLASS[p[n - 1]] & C_DIGIT
            and (p[0] != 48 or n == 1))


cdef bytes _normalize_host(bytes value):
    """Routing key of a trimmed Host value, or None when it is not an authority."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i, end = n
    if n and p[0] == 91:  # "[": IP literal, possibly with a port
        end = 1
        while end < n and p[end] != 93:  # "]"
            end += 1
        if end < 2 or end == n:
            return None
        for i in range(1, end):
            if not _CLASS[p[i]] & C_IP_LITERAL:
                return None
        end += 1
        if end < n:
            if p[end] != 58:  # ":"
                return None
            for i in range(end + 1, n):
                if not _CLASS[p[i]] & C_DIGIT:
                    return None
    else:
        for i in range(n):
            if p[i] == 58:
                end = i
                break
        for i in range(end + 1, n):
            if not _CLASS[p[i]] & C_DIGIT:
                return None
        for i in range(end):
            if not _CLASS[p[i]] & C_REG_NAME:
                return None
        if end and p[end - 1] == 46:  # ".": the fully qualified form names the same host
            end -= 1
        if end == 0:
            return None
    if end == n:
        return _lower(value)
    return _lower(PyBytes_FromStringAndSize(<const char*>p, end))


cdef bytes _split_target(RequestHead head, bytes method, bytes target):
    """Set head.target (what to forward) and head.path; return the target's
    authority, or None when the Host header names the host (origin- and
    asterisk-form). The forms and refusals are those of tests/oracles/http.py's _split_target
    (RFC 9112 3.2)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(target)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(target), i, start, end
    cdef const unsigned char* q
    cdef bytes authority, origin
    if memchr(p, 35, n) != NULL:  # "#"
        raise HeadError(400, "fragment in request target")
    if n and p[0] == 47:  # "/": origin-form, the common case
        if method == b"CONNECT":
            raise HeadError(400, "CONNECT needs an authority-form target")
        head.target = target
        q = <const unsigned char*>memchr(p, 63, n)  # "?"
        head.path = target if q == NULL else PyBytes_FromStringAndSize(<const char*>p, q - p)
        return None
    if n == 1 and p[0] == 42:  # "*"
        if method != b"OPTIONS":
            raise HeadError(400, "asterisk-form target only with OPTIONS")
        head.target = head.path = target
        return None
    if method == b"CONNECT":
        i = n
        while i > 0 and p[i - 1] != 58:  # the port after the last ":"
            i -= 1
        end = i
        while end < n and _CLASS[p[end]] & C_DIGIT:
            end += 1
        if i == 0 or i == n or end != n or _normalize_host(target) is None:
            raise HeadError(400, "invalid CONNECT target")
        head.target = target
        head.path = b""
        return target
    # absolute-form: scheme "://" authority [path] ["?" query]
    i = 0
    while i < n and _CLASS[p[i]] & C_SCHEME:
        i += 1
    if (i == 0 or i + 3 > n or p[i] != 58 or p[i + 1] != 47 or p[i + 2] != 47
            or not 97 <= _LOWER[p[0]] <= 122):  # a scheme starts with a letter
        raise HeadError(400, "invalid request target")
    if not (i == 4 and _is(p, b"http", 4) or i == 5 and _is(p, b"https", 5)):
        raise HeadError(400, "request target scheme is not http or https")
    start = end = i + 3
    while end < n and p[end] != 47 and p[end] != 63:  # "/", "?"
        end += 1
    if end == start:
        raise HeadError(400, "empty authority in request target")
    if memchr(p + start, 64, end - start) != NULL:  # "@"
        raise HeadError(400, "userinfo in request target")
    authority = PyBytes_FromStringAndSize(<const char*>p + start, end - start)
    if _normalize_host(authority) is None:
        raise HeadError(400, "invalid authority in request target")
    if end == n and method == b"OPTIONS":
        head.target = head.path = b"*"  # the server as a whole (RFC 9112 3.2.4)
        return authority
    if end < n and p[end] == 47:
        origin = PyBytes_FromStringAndSize(<const char*>p + end, n - end)
    else:  # empty path: "/" (RFC 9112 3.2.1)
        origin = b"/" + PyBytes_FromStringAndSize(<const char*>p + end, n - end)
    head.target = origin
    p = <const unsigned char*>PyBytes_AS_STRING(origin)
    n = PyBytes_GET_SIZE(origin)
    q = <const unsigned char*>memchr(p, 63, n)
    head.path = origin if q == NULL else PyBytes_FromStringAndSize(<const char*>p, q - p)
    return authority


cdef list _with_host(items, bytes authority):
    """`items` as a new list with the Host value replaced by `authority`
    (added first if absent)."""
    cdef list out = list(items)
    cdef Py_ssize_t i
    cdef bytes name
    for i in range(len(out)):
        name = <bytes>(<tuple>out[i])[0]
        if PyBytes_GET_SIZE(name) == 4 and _is(
                <const unsigned char*>PyBytes_AS_STRING(name), b"host", 4):
            out[i] = (name, authority)
            return out
    out.insert(0, (b"Host", authority))
    return out


cdef bint _idempotent(bytes method) noexcept:
    cdef const char* p = PyBytes_AS_STRING(method)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(method)
    if n == 3:
        return memcmp(p, b"GET", 3) == 0 or memcmp(p, b"PUT", 3) == 0
    if n == 4:
        return memcmp(p, b"HEAD", 4) == 0
    if n == 5:
        return memcmp(p, b"TRACE", 5) == 0
    if n == 6:
        return memcmp(p, b"DELETE", 6) == 0
    if n == 7:
        return memcmp(p, b"OPTIONS", 7) == 0
    return False


cdef object _find(tuple raw, bytes name):
    cdef const unsigned char* want = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), i, j
    cdef bytes candidate
    cdef tuple item
    cdef const unsigned char* p
    for i in range(PyTuple_GET_SIZE(raw)):
        item = <tuple><object>PyTuple_GET_ITEM(raw, i)
        candidate = <bytes><object>PyTuple_GET_ITEM(item, 0)
        if PyBytes_GET_SIZE(candidate) != n:
            continue
        p = <const unsigned char*>PyBytes_AS_STRING(candidate)
        for j in range(n):
            if _LOWER[p[j]] != _LOWER[want[j]]:
                break
        else:
            return <object>PyTuple_GET_ITEM(item, 1)
    return None


cdef class _Head:
    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} objects come from the parse functions")

    cpdef object header(self, bytes name):
        """First value of header `name` as received, hop-by-hop ones included
        (Host: the routed one, see parse_request_head)."""
        if name is None:
            raise TypeError("header name must be bytes")
        return _find(self._raw, name)


cdef class RequestHead(_Head):
    """A validated client request head; see `parse_request_head`."""

    def __repr__(self):
        return (f"<RequestHead {self.method!r} {self.target!r} HTTP/{self.version // 10}."
                f"{self.version % 10} host={self.host!r}>")


cdef class ResponseHead(_Head):
    """A validated upstream response head; see `parse_response_head`."""

    def __repr__(self):
        return (f"<ResponseHead {self.status} {self.reason!r} HTTP/{self.version // 10}."
                f"{self.version % 10}>")


cdef struct _Seen:
    Py_ssize_t hosts
    Py_ssize_t te_count
    bint te_chunked
    bint expect_seen
    bint expect_bad
    bint close
    bint keep_alive
    bint upgrade            # the `upgrade` connection option
    bint upgrade_field      # an Upgrade header field, whatever its value


cdef bytes _CLOSE = b"close"


cdef list _connection_tokens(bytes value, list named, _Seen* seen):
    """Note the connection options and collect the header names to drop.

    keep-alive and upgrade are hop-by-hop already, and Host/Content-Length are
    never dropped on a Connection's say-so, so neither lands in `named`.
    """
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), start = 0, end, stop, n_tok
    while start < n:
        stop = start
        while stop < n and p[stop] != 44:  # ","
            stop += 1
        end = stop
        while start < end and _ows(p[start]):
            start += 1
        while end > start and _ows(p[end - 1]):
            end -= 1
        n_tok = end - start
        if n_tok == 5 and _is(p + start, b"close", 5):
            seen.close = True
            if named is None:
                named = []
            named.append(_CLOSE)
        elif n_tok == 10 and _is(p + start, b"keep-alive", 10):
            seen.keep_alive = True
        elif n_tok == 7 and _is(p + start, b"upgrade", 7):
            seen.upgrade = True
        elif n_tok and not (n_tok == 4 and _is(p + start, b"host", 4)
                            or n_tok == 14 and _is(p + start, b"content-length", 14)):
            if named is None:
                named = []
            named.append(_lower(PyBytes_FromStringAndSize(<const char*>p + start, n_tok)))
        start = stop + 1
    return named


cdef list _drop_named(list headers, list named):
    cdef list kept = []
    cdef bytes name
    for item in headers:
        name = <bytes><object>PyTuple_GET_ITEM(<tuple>item, 0)
        for token in named:
            if PyBytes_GET_SIZE(name) == PyBytes_GET_SIZE(<bytes>token) and _is(
                    <const unsigned char*>PyBytes_AS_STRING(name),
                    PyBytes_AS_STRING(<bytes>token), PyBytes_GET_SIZE(name)):
                break
        else:
            kept.append(item)
    return kept


cdef list _scan(_Head head, RequestHead req, tuple raw, bint reject_underscore,
                _Seen* seen):
    """One pass over the received headers, shared by requests (req is head) and responses.

    Fills head.headers/content_length/upgrade (trimmed, not yet lower-cased)/via
    and, for requests, req.host_header/xff; returns the header names listed in
    Connection (or None).
    """
    cdef bint request = req is not None
    cdef int status = 400 if request else 502
    cdef str who = "" if request else "upstream "
    cdef Py_ssize_t i, j, n
    cdef const unsigned char* p
    cdef bint underscore
    cdef int kind
    cdef long long length
    cdef tuple item
    cdef bytes name, value
    cdef list headers = [], named = None, xff = None, via = None
    head.content_length = -1
    for i in range(PyTuple_GET_SIZE(raw)):
        item = <tuple?><object>PyTuple_GET_ITEM(raw, i)
        if PyTuple_GET_SIZE(item) != 2:
            raise ValueError("headers must be (name, value) pairs")
        name = <bytes?><object>PyTuple_GET_ITEM(item, 0)
        value = <bytes?><object>PyTuple_GET_ITEM(item, 1)
        p = <const unsigned char*>PyBytes_AS_STRING(name)
        n = PyBytes_GET_SIZE(name)
        underscore = False
        for j in range(n):
            if not _CLASS[p[j]] & C_TOKEN:
                n = 0
                break
            if p[j] == 95:
                underscore = True
        if n == 0:
            raise HeadError(status, f"invalid {who}header name")
        if _bad_value(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)):
            raise HeadError(status, f"invalid {who}header value")
        if underscore:
            if request:
                if reject_underscore:
                    raise HeadError(400, "underscore in header name")
                continue
            if _dashed_kind(name) != K_OTHER:
                # "Content_Length" in a response: a next hop that maps "_"
                # to "-" would read framing the gateway did not.
                continue
        kind = _kind(p, n, request)
        if kind == K_OTHER:
            headers.append(item)
        elif kind == K_HOST:
            seen.hosts += 1
            if seen.hosts == 1:
                req.host_header = _trim(value)
            headers.append(item)
        elif kind == K_CL:
            length = _content_length(value, status, who)
            if head.content_length < 0:
                head.content_length = length
                # Forwarded as the gateway read it: "007" or " 7 " means 7 to
                # this parser but may be refused or read otherwise by the next.
                if _canonical_digits(value):
                    headers.append(item)
                else:
                    headers.append((name, b"%d" % length))
            elif length != head.content_length:
                raise HeadError(status, f"conflicting {who}Content-Length")
        elif kind == K_TE:
            seen.te_count += 1
            seen.te_chunked = _trimmed_is(value, b"chunked", 7)
        elif kind == K_CONN:
            named = _connection_tokens(value, named, seen)
        elif kind == K_UPGRADE:
            seen.upgrade_field = True
            if head.upgrade is None:
                head.upgrade = _trim(value)
        elif kind == K_EXPECT:
            seen.expect_seen = True
            if not _trimmed_is(value, b"100-continue", 12):
                seen.expect_bad = True
        elif kind == K_XFF or kind == K_VIA:
            value = _trim(value)
            if PyBytes_GET_SIZE(value):
                if kind == K_XFF:
                    if xff is None:
                        xff = []
                    xff.append(value)
                else:
                    if via is None:
                        via = []
                    via.append(value)
    head.headers = headers
    if via is not None:
        head.via = via[0] if len(via) == 1 else b", ".join(via)
    if xff is not None:
        req.xff = xff[0] if len(xff) == 1 else b", ".join(xff)
    return named


cdef int _version(str version, int status, str reason) except -1:
    if version == "1.1":
        return 11
    if version == "1.0":
        return 10
    raise HeadError(status, reason)


def parse_request_head(bytes method not None, bytes target not None, str version,
                       raw_headers, bint reject_underscore):
    cdef int v = _version(version, 505, "HTTP version not supported")
    cdef _Seen seen
    cdef RequestHead head = RequestHead.__new__(RequestHead)
    seen.hosts = seen.te_count = 0
    seen.te_chunked = seen.expect_seen = seen.expect_bad = False
    seen.close = seen.keep_alive = seen.upgrade = seen.upgrade_field = False
    head._raw = raw_headers if type(raw_headers) is tuple else tuple(raw_headers)
    named = _scan(head, head, head._raw, reject_underscore, &seen)

    authority = _split_target(head, method, target)
    # RFC 9112 3.2: every HTTP/1.1 request has exactly one valid Host, even
    # one whose target names the host; HTTP/1.0 may leave it out then.
    if seen.hosts == 0:
        if authority is None or v == 11:
            raise HeadError(400, "missing Host header")
    else:
        if seen.hosts > 1:
            raise HeadError(400, "multiple Host headers")
        if PyBytes_GET_SIZE(head.host_header) == 0:
            raise HeadError(400, "empty Host header")
        head.host = _normalize_host(head.host_header)
        if head.host is None:
            raise HeadError(400, "invalid Host header")
    if seen.te_count:
        if head.content_length >= 0:
            raise HeadError(400, "Transfer-Encoding with Content-Length")
        if v == 10:
            raise HeadError(400, "Transfer-Encoding in HTTP/1.0")
        if seen.te_count > 1 or not seen.te_chunked:
            raise HeadError(400, "unsupported Transfer-Encoding")
    if head.content_length > 0 or seen.te_count:
        # llhttp hands what follows the head of CONNECT, and of a request
        # asking for an upgrade, to the new protocol (httptools skips their
        # body); the request's framing says it is the body. Two readings of
        # one message: refused. CONNECT has no content (RFC 9110 9.3.6).
        if PyBytes_GET_SIZE(method) == 7 and memcmp(PyBytes_AS_STRING(method), b"CONNECT", 7) == 0:
            raise HeadError(400, "CONNECT request with a body")
        if seen.upgrade and seen.upgrade_field:
            raise HeadError(400, "request body with Upgrade")
    if seen.expect_bad:
        raise HeadError(417, "unsupported expectation")
    if named is not None:
        head.headers = _drop_named(head.headers, named)
    if authority is not None:
        # What is routed, admitted and forwarded is the target's authority:
        # the one Host the head has from here on, header() included.
        head.host = _normalize_host(authority)
        head.host_header = authority
        head.headers = _with_host(head.headers, authority)
        head._raw = tuple(_with_host(head._raw, authority))

    head.method = method
    head.version = v
    head.chunked = seen.te_count > 0
    head.keep_alive = not seen.close and (v == 11 or seen.keep_alive)
    # HTTP/1.0 has neither upgrades nor 100-continue (RFC 9110 7.8, 10.1.1).
    if head.upgrade is not None:
        if v == 11 and seen.upgrade and PyBytes_GET_SIZE(head.upgrade):
            head.upgrade = _lower(head.upgrade)
            # h2c is never passed on: a cleartext HTTP/2 tunnel would carry
            # later requests past routing and admission (h2c smuggling). The
            # request goes upstream as plain HTTP/1.1.
            if head.upgrade == b"h2c":
                head.upgrade = None
        else:
            head.upgrade = None
    head.expect_continue = seen.expect_seen and v == 11
    head.idempotent = _idempotent(method)
    return head


def parse_response_head(int status, bytes reason not None, str version, raw_headers):
    cdef int v = _version(version, 502, "unsupported upstream HTTP version")
    cdef _Seen seen
    cdef ResponseHead head
    if not 100 <= status <= 999:
        raise HeadError(502, "invalid upstream status")
    if _bad_value(PyBytes_AS_STRING(reason), PyBytes_GET_SIZE(reason)):
        raise HeadError(502, "invalid upstream reason phrase")
    head = ResponseHead.__new__(ResponseHead)
    seen.hosts = seen.te_count = 0
    seen.te_chunked = seen.expect_seen = seen.expect_bad = False
    seen.close = seen.keep_alive = seen.upgrade = seen.upgrade_field = False
    head._raw = raw_headers if type(raw_headers) is tuple else tuple(raw_headers)
    named = _scan(head, None, head._raw, False, &seen)

    if seen.te_count:
        if head.content_length >= 0:
            raise HeadError(502, "upstream sent Transfer-Encoding with Content-Length")
        if seen.te_count > 1 or not seen.te_chunked:
            raise HeadError(502, "unsupported upstream Transfer-Encoding")
    if named is not None:
        head.headers = _drop_named(head.headers, named)
    if (status < 200 or status == 204) and head.content_length >= 0:
        # Such a response has no content and must not say it has any (RFC
        # 9110 section 8.6): the length is neither forwarded nor framed by.
        head.headers = [h for h in head.headers if not _is_content_length(h[0])]
        head.content_length = -1

    head.status = status
    head.reason = reason
    head.version = v
    head.chunked = seen.te_count > 0
    head.keep_alive = not seen.close and (v == 11 or seen.keep_alive)
    if head.upgrade is not None:
        head.upgrade = (_lower(head.upgrade)
                        if status == 101 and PyBytes_GET_SIZE(head.upgrade) else None)
    return head
