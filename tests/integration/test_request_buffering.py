"""Request and response buffering (issue 7, E and G), with real processes.

A request body is received at the gateway before its request takes one of
the school's slots, so a slow or vanished client costs a connection and a
buffer, never a slot; a form submitted while the school is full is held and
forwarded once admitted; if it must be refused, the page says that nothing
was sent and never turns the POST into a GET. A response the gateway can
hold whole frees its slot even while its client reads nothing.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_admission_support import (
    HTML_ACCEPT,
    JSON_ACCEPT,
    classes,
    connect,
    gateway_for,
    hold,
    probe_queued,
    wait_queued,
)

from tests.support.clients import RawConn, build_request, chunked, wait_until
from tests.support.pattern import pattern_bytes
from tests.support.procs import free_port

pytestmark = pytest.mark.usefixtures("admission_connections")

MB = 1024 * 1024


def admin() -> dict:
    return {"server": {"admin_listen": f"127.0.0.1:{free_port()}"}}


def gauge(gw, name: str) -> float:
    """A gauge summed over the gateway's workers (the admin process asks
    each for its figures as the scrape comes in)."""
    text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    values = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
              if s.name == name]
    assert values, f"no {name} in /metrics"
    return sum(values)


def buffered(gw) -> tuple[float, float, float]:
    """(bodies held, their bytes, temporary files) over the gateway's workers."""
    return (gauge(gw, "schoolgate_request_bodies_buffered"),
            gauge(gw, "schoolgate_request_body_bytes_buffered"),
            gauge(gw, "schoolgate_request_body_files"))


def open_files_in(gw, directory: Path) -> list[str]:
    """Descriptors of the gateway's processes pointing into `directory`."""
    found = []
    for pid in gw.pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(f"{directory}/"):
                found.append(target)
    return found


def reset(conn: RawConn) -> None:
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- E: slow and vanished clients hold no slot -------------------------------------------


def test_trickling_uploads_do_not_hold_the_slots(make_gateway, gate):
    # The attack scaled down: as many uploads as the school has slots,
    # each announcing a megabyte and sending a byte now and then.
    gw = gateway_for(make_gateway, gate.addr, school={"max_inflight": 4}, **admin())
    tricklers = []
    for i in range(4):
        conn = connect(gw.port)
        conn.send(build_request("POST", f"/trickle/{i}", [("Content-Length", str(MB))]) + b"x")
        tricklers.append(conn)
    assert wait_until(lambda: buffered(gw)[0] == 4)
    for conn in tricklers:
        conn.send(b"y")
    # Other clients of the school are served, not shown a waiting page.
    assert probe_queued(gw.port) is None  # not full
    with RawConn(gw.port) as conn:
        conn.send(build_request("GET", "/page"))
        resp = conn.recv_response()
        assert resp.status == 200 and resp.json()["target"] == "/page"
        conn.send(build_request("POST", "/form", [HTML_ACCEPT], b"name=ada&pw=x"))
        resp = conn.recv_response("POST")
        assert resp.status == 200
        assert resp.json()["body_sha256"] == sha(b"name=ada&pw=x")
    # The upstream never saw the trickling ones.
    assert not [t for t in gate.targets() if t.startswith("/trickle")]
    assert all(not c.recv_available(0.05) for c in tricklers)


def test_whole_body_deadline_answers_408_and_frees_everything(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, timeouts={
        "client_body_total": 1.0, "client_body_min_rate": 0}, **admin())
    conn = connect(gw.port)
    conn.send(build_request("POST", "/slow", [("Content-Length", "1000")]) + b"a")
    answer = b""
    for _ in range(40):  # a byte every 0.2 s: never a gap, but no end either
        answer = conn.recv_available(0.2)
        if answer:
            break
        try:
            conn.send(b"b")
        except OSError:
            break
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert b"Connection: close" in answer
    assert conn.closed(5.0)
    assert wait_until(lambda: buffered(gw) == (0, 0, 0))
    assert "/slow" not in gate.paths()
    # No slot was held: the one slot serves the next request at once.
    assert probe_queued(gw.port) is None


@pytest.mark.parametrize("how", ["reset", "fin"])
def test_vanished_client_mid_body_frees_its_buffer_and_never_took_a_slot(make_gateway, gate,
                                                                          how):
    gw = gateway_for(make_gateway, gate.addr, **admin())  # one slot
    conn = connect(gw.port)
    conn.send(build_request("POST", "/gone", [("Content-Length", str(5 * MB))])
              + os.urandom(300_000))
    assert wait_until(lambda: buffered(gw)[1] == 300_000)
    # While it is sending, its school's one slot serves someone else.
    with RawConn(gw.port) as other:
        other.send(build_request("GET", "/meanwhile"))
        assert other.recv_response().status == 200
    if how == "reset":
        reset(conn)
    else:
        conn.sock.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: buffered(gw) == (0, 0, 0))
    assert "/gone" not in gate.paths()
    assert probe_queued(gw.port) is None


def test_body_beyond_memory_goes_through_an_unnamed_temp_file(make_gateway, gate, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    gw = gateway_for(make_gateway, gate.addr, server={
        "temp_dir": str(spool), "admin_listen": f"127.0.0.1:{free_port()}"})
    body = pattern_bytes(5 * MB + 3)
    conn = connect(gw.port, 30)
    conn.send(build_request("POST", "/homework", [("Content-Length", str(len(body)))])
              + body[:MB])
    # The slot is taken while the body arrives, so the upload completes
    # while the school is full: it waits with its body held on disk.
    holder = hold(gw.port, gate, "a")
    conn.send(body[MB:])
    wait_queued(gw.port, 1)
    assert buffered(gw) == (1, len(body), 1)
    assert len(open_files_in(gw, spool)) == 1
    assert os.listdir(spool) == []  # the file never had a name
    gate.release("a")
    assert holder.recv_response().status == 200
    resp = conn.recv_response("POST")
    assert resp.status == 200
    assert (resp.json()["body_length"], resp.json()["body_sha256"]) == (len(body), sha(body))
    upload = gate.snapshot()[-1]
    assert upload.header("Content-Length") == str(len(body))
    assert wait_until(lambda: buffered(gw) == (0, 0, 0))
    assert open_files_in(gw, spool) == []


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_body_beyond_request_buffer_max_is_forwarded_then_streamed(make_gateway, gate,
                                                                  framing):
    # Held up to 100 kB, then the slot is taken, the held part forwarded, and
    # the rest streams from the client: the upstream gets every byte, once.
    gw = gateway_for(make_gateway, gate.addr, school={"request_buffer_max": 100_000,
                                                      "request_buffer_memory": 16384})
    body = os.urandom(3 * MB + 5)
    with RawConn(gw.port, timeout=30) as conn:
        if framing == "length":
            conn.send(build_request("POST", "/big", [("Content-Length", str(len(body)))]))
            for off in range(0, len(body), 50_000):
                conn.send(body[off:off + 50_000])
        else:
            conn.send(build_request("POST", "/big", [("Transfer-Encoding", "chunked")]))
            for off in range(0, len(body), 50_000):
                conn.send(chunked(body[off:off + 50_000])[:-5])  # without the last chunk
            conn.send(b"0\r\n\r\n")
        resp = conn.recv_response("POST")
        assert resp.status == 200
        assert (resp.json()["body_length"], resp.json()["body_sha256"]) == (len(body), sha(body))
        conn.send(build_request("GET", "/after"))
        assert conn.recv_response().status == 200


def test_body_that_cannot_be_stored_gets_a_clear_answer(make_gateway, gate, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    gw = gateway_for(make_gateway, gate.addr, server={"temp_dir": str(spool)},
                     school={"request_buffer_memory": 1024})
    spool.rmdir()  # the temporary file cannot be created now (as with a full disk)
    with RawConn(gw.port) as conn:
        conn.send(build_request("POST", "/essay", body=os.urandom(200_000)))
        resp = conn.recv_response("POST")
        assert resp.status == 503
        assert b"could not store the request body" in resp.body
        assert resp.has_token("Connection", "close")
    assert "/essay" not in gate.paths()
    with RawConn(gw.port) as conn:  # the worker goes on serving, the slot is free
        conn.send(build_request("POST", "/small", body=b"fits in memory"))
        assert conn.recv_response("POST").status == 200


def test_chunked_body_is_forwarded_whole_with_its_length(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    pieces = [os.urandom(n) for n in (1, 70_000, 5, 200_000)]
    whole = b"".join(pieces)
    with RawConn(gw.port) as conn:
        conn.send(build_request("POST", "/chunks", [("Transfer-Encoding", "chunked")],
                                chunked(*pieces, trailers=[("X-Trailer", "1")])))
        resp = conn.recv_response("POST")
        assert resp.status == 200
        assert (resp.json()["body_length"], resp.json()["body_sha256"]) == (
            len(whole), sha(whole))
        seen = gate.snapshot()[-1]
        assert seen.header("Content-Length") == str(len(whole))
        assert seen.header("Transfer-Encoding") is None
        # The connection goes on (keep-alive after a buffered body).
        conn.send(build_request("GET", "/after"))
        assert conn.recv_response().json()["target"] == "/after"


def test_pipelined_requests_behind_a_buffered_body_keep_their_order(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    with RawConn(gw.port) as conn:
        conn.send(build_request("POST", "/first", [("Content-Length", "10"),
                                                   ("Expect", "100-continue")]))
        assert conn.recv_response(final=False).status == 100
        conn.send(b"0123456789" + build_request("GET", "/second")
                  + build_request("POST", "/third", body=b"abc"))
        answers = [conn.recv_response("POST"), conn.recv_response(),
                   conn.recv_response("POST")]
        assert [r.json()["target"] for r in answers] == ["/first", "/second", "/third"]
        assert answers[0].json()["body_sha256"] == sha(b"0123456789")
        conn.send(build_request("GET", "/fourth"))
        assert conn.recv_response().json()["target"] == "/fourth"


def test_body_over_max_body_is_413_while_buffering(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, limits={"max_body": 1000}, **admin())
    with RawConn(gw.port) as conn:
        conn.send(build_request("POST", "/big", [("Transfer-Encoding", "chunked")]))
        for _ in range(3):
            conn.send(b"190\r\n" + b"y" * 400 + b"\r\n")
        resp = conn.recv_response("POST")
        assert resp.status == 413
        assert conn.closed()
    assert wait_until(lambda: buffered(gw) == (0, 0, 0))
    assert "/big" not in gate.paths()


def test_streaming_stays_when_request_buffering_is_off(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, school={"request_buffering": False})
    conn = connect(gw.port)
    conn.send(build_request("POST", "/stream", [("Content-Length", "10")]) + b"01234")
    # Forwarded at once with what has arrived: the upstream sees the head
    # before the body is complete, and the slot is held meanwhile.
    assert gate.wait_count(1, "/stream")
    assert not gate.snapshot()[-1].complete
    assert probe_queued(gw.port) == 0
    conn.send(b"56789")
    assert conn.recv_response("POST").json()["body_sha256"] == sha(b"0123456789")


# -- G: a submitted form is held, or refused without being turned into a GET ---------------


def test_form_posted_while_full_is_held_and_forwarded(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    form = b"user=pupil7&answer=" + b"x" * 5000
    conn = connect(gw.port)
    conn.send(build_request("POST", "/login", [HTML_ACCEPT], form))
    wait_queued(gw.port, 1)
    assert conn.recv_available(0.2) == b""  # held: no waiting page
    gate.release("a")
    assert holder.recv_response().status == 200
    resp = conn.recv_response("POST")
    assert resp.status == 200
    assert resp.json()["target"] == "/login"
    assert resp.json()["body_sha256"] == sha(form)


def test_form_refused_after_max_wait_says_nothing_was_sent(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, klasses=classes(submit={"max_wait": 0.5}))
    holder = hold(gw.port, gate, "a")
    conn = connect(gw.port)
    conn.send(build_request("POST", "/login?next=/kurs", [HTML_ACCEPT, ("Accept-Language", "de")],
                            b"user=pupil7&pw=secret"))
    resp = conn.recv_response("POST")
    assert resp.status == 503
    assert int(resp.header("Retry-After") or 0) >= 1
    page = resp.body.decode()
    assert "nicht weitergeleitet" in page and "Der Server der Schule hat es nicht erhalten" in page
    # Nothing on the page repeats the request as a GET.
    assert 'http-equiv="refresh"' not in page and "<a " not in page and "<form" not in page
    assert "/login" not in page and "<script" not in page
    assert resp.header("Set-Cookie") is None
    # The body was read, so the connection stays usable.
    conn.send(build_request("GET", "/probe-after", [("X-Probe", "1"), JSON_ACCEPT]))
    assert conn.recv_response().status == 503
    # The same refusal as JSON says so in a field.
    api = connect(gw.port)
    api.send(build_request("POST", "/api/answers", [JSON_ACCEPT], b'{"a": 1}'))
    answer = api.recv_response("POST")
    assert answer.status == 503
    assert answer.json()["forwarded"] is False and answer.json()["error"] == "busy"
    assert [p for p in gate.paths() if p != "/hold/a"] == []
    gate.release("a")
    assert holder.recv_response().status == 200


def test_down_page_for_a_form_the_upstream_never_got(make_gateway):
    gw = make_gateway(upstreams=[f"127.0.0.1:{free_port()}"])  # nothing listens there
    with RawConn(gw.port) as conn:
        conn.send(build_request("POST", "/homework", [HTML_ACCEPT], b"essay=" + b"z" * 100))
        resp = conn.recv_response("POST")
        assert resp.status == 503
        page = resp.body.decode()
        assert "was not passed on" in page and "has not received it" in page
        assert 'http-equiv="refresh"' not in page and "<a " not in page
        conn.send(build_request("POST", "/homework", [JSON_ACCEPT], b"essay=1"))
        assert conn.recv_response("POST").json()["forwarded"] is False


def test_down_page_for_a_form_the_upstream_got_does_not_claim_otherwise(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, timeouts={"upstream_read": 0.5})
    with RawConn(gw.port) as conn:
        conn.send(build_request("POST", "/hold/never", [HTML_ACCEPT], b"essay=1"))
        resp = conn.recv_response("POST")
    assert resp.status == 503
    page = resp.body.decode()
    assert "may or may not have been saved" in page
    assert "not passed on" not in page and "has not received it" not in page
    assert 'http-equiv="refresh"' not in page and "<a " not in page
    assert gate.paths() == ["/hold/never"]


# -- slow response readers ------------------------------------------------------------------


def test_slow_reader_of_a_buffered_response_holds_no_slot(make_gateway, upstream):
    gw = gateway_for(make_gateway, upstream.addr, school={"response_buffer": 1 * MB})
    reader = connect(gw.port)
    reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.send(build_request("GET", "/bytes?n=300000"))
    assert wait_until(lambda: upstream.requests("/bytes") == 1)
    # The reader has read nothing, yet the slot is free once the gateway
    # holds the whole response.
    assert wait_until(lambda: probe_queued(gw.port) is None)
    with RawConn(gw.port) as other:
        other.send(build_request("GET", "/echo"))
        assert other.recv_response().status == 200
    resp = reader.recv_response()
    assert resp.body == pattern_bytes(300000)


def test_response_beyond_the_bound_pauses_the_upstream_and_keeps_the_slot(make_gateway,
                                                                          upstream):
    # The bound is response_buffer_max (the spool's), beyond response_buffer.
    gw = gateway_for(make_gateway, upstream.addr,
                     school={"response_buffer": 65536, "response_buffer_max": 1 * MB})
    n = 64 * MB
    reader = connect(gw.port, 60)
    reader.send(build_request("GET", f"/bytes?n={n}"))
    assert wait_until(lambda: upstream.requests("/bytes") == 1)
    waiting = connect(gw.port)
    waiting.send(build_request("GET", "/echo"))
    wait_queued(gw.port, 1)  # the slot stays with the unread download
    resp = reader.recv_response()
    assert len(resp.body) == n
    assert waiting.recv_response().status == 200
