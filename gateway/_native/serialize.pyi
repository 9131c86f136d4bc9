"""Request/response head serialization (native/serialize.pyx).

Import through `gateway.http`; `tests/oracles/http.py` is the plain-Python
model with the same behaviour.
"""

from gateway._native.head import RequestHead, ResponseHead

def serialize_request_head(head: RequestHead, client_ip: bytes, proto: bytes,
                           via: bytes, body_length: int = -1) -> bytes:
    """The HTTP/1.1 head to send upstream.

    Writes `head.target` and `head.headers`, so an absolute-form request goes
    out in origin-form with Host set to its authority (see parse_request_head).
    Appends `client_ip` to X-Forwarded-For, sets X-Forwarded-Proto/Host, adds
    this hop to Via, and re-adds Transfer-Encoding and Connection/Upgrade.
    body_length >= 0 on a chunked request (its whole body held by the
    gateway): `Content-Length: body_length` replaces Transfer-Encoding, the
    body being forwarded decoded (RFC 9112 section 7.1.3).
    """

def serialize_response_head(head: ResponseHead, client_version: int, chunked: bool,
                            keep_alive: bool, via: bytes) -> bytes:
    """The head to send to the client.

    A 101 with an upgrade gets `Connection: upgrade` + `Upgrade`; otherwise
    `Connection: close` when not `keep_alive`, `Connection: keep-alive` for
    HTTP/1.0 clients.
    """

def serialize_simple_response(status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                              body: bytes, keep_alive: bool) -> bytes:
    """A whole gateway-generated response (errors, pages) with Content-Length and Connection."""
