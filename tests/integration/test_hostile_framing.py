"""Hostile body framing: Content-Length / Transfer-Encoding ambiguity, chunk
extensions and the request-smuggling catalogue (CL.TE, TE.CL, TE.TE).

The question for smuggling is not only what the client is told but what the
upstream parsed, so the upstream here is a recorder living in the test
process: it parses every byte the gateway sends it (with httptools, as a
typical Python upstream would), answers each complete request with 200, and
keeps every request it saw, complete or not. A case passes when the upstream
saw exactly the requests the client legitimately made and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clients import RawConn, build_request, chunked, wait_until
from tests.support.procs import Gateway, gateway_config
from tests.support.recorder import (
    Recorder,
    Seen,
    expect_400,
    expect_clean_follow_up,
    head,
    log_tail,
)


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    with Recorder.running() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, recorder: Recorder) -> Iterator[Gateway]:
    gw = Gateway(gateway_config([recorder.addr]), tmp_path_factory.mktemp("hostile-framing"),
                 name="gateway").start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def streaming_gateway(tmp_path_factory: pytest.TempPathFactory,
                      recorder: Recorder) -> Iterator[Gateway]:
    """The same with request buffering off: bodies stream to the upstream as
    they arrive, so a body can be cut off half-forwarded."""
    gw = Gateway(gateway_config([recorder.addr], school={"request_buffering": False}),
                 tmp_path_factory.mktemp("hostile-framing-streaming"),
                 name="gateway-streaming").start()
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def fresh_record(recorder: Recorder) -> Iterator[None]:
    recorder.clear()
    yield
    assert not recorder.parse_errors, f"upstream could not parse: {recorder.parse_errors}"


# -- positive controls ---------------------------------------------------------

def test_chunked_upload_with_short_extension_is_forwarded(gateway, recorder):
    body = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    payload = head("POST /chunked-ok HTTP/1.1", "Transfer-Encoding: chunked") + body
    with RawConn(gateway.port) as conn:
        conn.send(payload)
        resp = conn.recv_response("POST")
    assert resp.status == 200
    [seen] = recorder.snapshot()
    assert seen.complete and seen.target == "/chunked-ok" and seen.body == b"hello world"


# -- Content-Length with Transfer-Encoding -------------------------------------

@pytest.mark.parametrize("order", ["cl-first", "te-first"])
def test_transfer_encoding_with_content_length_is_400(gateway, recorder, order):
    lines = ["Content-Length: 5", "Transfer-Encoding: chunked"]
    if order == "te-first":
        lines.reverse()
    expect_400(gateway, head("POST /te-cl HTTP/1.1", *lines) + chunked(b"hello"),
               ("transfer-encoding", "content-length"))
    assert recorder.snapshot() == []


@pytest.mark.parametrize("te_lines", [
    ["Transfer-Encoding: gzip"],
    ["Transfer-Encoding: chunked, gzip"],
    ["Transfer-Encoding: gzip, chunked"],
    ["Transfer-Encoding: xchunked"],
    ["Transfer-Encoding: chunked-false"],
    ["Transfer-Encoding: identity"],
    ["Transfer-Encoding: \"chunked\""],
    ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
    ["Transfer-Encoding: chunked", "Transfer-Encoding: identity"],
], ids=["gzip", "chunked-gzip", "gzip-chunked", "xchunked", "suffix", "identity", "quoted",
        "two-chunked", "chunked-identity"])
def test_transfer_encoding_other_than_chunked_is_400(gateway, recorder, te_lines):
    expect_400(gateway, head("POST /te HTTP/1.1", *te_lines) + chunked(b"hello"),
               ("transfer-encoding", "encoding"))
    assert recorder.snapshot() == []


def test_transfer_encoding_in_http10_is_400(gateway, recorder):
    # HTTP/1.0 has no chunked coding; a 1.0 upstream would read to close.
    payload = head("POST /te10 HTTP/1.0", "Transfer-Encoding: chunked") + chunked(b"hello")
    expect_400(gateway, payload)
    assert recorder.snapshot() == []


# -- chunk extensions ----------------------------------------------------------

def _wait_closed(recorder: Recorder, seen: Seen) -> bool:
    return wait_until(lambda: seen.conn in recorder.closed, timeout=5.0)


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "across-reads"])
def test_chunk_extension_over_limit_is_400(gateway, recorder, split):
    ext = b";" + b"e" * 5000
    body = b"5" + ext + b"\r\nhello\r\n0\r\n\r\n"
    first = head("POST /chunk-ext HTTP/1.1", "Transfer-Encoding: chunked")
    with RawConn(gateway.port) as conn:
        if split:
            conn.send(first + body[:2000])
            assert conn.recv_available(0.3) == b""  # still under the limit: no answer yet
            try:
                conn.send(body[2000:])
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            conn.send(first + body)
        resp = conn.recv_response("POST")
        assert resp.status == 400, f"{resp}\n{log_tail(gateway)}"
        assert b"chunk" in resp.body.lower()
        assert conn.closed()
    # The head may have gone ahead of the body; if so, the upstream must be
    # cut off mid-body, never handed a terminating chunk.
    for seen in recorder.snapshot():
        assert not seen.complete, f"upstream got a complete request: {seen}"
        assert _wait_closed(recorder, seen), "upstream connection left with a partial body"


def test_chunk_extension_over_limit_after_forwarded_chunks(streaming_gateway, recorder):
    # The first chunk is valid and may already be upstream when the bad one
    # arrives: the half-sent body must end in a dropped connection.
    gateway = streaming_gateway
    first = head("POST /late-ext HTTP/1.1", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n"
    with RawConn(gateway.port) as conn:
        conn.send(first)
        assert wait_until(lambda: recorder.targets(complete=False) == ["/late-ext"])
        try:
            conn.send(b"5;" + b"e" * 5000 + b"\r\nworld\r\n0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.recv_response("POST")
        assert resp.status == 400, f"{resp}\n{log_tail(gateway)}"
        assert conn.closed()
    [seen] = recorder.snapshot()
    assert not seen.complete
    assert seen.body == b"hello"
    assert _wait_closed(recorder, seen)


def test_chunk_extension_over_limit_after_buffered_chunks(gateway, recorder):
    # With request buffering the valid first chunk waits at the gateway: the
    # refused body never reaches the upstream at all.
    first = head("POST /late-ext HTTP/1.1", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n"
    with RawConn(gateway.port) as conn:
        conn.send(first)
        try:
            conn.send(b"5;" + b"e" * 5000 + b"\r\nworld\r\n0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.recv_response("POST")
        assert resp.status == 400, f"{resp}\n{log_tail(gateway)}"
        assert conn.closed()
    assert recorder.snapshot() == []


@pytest.mark.parametrize("size_line", [
    b"ffffffffffffffffffff", b"-5", b"5 5", b"0x5", b"+5", b"5\n", b"",
], ids=["overflow", "negative", "two-numbers", "0x-prefix", "plus", "bare-lf", "empty"])
def test_malformed_chunk_size_is_refused(gateway, recorder, size_line):
    payload = (head("POST /chunk-size HTTP/1.1", "Transfer-Encoding: chunked")
               + size_line + b"\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    with RawConn(gateway.port) as conn:
        try:
            conn.send(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.recv_response("POST")
        assert resp.status == 400, f"{resp}\n{log_tail(gateway)}"
        assert conn.closed()
    assert not any(s.complete for s in recorder.snapshot())
    expect_clean_follow_up(gateway, recorder)


# -- smuggling catalogue ------------------------------------------------------

# Each payload is read differently by a front end honouring Content-Length
# and a back end honouring Transfer-Encoding (or the other way round), and
# hides "GET /smuggled" in the part one side treats as body. The gateway must
# refuse the ambiguity outright: it is the front end here.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: school.test\r\n\r\n"
_CHUNKED_HIDING = b"0\r\n\r\n" + SMUGGLED
_CL_HIDING = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)

SMUGGLING = {
    "cl-te": ([f"Content-Length: {len(_CHUNKED_HIDING)}", "Transfer-Encoding: chunked"],
              _CHUNKED_HIDING),
    "te-cl": (["Content-Length: 4", "Transfer-Encoding: chunked"], _CL_HIDING),
    "te-te-xchunked": (["Content-Length: 4", "Transfer-Encoding: xchunked"], _CL_HIDING),
    "te-te-space-before-colon": (["Content-Length: 4", "Transfer-Encoding : chunked"],
                                 _CL_HIDING),
    "te-te-second-te": (["Content-Length: 4", "Transfer-Encoding: chunked",
                         "Transfer-Encoding: x"], _CL_HIDING),
    "te-te-tab": (["Content-Length: 4", "Transfer-Encoding:\tchunked"], _CL_HIDING),
    "te-te-leading-space": (["Content-Length: 4", " Transfer-Encoding: chunked"], _CL_HIDING),
    "te-te-bare-lf": (["Content-Length: 4", "X: X\nTransfer-Encoding: chunked"], _CL_HIDING),
    "te-te-newline-before-colon": (["Content-Length: 4", "Transfer-Encoding\n : chunked"],
                                   _CL_HIDING),
    "te-te-mixed-case": (["Content-Length: 4", "tRaNsFeR-EnCoDiNg: cHuNkEd"], _CL_HIDING),
    "te-te-trailing-comma": (["Content-Length: 4", "Transfer-Encoding: chunked,"],
                             _CL_HIDING),
    "te-te-vertical-tab": (["Content-Length: 4", "Transfer-Encoding:\x0bchunked"], _CL_HIDING),
    "cl-cl": (["Content-Length: 0", f"Content-Length: {len(SMUGGLED)}"], SMUGGLED),
    "cl-comma": ([f"Content-Length: 0, {len(SMUGGLED)}"], SMUGGLED),
}


@pytest.mark.parametrize("case", list(SMUGGLING))
def test_smuggling_attempt_reaches_upstream_as_nothing(gateway, recorder, case):
    lines, body = SMUGGLING[case]
    expect_400(gateway, head("POST /front HTTP/1.1", *lines) + body)
    assert recorder.snapshot() == []
    expect_clean_follow_up(gateway, recorder)


@pytest.mark.parametrize("case", ["cl-te", "te-cl", "te-te-second-te"])
def test_pipelined_smuggling_after_a_good_request(gateway, recorder, case):
    # The first request is fine and is answered; the ambiguous one behind it
    # is refused, so the upstream sees exactly one well-formed request.
    lines, body = SMUGGLING[case]
    payload = build_request(target="/first") + head("POST /front HTTP/1.1", *lines) + body
    with RawConn(gateway.port) as conn:
        conn.send(payload)
        first = conn.recv_response()
        assert first.status == 200 and first.body == b"ok\n"
        second = conn.recv_response("POST")
        assert second.status == 400
        assert conn.closed()
    seen = recorder.snapshot()
    assert [(s.method, s.target, s.complete) for s in seen] == [("GET", "/first", True)]
    expect_clean_follow_up(gateway, recorder)
