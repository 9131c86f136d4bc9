"""The client-side protocol on hostile input, without sockets or an event loop.

A ClientProtocol is built on a real App from a parsed config and driven by
hand: connection_made(MockTransport()), then data_received(...). Every case
here is answered by the gateway itself (no upstream is ever contacted), so
what it wrote and whether it closed is the whole observable behaviour.
Each case is fed both whole and one byte per call: a limit that only holds
when the bytes arrive in one read is not a limit.
"""

from __future__ import annotations

import time
from http import HTTPStatus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.proxy.app import App
from gateway.proxy.client import ClientProtocol
from tests.support.transport import MockTransport

CONFIG = b"""
[server]
listen = "127.0.0.1:1"

[[schools]]
name = "school"
hosts = ["school.test"]
# Nothing listens here, and no case below may try to reach it.
upstreams = ["127.0.0.1:9"]
"""


def make_app(extra: bytes = b"") -> App:
    return App(parse_config(CONFIG + extra, "test.toml"))


def connect(app: App | None = None) -> tuple[ClientProtocol, MockTransport]:
    proto = ClientProtocol(app or make_app())
    transport = MockTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    return proto, transport


def feed(proto: ClientProtocol, payload: bytes, bytewise: bool) -> None:
    if bytewise:
        for i in range(len(payload)):
            proto.data_received(payload[i:i + 1])
    else:
        proto.data_received(payload)


def parse_answer(written: bytes) -> tuple[int, str, dict[str, str], bytes]:
    head, sep, body = bytes(written).partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {bytes(written)[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers["content-length"]) == len(body), "one response, exactly framed"
    return int(status), reason, headers, body


def expect_refusal(transport: MockTransport, status: int, *words: str) -> None:
    got, reason, headers, body = parse_answer(transport.written)
    assert got == status, bytes(transport.written)
    assert reason == HTTPStatus(status).phrase
    assert headers["connection"] == "close"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    text = body.decode("utf-8").lower()
    assert 0 < len(text) <= 512
    assert any(w in text for w in words), f"{text!r} names none of {words}"
    assert transport.done


def head(*lines: str, request_line: str = "GET / HTTP/1.1") -> bytes:
    return ("\r\n".join((request_line, *lines)) + "\r\n\r\n").encode("latin-1")


CASES = {
    "long-request-line": (head("Host: school.test",
                               request_line=f"GET /{'a' * 9000} HTTP/1.1"), 414,
                          ("line", "uri", "target")),
    "many-headers": (head("Host: school.test", *(f"X-{i}: 1" for i in range(101))), 431,
                     ("header",)),
    "big-header-block": (head("Host: school.test", *(f"X-{i}: {'v' * 8000}" for i in range(5))),
                         431, ("header",)),
    "missing-host": (head("Accept: */*"), 400, ("host",)),
    "duplicate-host": (head("Host: school.test", "Host: school.test"), 400, ("host",)),
    "http2": (head("Host: school.test", request_line="GET / HTTP/2.0"), 505, ("version",)),
    "http09": (head("Host: school.test", request_line="GET / HTTP/0.9"), 505, ("version",)),
    # llhttp itself refuses these; the gateway tells 505 from 400 by the
    # request line's bytes, not by llhttp's message.
    "http12": (head("Host: school.test", request_line="GET / HTTP/1.2"), 505, ("version",)),
    "http30": (head("Host: school.test", request_line="GET /x HTTP/3.0"), 505, ("version",)),
    "http11-garbled": (head("Host: school.test", request_line="GET / HTTP/1.x"), 400,
                       ("malformed",)),
    "http12-after-empty-line": (b"\r\n" + head("Host: school.test",
                                                request_line="GET / HTTP/1.2"), 505,
                                ("version",)),
    "nul-in-value": (head("Host: school.test", "X-A: a\x00b"), 400, ("header", "char")),
    "cr-in-value": (head("Host: school.test", "X-A: a\rb"), 400, ("header", "lf", "cr")),
    "obs-fold": (head("Host: school.test", "X-A: a", " b"), 400, ("header", "whitespace")),
    "te-and-cl": (head("Host: school.test", "Content-Length: 5", "Transfer-Encoding: chunked",
                       request_line="POST / HTTP/1.1"), 400, ("transfer-encoding",)),
    "te-gzip": (head("Host: school.test", "Transfer-Encoding: gzip",
                     request_line="POST / HTTP/1.1"), 400, ("transfer-encoding",)),
    "te-twice": (head("Host: school.test", "Transfer-Encoding: chunked",
                      "Transfer-Encoding: chunked", request_line="POST / HTTP/1.1"), 400,
                 ("transfer-encoding",)),
    "cl-negative": (head("Host: school.test", "Content-Length: -1",
                         request_line="POST / HTTP/1.1"), 400, ("content-length",)),
    "cl-conflict": (head("Host: school.test", "Content-Length: 1", "Content-Length: 2",
                         request_line="POST / HTTP/1.1"), 400, ("content-length",)),
    "tls-client-hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), 400,
                         ("method", "malformed")),
    "unknown-host": (head("Host: elsewhere.example"), 421, ("host", "school")),
}


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_head_is_answered_and_closed(case, bytewise):
    payload, status, words = CASES[case]
    proto, transport = connect()
    feed(proto, payload, bytewise)
    expect_refusal(transport, status, *words)


@pytest.mark.parametrize(("line", "status"), [
    (b"GET / HTTP/1.2\r\n", 505), (b"GET / HTTP/1.2", 505), (b"\r\nGET / HTTP/9.9\r\n", 505),
    (b"GET / HTTP/1.1\r\n", 400), (b"GET / HTTP/1.23\r\n", 400), (b"GET / HTTPS/1.2\r\n", 400),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400), (None, 400),
])
def test_parser_error_status_does_not_depend_on_llhttps_message(line, status):
    # Whatever llhttp calls the error (its text may change between
    # releases), the request line's own bytes decide 505 against 400.
    from gateway._native.client import _parser_error

    for message in ("Invalid HTTP version", "HPE_INVALID_VERSION", ""):
        assert _parser_error(ValueError(message), line).status == status


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_unterminated_header_line_is_bounded(bytewise):
    # One header line that never ends: httptools buffers it without a
    # callback, so only the gateway's byte count can stop it.
    proto, transport = connect()
    feed(proto, b"GET / HTTP/1.1\r\nHost: school.test\r\nX-Endless: " + b"v" * 60000,
         bytewise)
    expect_refusal(transport, 431, "header")


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_underscore_header_rejected_when_configured(bytewise):
    proto, transport = connect(make_app(b'\n[limits]\nunderscore_headers = "reject"\n'))
    feed(proto, head("Host: school.test", "X_User: admin"), bytewise)
    expect_refusal(transport, 400, "underscore")


def test_nothing_more_is_written_after_a_refusal():
    proto, transport = connect()
    proto.data_received(head("Host: school.test", request_line="GET / HTTP/2.0"))
    answered = bytes(transport.written)
    proto.data_received(head("Host: school.test"))
    proto.data_received(b"\x00" * 1000)
    assert bytes(transport.written) == answered


def test_refusal_mid_head_lingers_then_is_aborted():
    # Half-closed after the refusal so the client can read it; the reaper
    # ends the lingering socket later.
    proto, transport = connect()
    proto.data_received(b"GET / HTTP/1.1\r\nHost: school.test\r\nX: a\x00b\r\n")
    assert transport.eof_written and not transport.closed
    proto.check_timeouts(time.monotonic() + 60)
    assert transport.closed


def test_header_timeout_is_408():
    proto, transport = connect()
    proto.data_received(b"GET / HTTP/1.1\r\nHost: school.test\r\nX-Slow: ")
    timeouts = proto.app.timeouts
    proto.check_timeouts(time.monotonic() + timeouts.header / 2)
    assert transport.written == b""
    proto.check_timeouts(time.monotonic() + timeouts.header + 1)
    expect_refusal(transport, 408, "header", "time")


def test_idle_connection_is_closed_silently_at_keepalive():
    proto, transport = connect()
    timeouts = proto.app.timeouts
    proto.check_timeouts(time.monotonic() + timeouts.keepalive / 2)
    assert not transport.closed
    proto.check_timeouts(time.monotonic() + timeouts.keepalive + 1)
    assert transport.closed
    assert transport.written == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_never_raise_and_get_at_most_one_refusal(data, step):
    # Random input can at best be a request for an unknown host, which the
    # gateway answers itself, so the upstream is never involved.
    proto, transport = connect()
    for i in range(0, len(data), step):
        proto.data_received(data[i:i + step])
    if transport.written:
        status, _, headers, _ = parse_answer(transport.written)
        assert 400 <= status < 600
        assert headers["connection"] == "close"
        assert transport.done


def test_upgrade_answered_by_the_gateway_ends_the_connection():
    # The parser is spent after an upgrade request; once the gateway's own
    # answer (421: no such school) is out, the connection must end rather
    # than sit open with nothing reading it.
    proto, transport = connect()
    proto.data_received(b"GET / HTTP/1.1\r\nHost: unknown.example\r\n"
                        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert bytes(transport.written).startswith(b"HTTP/1.1 421 ")
    assert transport.eof_written or transport.closed
    proto.check_timeouts(time.monotonic() + 60)
    assert transport.closed


def test_bodiless_request_refused_at_its_head_lingers_not_idles():
    # A 421 ends the connection; the same read's end of message must not put
    # the connection back to IDLE (where it would wait for the keep-alive
    # timeout and parse on).
    proto, transport = connect()
    proto.data_received(b"GET / HTTP/1.1\r\nHost: unknown.example\r\n\r\n")
    assert bytes(transport.written).startswith(b"HTTP/1.1 421 ")
    proto.data_received(b"GET / HTTP/1.1\r\nHost: school.test\r\n\r\n")
    assert bytes(transport.written).count(b"HTTP/1.1") == 1
    proto.check_timeouts(time.monotonic() + 5)
    assert transport.closed


# The gateway's own status endpoint answers with keep-alive, so a connection
# can be taken through whole requests and back to idle without an upstream.
STATUS = b"GET /.schoolgate/status HTTP/1.1\r\nHost: school.test\r\n\r\n"
CHUNKED_STATUS = (b"POST /.schoolgate/status HTTP/1.1\r\nHost: school.test\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")


def split_answers(written: bytes) -> list[tuple[int, dict[str, str]]]:
    """Each response in `written` (all framed by Content-Length): status, headers."""
    answers = []
    rest = bytes(written)
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head {head[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = {n.strip().lower(): v.strip()
                   for n, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        assert len(rest) >= length
        rest = rest[length:]
        answers.append((int(lines[0].split(" ", 2)[1]), headers))
    return answers


@pytest.mark.parametrize("bytewise", [False, True])
def test_idle_connection_gives_back_its_parser_and_reads_on(bytewise):
    # A keep-alive connection found idle by the reaper holds no parser and
    # no per-request containers (what an idle client costs the worker);
    # its next requests, pipelined, chunked, after a stray CRLF whose CR
    # came before the reaper, are read exactly as before.
    proto, transport = connect()
    feed(proto, STATUS, bytewise)
    assert [s for s, _ in split_answers(transport.written)] == [200]
    feed(proto, b"\r", bytewise)  # an empty line's CR before the next request
    proto.check_timeouts(time.monotonic() + 1)
    assert not transport.done
    assert (proto.parser, proto.out, proto.chunks, proto.queue) == (None, None, None, [])

    feed(proto, b"\n" + CHUNKED_STATUS + STATUS, bytewise)
    answers = split_answers(transport.written)
    assert [s for s, _ in answers] == [200, 200, 200]
    assert all(h["connection"] == "keep-alive" for _, h in answers)
    assert proto.chunks is not None and proto.parser is not None
    assert not transport.done

    # Idle again: trimmed again, and a malformed request after it is still
    # refused as one (the new parser is as strict as the first).
    proto.check_timeouts(time.monotonic() + 1)
    assert proto.parser is None
    answered = len(transport.written)
    feed(proto, b"GET / HTTP/1.1\r\nHost: school.test\r\nX: a\x00b\r\n\r\n", bytewise)
    del transport.written[:answered]
    expect_refusal(transport, 400, "header", "char")


def test_connection_mid_request_keeps_its_parser():
    # Only a connection between requests gives its parser back: one whose
    # head is half read keeps the state llhttp holds for it.
    proto, transport = connect()
    proto.data_received(STATUS[:30])
    parser = proto.parser
    proto.check_timeouts(time.monotonic() + 1)
    assert proto.parser is parser
    proto.data_received(STATUS[30:])
    assert [s for s, _ in split_answers(transport.written)] == [200]
