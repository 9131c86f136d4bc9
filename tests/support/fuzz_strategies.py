"""Hypothesis strategies for the differential fuzzer (tests/support/fuzz.py).

Request streams are one to three valid-looking messages, varied where
parsers disagree: Content-Length and Transfer-Encoding spellings and
duplicates, chunk-size lines (leading zeros, case, extensions, sizes that
lie), whitespace before a colon, obs-fold, bare LF and bare CR, absolute-form
targets, CONNECT, Upgrade, Expect: 100-continue, bodies that hide a second
request; then perhaps a byte inserted or deleted, and cut into separate
writes. Responses get the same treatment around their framing, plus 1xx
heads, bytes after the body, many or endless header lines.
"""

from __future__ import annotations

import re
from itertools import pairwise

from hypothesis import strategies as st

from tests.support.fuzz import ALPHA, BETA, RequestCase, ResponseCase, read_response

# A request hidden in a body: if a parser misframes the body, an upstream
# sees /smuggled, which no client ever sent as a request.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: beta.test\r\n\r\n"
# A response hidden after a response's body.
POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nPOISON"


# Hypothesis starts from, and shrinks toward, the first value of a
# sampled_from and the smallest integer: the well-formed choice is always
# first, and a rare branch is taken on the largest draw (== n of
# integers(0, n)), so the simplest stream is a valid one.
def weighted(*pairs: tuple[int, object]) -> st.SearchStrategy:
    return st.sampled_from([value for weight, value in pairs for _ in range(weight)])


_WORDS = st.binary(min_size=1, max_size=24).map(
    lambda b: bytes(97 + x % 26 for x in b))  # letters: readable in reports
_BODIES = st.one_of(
    weighted((2, b""), (1, SMUGGLED), (1, b"0\r\n\r\n" + SMUGGLED), (1, b"\r\n")), _WORDS)


# -- framing header spellings -----------------------------------------------------

_CL_NAMES = weighted((24, b"Content-Length"), (4, b"content-length"), (1, b"CONTENT-LENGTH"),
                     (1, b"Content-Length "), (1, b"Content_Length"), (1, b" Content-Length"))
_TE_NAMES = weighted((24, b"Transfer-Encoding"), (4, b"transfer-encoding"),
                     (1, b"Transfer-Encoding "), (1, b"Transfer_Encoding"),
                     (1, b" Transfer-Encoding"))
_TE_VALUES = weighted((30, b"chunked"), (3, b"Chunked"), (1, b"CHUNKED"), (1, b" chunked"),
                      (1, b"chunked "), (1, b"\tchunked"), (1, b"gzip, chunked"),
                      (1, b"chunked, chunked"), (1, b"chunked,"), (1, b"identity"),
                      (1, b"identity, chunked"), (1, b"chunked;q=1"), (1, b"\x0bchunked"),
                      (1, b"xchunked"))


@st.composite
def content_length_value(draw: st.DrawFn, n: int) -> bytes:
    kind = draw(weighted((30, "exact"), (3, "zeros"), (1, "ows"), (1, "list-same"),
                         (1, "list-differ"), (2, "lie"), (1, "plus"), (1, "negative"),
                         (1, "hex"), (1, "huge")))
    if kind == "zeros":
        return b"0" * draw(st.integers(1, 24)) + b"%d" % n
    if kind == "ows":
        return b"%d " % n
    if kind == "list-same":
        return b"%d, %d" % (n, n)
    if kind == "list-differ":
        return b"%d, %d" % (n, n + 1)
    if kind == "lie":
        return b"%d" % max(0, n + draw(st.sampled_from([-3, -1, 1, 2, 7])))
    if kind == "plus":
        return b"+%d" % n
    if kind == "negative":
        return b"-%d" % max(1, n)
    if kind == "hex":
        return b"0x%x" % n
    if kind == "huge":
        return b"9" * draw(st.integers(19, 24))
    return b"%d" % n


@st.composite
def chunk_size_line(draw: st.DrawFn, size: int) -> bytes:
    """A chunk-size line for ``size`` bytes, as spelled by someone creative."""
    declared = size
    if draw(st.integers(0, 9)) == 9:
        declared = max(0, size + draw(st.sampled_from([-2, -1, 1, 5])))
    digits = b"%x" % declared
    if draw(st.booleans()):
        digits = digits.upper()
    zeros = draw(weighted((10, 0), (2, 1), (1, 3), (1, 15), (1, 16), (2, 17), (2, 20),
                          (1, 23), (1, 40)))
    ext = draw(weighted((20, b""), (3, b";a=b"), (1, b";a"), (1, b';a="x y"'), (1, b" ;a=b"),
                        (1, b"; a = b"), (1, b";" + b"e" * 300), (1, b"\t")))
    eol = draw(weighted((30, b"\r\n"), (1, b"\n"), (1, b"\r"), (1, b" \r\n")))
    return b"0" * zeros + digits + ext + eol


@st.composite
def chunked_body(draw: st.DrawFn, body: bytes) -> bytes:
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=2)))
    bounds = [0, *[c for c in cuts if 0 < c < len(body)], len(body)]
    out = bytearray()
    for a, b in pairwise(bounds):
        piece = body[a:b]
        if not piece:
            continue
        out += draw(chunk_size_line(len(piece)))
        out += piece
        out += draw(weighted((30, b"\r\n"), (1, b"\n"), (1, b""), (1, b"XX")))
    last_zeros = draw(weighted((10, 1), (1, 2), (1, 17), (1, 24)))
    out += b"0" * last_zeros + draw(weighted((8, b""), (1, b";a=b"))) + b"\r\n"
    if draw(st.integers(0, 5)) == 5:
        out += b"X-Trailer: 1\r\n"
    out += draw(weighted((30, b"\r\n"), (1, b"\n")))
    return bytes(out)


@st.composite
def framed(draw: st.DrawFn, framing: str, body: bytes
           ) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The framing header fields and the payload carrying ``body``:
    "length", "length-twice", "chunked", "chunked-twice", "both"
    (Transfer-Encoding and Content-Length) or "none" (the body's bytes
    simply follow the head)."""
    headers: list[tuple[bytes, bytes]] = []
    payload = body
    if framing in ("length", "length-twice"):
        headers.append((draw(_CL_NAMES), draw(content_length_value(len(body)))))
        if framing == "length-twice":
            headers.append((b"Content-Length", draw(content_length_value(len(body)))))
    elif framing in ("chunked", "chunked-twice", "both"):
        headers.append((draw(_TE_NAMES), draw(_TE_VALUES)))
        if framing == "chunked-twice":
            headers.append((b"Transfer-Encoding", draw(_TE_VALUES)))
        payload = draw(chunked_body(body)) if body else b"0\r\n\r\n"
        if framing == "both":
            headers.append((b"Content-Length", draw(content_length_value(len(payload)))))
    return headers, payload


def framing_tags(headers: list[tuple[bytes, bytes]], payload: bytes, framing: str
                 ) -> set[str]:
    tags = set()
    if framing in ("chunked", "chunked-twice", "both") and _long_size_line(payload):
        tags.add(LONG_CHUNK_SIZE)
    for name, value in headers:
        if name.strip().lower() == b"content-length" and len(value.strip()) > 20 \
                and value.strip().isdigit():
            tags.add(LONG_CONTENT_LENGTH)
    return tags


# -- requests ----------------------------------------------------------------------

_HOSTS = weighted((6, ALPHA.encode()), (4, BETA.encode()), (1, b"ALPHA.test"),
                  (1, b"alpha.test:80"), (1, b"beta.test."), (1, b"other.test"))
_AUTHORITIES = weighted((3, ALPHA.encode()), (3, BETA.encode()), (1, b"Beta.Test"),
                        (1, b"alpha.test:8080"), (1, b"other.test"))
_METHODS = weighted((5, b"GET"), (5, b"POST"), (1, b"PUT"), (1, b"HEAD"), (1, b"DELETE"),
                    (1, b"OPTIONS"), (1, b"PATCH"), (2, b"CONNECT"))
_EXTRA = weighted(
    (3, ()),
    (2, ((b"Expect", b"100-continue"),)),
    (1, ((b"Connection", b"close"),)),
    (1, ((b"Connection", b"keep-alive"),)),
    (1, ((b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
         (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13"))),
    (1, ((b"Upgrade", b"h2c"), (b"Connection", b"Upgrade, HTTP2-Settings"),
         (b"HTTP2-Settings", b"AAMAAABkAAQAAP__"))),
    (1, ((b"X-Fold", b"a\r\n b"),)),
    (1, ((b"X-Tab", b"\tv\t"),)),
    (1, ((b"Connection", b"Content-Length"),)),
)


# Tags a generated request or response may carry: the features of the
# gateway's known faults (see KNOWN_FAILING in tests/fuzz), so that the
# bounded run can leave out what is still being fixed while the long run
# tries everything.
CONNECT_FRAMING = "connect-framing"      # CONNECT with Content-Length or Transfer-Encoding
UPGRADE_FRAMING = "upgrade-framing"      # Upgrade request with Content-Length or T-E
ABSOLUTE_OTHER_HOST = "absolute-other-host"  # absolute-form target naming another host
LONG_CHUNK_SIZE = "long-chunk-size"      # chunk-size line of more than 16 digits
EXTRA_AFTER_BODY = "extra-after-body"    # response bytes after the end h11 reads
MANY_HEADERS = "many-headers"            # response head over the request-side limits
LONG_CONTENT_LENGTH = "long-content-length"  # Content-Length of more than 20 digits
BARE_CR_START = "bare-cr-start"          # a bare CR where a line (a start line) begins


def _host_of(authority: bytes) -> bytes:
    return authority.lower().rsplit(b":", 1)[0].rstrip(b".")


@st.composite
def request_message(draw: st.DrawFn, index: int) -> tuple[bytes, frozenset[str]]:
    tags: set[str] = set()
    method = draw(_METHODS)
    host = draw(_HOSTS)
    path = b"/f%d" % index + draw(weighted((3, b""), (1, b"?q=1"), (1, b"/x?y=%20z")))
    form = draw(weighted((6, "origin"), (3, "absolute"), (1, "asterisk")))
    if method == b"CONNECT":
        target = draw(weighted((3, b"alpha.test:443"), (1, b"beta.test:443")))
    elif form == "absolute":
        authority = draw(_AUTHORITIES)
        target = b"http://" + authority + path
        if _host_of(authority) != _host_of(host):
            tags.add(ABSOLUTE_OTHER_HOST)
    elif form == "asterisk" and method == b"OPTIONS":
        target = b"*"
    else:
        target = path
    version = draw(weighted((10, b"HTTP/1.1"), (1, b"HTTP/1.0")))
    body = draw(_BODIES)
    framing = draw(weighted((3, "none"), (5, "length"), (5, "chunked"), (1, "both"),
                            (1, "length-twice"), (1, "chunked-twice")))
    headers: list[tuple[bytes, bytes]] = []
    host_count = draw(weighted((30, 1), (1, 0), (1, 2)))
    headers += [(b"Host", host)] * host_count
    framing_headers, payload = draw(framed(framing, body))
    headers += framing_headers
    extra = draw(_EXTRA)
    headers += list(extra)
    if framing != "none":
        if method == b"CONNECT":
            tags.add(CONNECT_FRAMING)
        if any(name == b"Upgrade" for name, _ in extra):
            tags.add(UPGRADE_FRAMING)
    tags |= framing_tags(framing_headers, payload, framing)
    headers = draw(st.permutations(headers))
    lines = [method + b" " + target + b" " + version]
    lines += [name + b": " + value for name, value in headers]
    eols = [b"\r\n"] * (len(lines) + 1)
    if draw(st.integers(0, 11)) == 11:
        eols[draw(st.integers(0, len(eols) - 1))] = draw(weighted((3, b"\n"), (1, b"\r")))
    head = b"".join(line + eol for line, eol in zip(lines, eols, strict=False)) + eols[-1]
    return head + payload, frozenset(tags)


def _long_size_line(payload: bytes) -> bool:
    # Any line of the chunked payload starting with 17 or more hex digits.
    for line in payload.replace(b"\r", b"\n").split(b"\n"):
        digits = len(line) - len(line.lstrip(b"0123456789abcdefABCDEF"))
        if digits > 16:
            return True
    return False


_MUTATION_BYTES = weighted((2, b" "), (1, b"\t"), (2, b"\r"), (2, b"\n"), (2, b"0"),
                           (1, b","), (1, b";"), (1, b":"), (1, b"\x00"), (1, b"a"))


@st.composite
def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """Perhaps one or two byte-level edits at random places."""
    for _ in range(draw(weighted((12, 0), (2, 1), (1, 2)))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(weighted((3, "insert"), (2, "delete"), (2, "lf")))
        if kind == "insert":
            data = data[:at] + draw(_MUTATION_BYTES) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 1:]
        else:  # the next CRLF from here becomes a bare LF
            crlf = data.find(b"\r\n", at)
            if crlf >= 0:
                data = data[:crlf] + data[crlf + 1:]
    return data


@st.composite
def request_cases(draw: st.DrawFn) -> RequestCase:
    count = draw(weighted((5, 1), (3, 2), (2, 3)))
    messages = [draw(request_message(i)) for i in range(count)]
    data = draw(mutate(b"".join(m for m, _ in messages)))
    cuts = draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=3))
    case = RequestCase.split(data, tuple(cuts))
    tags = frozenset().union(*(tags for _, tags in messages))
    case.tags = tags | _bare_cr_start(data)
    return case


def _bare_cr_start(data: bytes) -> frozenset[str]:
    # A CR not followed by LF where a start line (or any line) begins.
    return frozenset({BARE_CR_START}) if re.search(rb"(?:^|\n)\r(?!\n)", data) \
        else frozenset()


# -- responses ---------------------------------------------------------------------

_STATUSES = weighted((8, b"200 OK"), (1, b"201 Created"), (1, b"204 No Content"),
                     (1, b"304 Not Modified"), (1, b"404 Not Found"),
                     (1, b"500 Internal Server Error"), (1, b"200 "), (1, b"200"))
_INTERIM = weighted((6, b""), (1, b"HTTP/1.1 100 Continue\r\n\r\n"),
                    (1, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"),
                    (1, b"HTTP/1.1 102 Processing\r\n\r\n"))


@st.composite
def response_message(draw: st.DrawFn) -> tuple[bytes, frozenset[str]]:
    tags: set[str] = set()
    version = draw(weighted((10, b"HTTP/1.1"), (1, b"HTTP/1.0")))
    status = draw(_STATUSES)
    body = draw(st.one_of(weighted((2, b""), (1, POISON)), _WORDS))
    framing = draw(weighted((5, "length"), (5, "chunked"), (2, "none"), (1, "both"),
                            (1, "length-twice"), (1, "chunked-twice")))
    headers: list[tuple[bytes, bytes]] = [(b"X-Case", b"1")]
    framing_headers, payload = draw(framed(framing, body))
    headers += framing_headers
    headers += list(draw(weighted(
        (6, ()), (1, ((b"Connection", b"close"),)), (1, ((b"Connection", b"keep-alive"),)),
        (1, ((b"Keep-Alive", b"timeout=5"),)), (1, ((b"X-Fold", b"a\r\n b"),)))))
    many = draw(weighted((8, 0), (1, 120), (1, 1500), (1, 6000)))
    headers += [(b"X-H%d" % i, b"v") for i in range(many)]
    long_value = draw(weighted((8, 0), (1, 9000), (1, 70000)))
    if long_value:
        headers.append((b"X-Long", b"v" * long_value))
    if many > 100 or long_value > 32768:
        tags.add(MANY_HEADERS)
    tags |= framing_tags(framing_headers, payload, framing)
    headers = draw(st.permutations(headers))
    lines = [version + b" " + status] + [name + b": " + value for name, value in headers]
    eols = [b"\r\n"] * (len(lines) + 1)
    if draw(st.integers(0, 11)) == 11:
        eols[draw(st.integers(0, len(eols) - 1))] = draw(weighted((3, b"\n"), (1, b"\r")))
    head = b"".join(line + eol for line, eol in zip(lines, eols, strict=False)) + eols[-1]
    after = draw(weighted((8, b""), (2, POISON), (1, b"\r\n"), (1, b"garbage")))
    return draw(_INTERIM) + head + payload + after, frozenset(tags)


@st.composite
def response_cases(draw: st.DrawFn) -> ResponseCase:
    if draw(st.integers(0, 19)) == 19:
        # A header line that never ends (the upstream then closes).
        return ResponseCase([b"HTTP/1.1 200 OK\r\nX-Endless: " + b"v" * 200000],
                            frozenset({MANY_HEADERS}))
    data, tags = draw(response_message())
    data = draw(mutate(data))
    tags |= _bare_cr_start(data)
    if read_response(data).leftover:
        # Bytes after the end h11 reads: appended, or a body a 204/304 or a
        # short Content-Length does not cover.
        tags |= {EXTRA_AFTER_BODY}
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=2)))
    bounds = [0, *[c for c in cuts if 0 < c < len(data)], len(data)]
    return ResponseCase([data[a:b] for a, b in pairwise(bounds)], tags)
