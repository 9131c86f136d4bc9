"""Request/response head validation and serialization for the proxy core.

Re-exports the compiled implementation (`native/head.pyx` parses and
validates, `native/serialize.pyx` writes heads out);
`tests/oracles/http.py` is the plain-Python model it is tested against.
"""

from gateway._native.head import (
    HOP_BY_HOP,
    HeadError,
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
)
from gateway._native.serialize import (
    serialize_request_head,
    serialize_response_head,
    serialize_simple_response,
)

__all__ = [
    "HOP_BY_HOP", "HeadError", "RequestHead", "ResponseHead", "parse_request_head",
    "parse_response_head", "serialize_request_head", "serialize_response_head",
    "serialize_simple_response",
]
