"""Request/response head validation (native/head.pyx).

Import through `gateway.http`; `tests/oracles/http.py` is the plain-Python
model with the same behaviour.
"""

from collections.abc import Iterable

HOP_BY_HOP: frozenset[bytes]
"""Lower-case names of the hop-by-hop headers never forwarded as received."""

class HeadError(Exception):
    """A head the gateway refuses; `status` is the answer to send."""

    status: int
    reason: str
    def __init__(self, status: int, reason: str) -> None: ...

class RequestHead:
    """A validated client request head; see `parse_request_head`."""

    method: bytes
    target: bytes
    """The target to forward: as received for origin-form ("/p?q"), asterisk-form
    ("*", OPTIONS only) and authority-form ("host:port", CONNECT only); an
    absolute-form target ("http://host/p?q") becomes origin-form ("/p?q"; "/"
    for an empty path, "*" for an OPTIONS without path and query), RFC 9112 3.2."""
    path: bytes
    """`target` without its query; "*" for asterisk-form, b"" for authority-form."""
    version: int
    """10 or 11."""
    host: bytes
    """Routing key of `host_header`: lower-cased, port and one trailing dot removed;
    IPv6 keeps brackets."""
    host_header: bytes
    """The Host the request is routed by and forwarded with: the target's authority
    for absolute- and authority-form (a received Host is then ignored and replaced,
    RFC 9112 3.2.2), else the received Host value, OWS-trimmed."""
    content_length: int
    """-1 when absent."""
    chunked: bool
    keep_alive: bool
    """Whether the client connection may persist after this exchange."""
    upgrade: bytes | None
    """Lower-cased Upgrade value when Connection lists `upgrade` (HTTP/1.1 only)."""
    expect_continue: bool
    idempotent: bool
    headers: list[tuple[bytes, bytes]]
    """End-to-end headers in received order and case (hop-by-hop, Connection-named,
    forwarding headers and, under the drop policy, underscore names removed); Host
    carries `host_header` (added first for an HTTP/1.0 absolute-form without one)."""
    xff: bytes | None
    """Incoming X-Forwarded-For values joined with ", "."""
    via: bytes | None
    """Incoming Via values joined with ", "."""
    def header(self, name: bytes) -> bytes | None:
        """First value of header `name` as received, hop-by-hop ones included
        (Host: `host_header`, the one the request is routed by)."""

class ResponseHead:
    """A validated upstream response head; see `parse_response_head`."""

    status: int
    reason: bytes
    version: int
    content_length: int
    chunked: bool
    keep_alive: bool
    """Whether the upstream connection can be reused."""
    upgrade: bytes | None
    """Lower-cased Upgrade value of a 101, else None."""
    headers: list[tuple[bytes, bytes]]
    via: bytes | None
    """Upstream Via values joined with ", "."""
    def header(self, name: bytes) -> bytes | None:
        """First value of header `name` as received, hop-by-hop ones included."""

def parse_request_head(method: bytes, target: bytes, version: str,
                       raw_headers: Iterable[tuple[bytes, bytes]],
                       reject_underscore: bool) -> RequestHead:
    """Validate a client head (as httptools delivered it) and split out what the gateway needs.

    The request is routed by, and forwarded to, one authority: the Host
    header's for origin- and asterisk-form targets, the target's own for
    absolute- and authority-form ones (RFC 9112 3.2.2: the received Host is
    then ignored; the head's Host becomes the target's authority and the
    target origin-form, see `RequestHead.target`).

    Raises HeadError: 505 for versions other than 1.0/1.1; 400 for a bad
    request target (a fragment; "*" but not OPTIONS; CONNECT without, or
    another method with, an authority-form "host:port"; an absolute-form
    target whose scheme is not http/https, with userinfo, or with an empty or
    malformed authority), for a missing (allowed only for an HTTP/1.0
    absolute-form request), repeated, empty or malformed Host, bad header
    names or values (NUL, CR, LF), invalid or conflicting Content-Length,
    Transfer-Encoding other than a single `chunked`, with Content-Length or
    on HTTP/1.0, and underscore names when `reject_underscore`; 417 for an
    Expect other than 100-continue.
    """

def parse_response_head(status: int, reason: bytes, version: str,
                        raw_headers: Iterable[tuple[bytes, bytes]]) -> ResponseHead:
    """Validate an upstream head; every refusal is HeadError(502, ...)."""
