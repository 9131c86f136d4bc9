"""[limits] max_body: a declared Content-Length over it is refused before any
byte goes upstream; a chunked body that grows past it is cut off with a 413."""

from __future__ import annotations

import pytest

from tests.support.clients import RawConn, build_request


@pytest.fixture
def gateway(make_gateway, upstream):
    return make_gateway(upstreams=[upstream], limits={"max_body": 1000})


def _refused(resp) -> None:
    assert resp.status == 413, resp
    assert resp.has_token("Connection", "close")
    assert b"too large" in resp.body


def test_declared_length_over_limit_is_413_before_upload(gateway, upstream):
    with RawConn(gateway.port) as conn:
        # Expect: 100-continue: the client learns before sending anything.
        conn.send(build_request("POST", "/upload", headers=[
            ("Content-Length", "5000"), ("Expect", "100-continue")]))
        _refused(conn.recv_response("POST"))
        assert conn.closed()
    assert upstream.requests("/upload", "POST") == 0


def test_length_at_limit_is_forwarded(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(build_request("POST", "/upload", body=b"x" * 1000))
        resp = conn.recv_response("POST")
    assert resp.status == 200
    assert resp.json()["length"] == 1000


def test_chunked_body_growing_past_limit_is_cut_off(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(build_request("POST", "/upload", headers=[("Transfer-Encoding", "chunked")]))
        for _ in range(3):
            conn.send(b"190\r\n" + b"y" * 400 + b"\r\n")  # 1200 bytes in all
        _refused(conn.recv_response("POST"))
        assert conn.closed()
    # The gateway goes on serving; the cut-off upload never got its last chunk
    # upstream (the client never sent one), and its upstream connection, if
    # it had one, was aborted rather than reused mid-body.
    with RawConn(gateway.port) as conn:
        conn.send(build_request("GET", "/echo"))
        assert conn.recv_response().status == 200


def test_chunk_announced_past_limit_is_413_at_once(gateway, upstream):
    # Found by the adversarial review: a chunk size beyond max_body was
    # accepted and its data awaited; the size line alone settles it.
    with RawConn(gateway.port) as conn:
        conn.send(build_request("POST", "/upload", headers=[("Transfer-Encoding", "chunked")])
                  + b"ffffffffffffffff\r\n")
        _refused(conn.recv_response("POST"))
        assert conn.closed()
    assert upstream.requests("/upload", "POST") == 0
