"""Admission before the body: a request is judged on its head, a queued
upload stays with the client (not read, not forwarded) until it is admitted,
`Expect: 100-continue` is answered only on admission, and an upload that
cannot be admitted is answered before its body is sent, on a connection the
gateway then closes cleanly (a FIN after the answer, never a reset that
could destroy the answer in flight).
"""

from __future__ import annotations

import hashlib
import os
import select
import socket

import pytest
from test_admission_support import (
    JSON_ACCEPT,
    assert_closed_cleanly,
    classes,
    connect,
    gateway_for,
    hold,
    probe_queued,
    queue,
    read_all,
    retry_after,
    send,
    wait_queued,
)

from tests.support.clients import build_request

pytestmark = pytest.mark.usefixtures("admission_connections")




def upload_head(target: str, length: int, *, expect: bool = True,
                headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    extra = [("Content-Length", str(length)), *headers]
    if expect:
        extra.append(("Expect", "100-continue"))
    return build_request("POST", target, extra)


def test_queued_upload_with_expect_gets_no_100_until_admitted(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    body = os.urandom(300_000)
    conn = connect(gw.port)
    conn.send(upload_head("/upload", len(body)))
    wait_queued(gw.port, 1)
    # Queued: no "100 Continue" invites the body, and the upstream has seen
    # nothing of the request.
    assert conn.recv_available(0.3) == b""
    assert gate.paths() == ["/hold/a"]
    gate.release("a")
    assert holder.recv_response().status == 200
    interim = conn.recv_response(final=False)
    assert interim.status == 100
    conn.send(body)
    resp = conn.recv_response()
    assert resp.status == 200
    assert resp.json()["body_length"] == len(body)
    assert resp.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    # The upstream never saw the Expect header: the gateway owns that promise.
    upload = gate.snapshot()[-1]
    assert upload.complete and upload.header("Expect") is None
    conn.close()


def _push_until_blocked(sock: socket.socket, data: memoryview) -> int:
    """Send without blocking until the peer stops taking bytes; how many went."""
    sock.setblocking(False)
    sent = 0
    stalled = 0
    try:
        while sent < len(data) and stalled < 20:
            try:
                n = sock.send(data[sent:sent + 65536])
            except BlockingIOError:
                # Full; give the peer a moment to make room, if it reads.
                stalled += 1
                select.select([], [sock], [], 0.02)
                continue
            sent += n
            stalled = 0
    finally:
        sock.setblocking(True)
    return sent


def test_queued_upload_without_expect_is_not_read_until_admitted(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    body = os.urandom(8 * 1024 * 1024)
    conn = connect(gw.port, 30)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    conn.send(upload_head("/upload", len(body), expect=False))
    wait_queued(gw.port, 1)
    pushed = _push_until_blocked(conn.sock, memoryview(body))
    # The gateway stopped reading: only socket buffers' worth got out of the
    # client, and none of it reached the upstream.
    assert pushed < len(body) // 2, pushed
    assert gate.paths() == ["/hold/a"]
    gate.release("a")
    assert holder.recv_response().status == 200
    conn.send(body[pushed:])
    resp = conn.recv_response()
    assert resp.status == 200
    assert resp.json()["body_length"] == len(body)
    assert resp.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    conn.close()


def test_queued_chunked_upload_arrives_intact_once_admitted(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    pieces = [os.urandom(70_000) for _ in range(5)]
    conn = queue(gw.port, "POST", "/upload",
                 [("Transfer-Encoding", "chunked"), ("Expect", "100-continue")])
    assert conn.recv_available(0.2) == b""
    gate.release("a")
    assert holder.recv_response().status == 200
    assert conn.recv_response(final=False).status == 100
    for piece in pieces:
        conn.send(b"%x\r\n%b\r\n" % (len(piece), piece))
    conn.send(b"0\r\n\r\n")
    resp = conn.recv_response()
    assert resp.status == 200
    whole = b"".join(pieces)
    assert resp.json()["body_length"] == len(whole)
    assert resp.json()["body_sha256"] == hashlib.sha256(whole).hexdigest()


@pytest.mark.parametrize("target, status", [("/homework", 503), ("/api/import/users", 429)],
                         ids=["submit-503", "bulk-429"])
def test_upload_that_cannot_be_admitted_is_answered_before_its_body(make_gateway, gate,
                                                                     target, status):
    gw = gateway_for(make_gateway, gate.addr, admission={"max_queue": 1})
    holder = hold(gw.port, gate, "a")
    waiting = queue(gw.port, "GET", "/page")
    conn = connect(gw.port)
    conn.send(upload_head(target, 10_000_000, headers=(JSON_ACCEPT,)))
    # The answer comes without a byte of the 10 MB body having been sent.
    resp = conn.recv_response()
    assert resp.status == status
    assert not resp.interim  # no 100 Continue before it
    retry_after(resp)
    assert resp.has_token("Connection", "close")
    assert_closed_cleanly(conn)
    assert target not in gate.targets()
    gate.release("a")
    assert [r.status for r in read_all([holder, waiting])] == [200, 200]


def test_refused_upload_sent_eagerly_still_gets_its_answer(make_gateway, gate):
    # A client that does not wait for 100 Continue sends the whole body at
    # once; the refusal was written first, and the body is drained instead of
    # the connection being reset under the answer.
    gw = gateway_for(make_gateway, gate.addr, admission={"max_queue": 1})
    holder = hold(gw.port, gate, "a")
    waiting = queue(gw.port, "GET", "/page")
    body = os.urandom(2_000_000)
    conn = connect(gw.port)
    conn.send(upload_head("/homework", len(body), expect=False, headers=(JSON_ACCEPT,))
              + body)
    resp = conn.recv_response()
    assert resp.status == 503
    assert resp.json()["error"] == "busy"
    assert_closed_cleanly(conn)
    assert "/homework" not in gate.targets()
    gate.release("a")
    assert [r.status for r in read_all([holder, waiting])] == [200, 200]


def test_queued_upload_past_max_wait_is_refused_before_its_body(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, klasses=classes(submit={"max_wait": 0.3}))
    holder = hold(gw.port, gate, "a")
    conn = connect(gw.port)
    conn.send(upload_head("/homework", 5_000_000, headers=(JSON_ACCEPT,)))
    resp = conn.recv_response()
    assert resp.status == 503
    assert not resp.interim
    assert resp.json()["position"] == 1
    retry_after(resp)
    assert resp.has_token("Connection", "close")
    assert_closed_cleanly(conn)
    assert probe_queued(gw.port) == 0
    assert gate.paths() == ["/hold/a"]
    gate.release("a")
    assert holder.recv_response().status == 200


def test_pipelined_requests_behind_a_queued_one_keep_their_order(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    conn = send(gw.port, "GET", "/first")
    conn.send(build_request("POST", "/second", body=b"x" * 1000)
              + build_request("GET", "/third"))
    wait_queued(gw.port, 1)  # one queued: the others wait behind it on the connection
    gate.release("a")
    assert holder.recv_response().status == 200
    answers = [conn.recv_response() for _ in range(3)]
    assert [r.json()["target"] for r in answers] == ["/first", "/second", "/third"]
    assert answers[1].json()["body_length"] == 1000
