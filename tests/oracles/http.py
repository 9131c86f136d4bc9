"""Plain-Python model of request/response head processing.

This is the executable specification of `native/head.pyx` and
`native/serialize.pyx`: the tests run every case against both and
hypothesis checks that they agree, and the micro
benchmarks compare them. Both check things in the same order, so that a head
with several faults gets the same `HeadError` from either.

Header values arrive as httptools hands them over: leading whitespace
skipped, trailing whitespace kept. Values the gateway interprets are trimmed
of OWS (space, tab); values it forwards are passed on untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
    b"proxy-authenticate", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"expect",
})

# Set again by the gateway on the way out, so incoming copies never pass through.
_FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via",
                         b"forwarded"})
# Header names a response may not carry with underscores for dashes (a next
# hop mapping "_" to "-" would read framing or hop-by-hop fields).
_MEANINGFUL = HOP_BY_HOP | {b"content-length", b"via"}

# Never removed because Connection names them: losing them would change how
# the upstream frames or routes the request.
_UNDROPPABLE = frozenset({b"host", b"content-length"})

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                   b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# RFC 3986 reg-name: unreserved, sub-delims and "%". No "@": Host carries no userinfo.
_REG_NAME = frozenset(b"-._~!$&'()*+,;=%0123456789"
                      b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_IP_LITERAL = frozenset(b"0123456789abcdefABCDEF:.")
_DIGITS = frozenset(b"0123456789")
_SCHEME = frozenset(b"+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_BAD_VALUE = frozenset(b"\x00\r\n")

# Larger lengths cannot be real bodies and would overflow the native int64.
_MAX_CONTENT_LENGTH = (1 << 62) - 1


class HeadError(Exception):
    """A head the gateway refuses; `status` is the answer to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


def _trim(value: bytes) -> bytes:
    return value.strip(b" \t")


def _normalize_host(value: bytes) -> bytes | None:
    """Routing key of a trimmed Host value, or None when it is not an authority."""
    if value[:1] == b"[":
        end = value.find(b"]")
        if end < 2 or not _IP_LITERAL.issuperset(value[1:end]):
            return None
        rest = value[end + 1:]
        if rest and (rest[:1] != b":" or not _DIGITS.issuperset(rest[1:])):
            return None
        return value[:end + 1].lower()
    colon = value.find(b":")
    if colon >= 0:
        if not _DIGITS.issuperset(value[colon + 1:]):
            return None
        value = value[:colon]
    if not _REG_NAME.issuperset(value):
        return None
    if value.endswith(b"."):
        value = value[:-1]
    return value.lower() or None


def _content_length(value: bytes, status: int, who: str) -> int:
    value = _trim(value)
    if not value or not _DIGITS.issuperset(value):
        raise HeadError(status, f"invalid {who}Content-Length")
    length = int(value)
    if length > _MAX_CONTENT_LENGTH:
        raise HeadError(status, f"{who}Content-Length too large")
    return length


def _check_line(name: bytes, value: bytes, status: int, who: str) -> None:
    if not name or not _TOKEN.issuperset(name):
        raise HeadError(status, f"invalid {who}header name")
    if not _BAD_VALUE.isdisjoint(value):
        raise HeadError(status, f"invalid {who}header value")


def _connection_tokens(value: bytes, into: list[bytes]) -> None:
    for token in value.split(b","):
        token = _trim(token).lower()
        if token:
            into.append(token)


def _drop_named(headers: list[tuple[bytes, bytes]], tokens: list[bytes]) -> None:
    named = {t for t in tokens if t not in _UNDROPPABLE}
    if named:
        headers[:] = [h for h in headers if h[0].lower() not in named]


def _find(raw: tuple[tuple[bytes, bytes], ...], name: bytes) -> bytes | None:
    name = name.lower()
    for n, v in raw:
        if n.lower() == name:
            return v
    return None


class _Frozen:
    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__}.{name} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__}.{name} is read-only")

    def _set(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def header(self, name: bytes) -> bytes | None:
        """First value of header `name` as received, hop-by-hop ones included
        (Host: the routed one, see parse_request_head)."""
        return _find(self._raw, name)  # type: ignore[attr-defined]


class RequestHead(_Frozen):
    """A validated client request head; see `parse_request_head`."""

    __slots__ = ("_raw", "chunked", "content_length", "expect_continue", "headers", "host",
                 "host_header", "idempotent", "keep_alive", "method", "path", "target",
                 "upgrade", "version", "via", "xff")

    def __repr__(self) -> str:
        return (f"<RequestHead {self.method!r} {self.target!r} HTTP/{self.version // 10}."
                f"{self.version % 10} host={self.host!r}>")


class ResponseHead(_Frozen):
    """A validated upstream response head; see `parse_response_head`."""

    __slots__ = ("_raw", "chunked", "content_length", "headers", "keep_alive", "reason",
                 "status", "upgrade", "version", "via")

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status} {self.reason!r} HTTP/{self.version // 10}." \
               f"{self.version % 10}>"


def _version(version: str, status: int, reason: str) -> int:
    if version == "1.1":
        return 11
    if version == "1.0":
        return 10
    raise HeadError(status, reason)


def _split_target(method: bytes, target: bytes) -> tuple[bytes | None, bytes, bytes]:
    """(authority, target to forward, path) of a request target (RFC 9112 3.2).

    - origin-form "/p?q": no authority; forwarded as is; path "/p".
    - asterisk-form "*": OPTIONS only (RFC 9112 3.2.4); path "*".
    - authority-form "host:port": CONNECT only, and CONNECT takes nothing
      else (RFC 9112 3.2.3, RFC 9110 9.3.6); the authority is the target
      itself; path empty (the target has none).
    - absolute-form "http://authority/p?q": http or https only, no userinfo
      (RFC 9110 4.2.4), a non-empty authority that is a valid Host. The
      request is routed by that authority and forwarded in origin-form
      (RFC 9112 3.2.2: a server MUST ignore Host then and use the target's
      host); an empty path becomes "/" (RFC 9112 3.2.1), or "*" for an
      OPTIONS without path and query (RFC 9112 3.2.4).
    A fragment is part of no form (RFC 9112 3.2). Every refusal is a 400.
    """
    if b"#" in target:
        raise HeadError(400, "fragment in request target")
    if target[:1] == b"/":
        if method == b"CONNECT":
            raise HeadError(400, "CONNECT needs an authority-form target")
        query = target.find(b"?")
        return None, target, target if query < 0 else target[:query]
    if target == b"*":
        if method != b"OPTIONS":
            raise HeadError(400, "asterisk-form target only with OPTIONS")
        return None, target, target
    if method == b"CONNECT":
        _, colon, port = target.rpartition(b":")
        if not (colon and port and _DIGITS.issuperset(port)) or _normalize_host(target) is None:
            raise HeadError(400, "invalid CONNECT target")
        return target, target, b""
    end = target.find(b"://")
    scheme = target[:end]
    if end <= 0 or not _SCHEME.issuperset(scheme) or not scheme[:1].isalpha():
        raise HeadError(400, "invalid request target")
    if scheme.lower() not in (b"http", b"https"):
        raise HeadError(400, "request target scheme is not http or https")
    start = end = end + 3
    while end < len(target) and target[end] not in b"/?":
        end += 1
    authority = target[start:end]
    if not authority:
        raise HeadError(400, "empty authority in request target")
    if b"@" in authority:
        raise HeadError(400, "userinfo in request target")
    if _normalize_host(authority) is None:
        raise HeadError(400, "invalid authority in request target")
    origin = target[end:]
    if not origin and method == b"OPTIONS":
        return authority, b"*", b"*"  # the server as a whole (RFC 9112 3.2.4)
    if origin[:1] != b"/":
        origin = b"/" + origin
    query = origin.find(b"?")
    return authority, origin, origin if query < 0 else origin[:query]


def _with_host(items: Iterable[tuple[bytes, bytes]], authority: bytes) -> list[tuple[bytes, bytes]]:
    """`items` with the Host value replaced by `authority` (added first if absent)."""
    out = list(items)
    for i, (name, _) in enumerate(out):
        if name.lower() == b"host":
            out[i] = (name, authority)
            return out
    out.insert(0, (b"Host", authority))
    return out


def parse_request_head(method: bytes, target: bytes, version: str,
                       raw_headers: Iterable[tuple[bytes, bytes]],
                       reject_underscore: bool) -> RequestHead:
    """Validate a client head and split it into what the gateway needs.

    An absolute- or authority-form target names the host the request is
    routed by and forwarded to (RFC 9112 3.2.2); see _split_target.
    """
    v = _version(version, 505, "HTTP version not supported")
    raw = tuple(raw_headers)
    headers: list[tuple[bytes, bytes]] = []
    host_value = None
    hosts = 0
    length = -1
    te_value = None
    te_count = 0
    tokens: list[bytes] = []
    upgrade = None
    upgrade_fields = 0
    expect_seen = False
    expect_bad = False
    xff: list[bytes] = []
    via: list[bytes] = []
    for name, value in raw:
        _check_line(name, value, 400, "")
        if b"_" in name:
            if reject_underscore:
                raise HeadError(400, "underscore in header name")
            continue
        lname = name.lower()
        if lname == b"host":
            hosts += 1
            if host_value is None:
                host_value = _trim(value)
        elif lname == b"content-length":
            n = _content_length(value, 400, "")
            if length >= 0:
                if n != length:
                    raise HeadError(400, "conflicting Content-Length")
                continue
            length = n
            value = b"%d" % n  # forwarded as read, never as the peer spelled it
        elif lname == b"transfer-encoding":
            te_count += 1
            te_value = value
            continue
        elif lname == b"connection":
            _connection_tokens(value, tokens)
            continue
        elif lname == b"upgrade":
            upgrade_fields += 1
            if upgrade is None:
                upgrade = _trim(value)
            continue
        elif lname == b"expect":
            expect_seen = True
            if _trim(value).lower() != b"100-continue":
                expect_bad = True
            continue
        elif lname == b"x-forwarded-for":
            value = _trim(value)
            if value:
                xff.append(value)
            continue
        elif lname == b"via":
            value = _trim(value)
            if value:
                via.append(value)
            continue
        elif lname in HOP_BY_HOP or lname in _FORWARDING:
            continue
        headers.append((name, value))

    authority, forward, path = _split_target(method, target)
    # RFC 9112 3.2: every HTTP/1.1 request has exactly one valid Host, even
    # one whose target names the host; HTTP/1.0 may leave it out then.
    if hosts == 0:
        if authority is None or v == 11:
            raise HeadError(400, "missing Host header")
        host = None
    else:
        if hosts > 1:
            raise HeadError(400, "multiple Host headers")
        if not host_value:
            raise HeadError(400, "empty Host header")
        host = _normalize_host(host_value)
        if host is None:
            raise HeadError(400, "invalid Host header")
    if te_count:
        if length >= 0:
            raise HeadError(400, "Transfer-Encoding with Content-Length")
        if v == 10:
            raise HeadError(400, "Transfer-Encoding in HTTP/1.0")
        if te_count > 1 or _trim(te_value).lower() != b"chunked":
            raise HeadError(400, "unsupported Transfer-Encoding")
    if length > 0 or te_count:
        _check_body_allowed(method, upgrade_fields > 0 and b"upgrade" in tokens)
    if expect_bad:
        raise HeadError(417, "unsupported expectation")
    _drop_named(headers, tokens)
    if authority is not None:
        # What is routed, admitted and forwarded is the target's authority:
        # the one Host the head has from here on, header() included.
        host, host_value = _normalize_host(authority), authority
        headers = _with_host(headers, authority)
        raw = tuple(_with_host(raw, authority))

    close = b"close" in tokens
    head = RequestHead()
    head._set(
        _raw=raw, method=method, target=forward, path=path, version=v, host=host,
        host_header=host_value, content_length=length, chunked=te_count > 0,
        keep_alive=not close if v == 11 else not close and b"keep-alive" in tokens,
        # HTTP/1.0 has neither upgrades nor 100-continue (RFC 9110 7.8, 10.1.1).
        # h2c is never passed on (h2c smuggling past routing and admission).
        upgrade=(upgrade.lower() if upgrade and v == 11 and b"upgrade" in tokens
                 and upgrade.lower() != b"h2c" else None),
        expect_continue=expect_seen and v == 11,
        idempotent=method in _IDEMPOTENT,
        headers=headers,
        xff=b", ".join(xff) if xff else None,
        via=b", ".join(via) if via else None,
    )
    return head


def _check_body_allowed(method: bytes, upgrade_asked: bool) -> None:
    """Refuse a body that llhttp would hand to another protocol.

    llhttp treats the bytes after the head of CONNECT, and of any request
    with an Upgrade field and the `upgrade` connection option, as the
    tunnel's (httptools skips their body), while the request's own framing
    says they are its body: two readings of one message, so it is refused.
    A CONNECT request has no content anyway (RFC 9110 section 9.3.6).
    """
    if method == b"CONNECT":
        raise HeadError(400, "CONNECT request with a body")
    if upgrade_asked:
        raise HeadError(400, "request body with Upgrade")


def parse_response_head(status: int, reason: bytes, version: str,
                        raw_headers: Iterable[tuple[bytes, bytes]]) -> ResponseHead:
    """Validate an upstream head; every refusal is a 502 for the client."""
    v = _version(version, 502, "unsupported upstream HTTP version")
    if not 100 <= status <= 999:
        raise HeadError(502, "invalid upstream status")
    if not _BAD_VALUE.isdisjoint(reason):
        raise HeadError(502, "invalid upstream reason phrase")
    raw = tuple(raw_headers)
    headers: list[tuple[bytes, bytes]] = []
    length = -1
    te_value = None
    te_count = 0
    tokens: list[bytes] = []
    upgrade = None
    via: list[bytes] = []
    for name, value in raw:
        _check_line(name, value, 502, "upstream ")
        lname = name.lower()
        if b"_" in lname and lname.replace(b"_", b"-") in _MEANINGFUL:
            continue
        if lname == b"content-length":
            n = _content_length(value, 502, "upstream ")
            if length >= 0:
                if n != length:
                    raise HeadError(502, "conflicting upstream Content-Length")
                continue
            length = n
            value = b"%d" % n  # forwarded as read, never as the peer spelled it
        elif lname == b"transfer-encoding":
            te_count += 1
            te_value = value
            continue
        elif lname == b"connection":
            _connection_tokens(value, tokens)
            continue
        elif lname == b"upgrade":
            if upgrade is None:
                upgrade = _trim(value)
            continue
        elif lname == b"via":
            value = _trim(value)
            if value:
                via.append(value)
            continue
        elif lname in HOP_BY_HOP:
            continue
        headers.append((name, value))

    if te_count:
        if length >= 0:
            raise HeadError(502, "upstream sent Transfer-Encoding with Content-Length")
        if te_count > 1 or _trim(te_value).lower() != b"chunked":
            raise HeadError(502, "unsupported upstream Transfer-Encoding")
    _drop_named(headers, tokens)
    if (status < 200 or status == 204) and length >= 0:
        # No content, and it must not say it has any (RFC 9110 section 8.6).
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        length = -1

    close = b"close" in tokens
    head = ResponseHead()
    head._set(
        _raw=raw, status=status, reason=reason, version=v, content_length=length,
        chunked=te_count > 0,
        keep_alive=not close if v == 11 else not close and b"keep-alive" in tokens,
        upgrade=upgrade.lower() if upgrade and status == 101 else None,
        headers=headers,
        via=b", ".join(via) if via else None,
    )
    return head


def _status_line(status: int, reason: bytes) -> bytes:
    if not 100 <= status <= 999:
        raise ValueError(f"status {status} is not a three-digit code")
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def serialize_request_head(head: RequestHead, client_ip: bytes, proto: bytes,
                           via: bytes, body_length: int = -1) -> bytes:
    """The head to send upstream, with forwarding headers set by this hop.

    body_length >= 0: a chunked request whose whole body the gateway holds
    goes out decoded, with that Content-Length (RFC 9112 section 7.1.3).
    """
    out = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    for name, value in head.headers:
        out += (name, b": ", value, b"\r\n")
    out += (b"X-Forwarded-For: ", head.xff + b", " + client_ip if head.xff else client_ip,
            b"\r\nX-Forwarded-Proto: ", proto,
            b"\r\nX-Forwarded-Host: ", head.host_header,
            b"\r\nVia: ", head.via + b", 1.1 " if head.via else b"1.1 ", via, b"\r\n")
    if head.chunked and body_length >= 0:
        out.append(b"Content-Length: %d\r\n" % body_length)
    elif head.chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if head.upgrade is not None:
        out += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def serialize_response_head(head: ResponseHead, client_version: int, chunked: bool,
                            keep_alive: bool, via: bytes) -> bytes:
    """The head to send to the client.

    A 101 carrying an upgrade gets `Connection: upgrade` instead of close or
    keep-alive: the connection becomes a tunnel and neither applies.
    """
    out = [_status_line(head.status, head.reason)]
    for name, value in head.headers:
        out += (name, b": ", value, b"\r\n")
    out += (b"Via: ", head.via + b", 1.1 " if head.via else b"1.1 ", via, b"\r\n")
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if head.status == 101 and head.upgrade is not None:
        out += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
    elif not keep_alive:
        out.append(b"Connection: close\r\n")
    elif client_version == 10:
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def serialize_simple_response(status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                              body: bytes, keep_alive: bool) -> bytes:
    """A whole response generated by the gateway itself (errors, pages)."""
    out = [_status_line(status, reason)]
    for name, value in headers:
        out += (name, b": ", value, b"\r\n")
    out += (b"Content-Length: %d\r\n" % len(body),
            b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n",
            body)
    return b"".join(out)


__all__ = [
    "HOP_BY_HOP", "HeadError", "RequestHead", "ResponseHead", "parse_request_head",
    "parse_response_head", "serialize_request_head", "serialize_response_head",
    "serialize_simple_response",
]
