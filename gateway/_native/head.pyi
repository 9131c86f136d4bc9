"""Request/response head validation (native/head.pyx).

Import through `gateway.http`; `gateway.http.reference` is the plain-Python
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
    """Request target as received (origin-, absolute-, authority- or asterisk-form)."""
    path: bytes
    """Target without query; for absolute-form only the path part ("/" when empty)."""
    version: int
    """10 or 11."""
    host: bytes
    """Routing key: Host lower-cased, port and one trailing dot removed; IPv6 keeps brackets."""
    host_header: bytes
    """The Host value as received, OWS-trimmed."""
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
    forwarding headers and, under the drop policy, underscore names removed)."""
    xff: bytes | None
    """Incoming X-Forwarded-For values joined with ", "."""
    via: bytes | None
    """Incoming Via values joined with ", "."""
    def header(self, name: bytes) -> bytes | None:
        """First value of header `name` as received, hop-by-hop ones included."""

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

    Raises HeadError: 505 for versions other than 1.0/1.1; 400 for a missing,
    repeated, empty or malformed Host, bad header names or values (NUL, CR,
    LF), invalid or conflicting Content-Length, Transfer-Encoding other than a
    single `chunked`, with Content-Length or on HTTP/1.0, and underscore names
    when `reject_underscore`; 417 for an Expect other than 100-continue.
    """

def parse_response_head(status: int, reason: bytes, version: str,
                        raw_headers: Iterable[tuple[bytes, bytes]]) -> ResponseHead:
    """Validate an upstream head; every refusal is HeadError(502, ...)."""
