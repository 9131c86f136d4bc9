"""Response spooling for slow readers (issue 7, E, the response half), with
real processes.

The review's example: with max_inflight = 2, two clients that request a
large response and never read held both slots (the gateway paused the
upstream at the client's high-water mark, and the slot stayed until
upstream_read fired on the upstream the gateway itself had paused), so
nobody else at the school got an answer. Now the response goes to a spool
(memory, then an unnamed temporary file in temp_dir) and completes at the
upstream's pace: the slot and the upstream connection are free while the
client reads. A connection holds at most one response this way (its next
pipelined request waits), a client whose output makes no progress for
client_send is cut off, and response_buffer_max = 0 keeps the old behaviour.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_admission_support import _OPEN, gateway_for, probe_queued, wait_queued
from test_request_buffering import gauge, open_files_in

from tests.support.clients import RawConn, build_request, wait_until
from tests.support.hostile import HostileUpstream, response
from tests.support.pattern import pattern_bytes
from tests.support.procs import free_port

pytestmark = pytest.mark.usefixtures("admission_connections")

MB = 1024 * 1024
BIG = 6 * MB
BODY = pattern_bytes(BIG)
# Small enough that a non-reading client is over it at once: the rest of the
# response is spooled, 64 KiB in memory and then in a temporary file.
RESPONSE_BUFFER = 65536


@pytest.fixture
def hostile() -> Iterator[HostileUpstream]:
    reply = response(200, BODY, [("Content-Type", "application/octet-stream")])
    with HostileUpstream({"/big": lambda req: reply}, send_timeout=30.0) as up:
        yield up


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


def spooling_gateway(make_gateway, hostile, spool_dir, *, school=None, timeouts=None):
    return gateway_for(
        make_gateway, hostile.addr,
        school={"response_buffer": RESPONSE_BUFFER, **(school or {})},
        server={"temp_dir": str(spool_dir), "admin_listen": f"127.0.0.1:{free_port()}"},
        **({"timeouts": timeouts} if timeouts else {}))


def spooled(gw) -> tuple[float, float]:
    """(responses spooled, their temporary files) over the gateway's workers."""
    return (gauge(gw, "schoolgate_responses_spooled"),
            gauge(gw, "schoolgate_response_spool_files"))


def non_reader(port: int, timeout: float = 30.0) -> RawConn:
    """A client connection with a tiny receive buffer, set before connecting
    so that the window it advertises is small from the start."""
    conn = RawConn.__new__(RawConn)
    conn.timeout = timeout
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    conn.sock = sock
    conn.buf = bytearray()
    conn.eof = False
    _OPEN.append(conn)
    return conn


def upstream_sent_all(hostile: HostileUpstream, n: int) -> bool:
    """Whether n connections each took a whole /big response from the upstream."""
    full = len(response(200, BODY, [("Content-Type", "application/octet-stream")]))
    with hostile.lock:
        done = [r for r in hostile.conns.values() if r.sent == full]
    return len(done) == n


def assert_nothing_left(gw, spool_dir: Path) -> None:
    assert wait_until(lambda: spooled(gw) == (0, 0))
    assert gauge(gw, "schoolgate_response_bytes_spooled") == 0
    assert open_files_in(gw, spool_dir) == []
    assert os.listdir(spool_dir) == []


def test_non_readers_hold_no_slot(make_gateway, hostile, spool_dir):
    gw = spooling_gateway(make_gateway, hostile, spool_dir, school={"max_inflight": 2})
    readers = [non_reader(gw.port) for _ in range(2)]
    for conn in readers:
        conn.send(build_request("GET", "/big"))
    # The upstream delivers both whole responses although neither client
    # reads: the gateway holds them, on disk past the memory part.
    assert wait_until(lambda: upstream_sent_all(hostile, 2), 15)
    assert spooled(gw) == (2, 2)
    assert len(open_files_in(gw, spool_dir)) == 2
    assert os.listdir(spool_dir) == []  # the files never had a name
    # Both slots are free: a third client's GET is answered by the upstream,
    # not by a waiting page (max_wait 10 s is longer than this read's timeout).
    assert probe_queued(gw.port) is None
    with RawConn(gw.port, timeout=5.0) as third:
        third.send(build_request("GET", "/third"))
        resp = third.recv_response()
        assert resp.status == 200
        assert resp.json()["target"] == "/third"
    # The slow readers still get every byte, in order.
    for conn in readers:
        resp = conn.recv_response()
        assert resp.status == 200
        assert resp.header("Content-Length") == str(BIG)
        assert resp.body == BODY
    # The connection goes on after its spool drained.
    readers[0].send(build_request("GET", "/after"))
    assert readers[0].recv_response().json()["target"] == "/after"
    assert_nothing_left(gw, spool_dir)


def test_pipelined_request_waits_until_the_client_has_read(make_gateway, hostile, spool_dir):
    gw = spooling_gateway(make_gateway, hostile, spool_dir, school={"max_inflight": 2})
    conn = non_reader(gw.port)
    conn.send(build_request("GET", "/big") + build_request("GET", "/second")
              + build_request("GET", "/third"))
    assert wait_until(lambda: upstream_sent_all(hostile, 1), 15)
    # Another client is served meanwhile, so the gateway has had its turns,
    # yet the requests behind the held response were not forwarded.
    with RawConn(gw.port, timeout=5.0) as other:
        other.send(build_request("GET", "/other"))
        assert other.recv_response().status == 200
    assert [r.target for r in hostile.requests()] == ["/big", "/other"]
    resp = conn.recv_response()
    assert resp.body == BODY
    assert conn.recv_response().json()["target"] == "/second"
    assert conn.recv_response().json()["target"] == "/third"
    assert [r.target for r in hostile.requests()] == ["/big", "/other", "/second", "/third"]
    assert_nothing_left(gw, spool_dir)


def test_client_send_cuts_off_a_client_that_never_reads(make_gateway, hostile, spool_dir):
    gw = spooling_gateway(make_gateway, hostile, spool_dir, timeouts={"client_send": 1.0})
    conn = non_reader(gw.port)
    conn.send(build_request("GET", "/big"))
    assert wait_until(lambda: upstream_sent_all(hostile, 1), 15)
    # Its spool and temporary file are freed when it is cut off ...
    assert_nothing_left(gw, spool_dir)
    # ... and so is the connection: what the client reads now ends short.
    conn.sock.settimeout(5.0)
    got = 0
    try:
        while chunk := conn.sock.recv(65536):
            got += len(chunk)
    except ConnectionResetError:
        pass
    assert got < BIG
    assert probe_queued(gw.port) is None


def test_client_send_spares_a_slow_but_steady_reader(make_gateway, hostile, spool_dir):
    # Found by the adversarial review: with several MB in the kernel's send
    # queue the socket turns writable only after much of it has gone, so a
    # client reading 64 KiB every 0.1 s looked stalled to client_send (1 s
    # here) and was cut off short. The kernel queue's progress counts too.
    gw = spooling_gateway(make_gateway, hostile, spool_dir, timeouts={"client_send": 1.0})
    conn = RawConn.__new__(RawConn)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10.0)
    sock.connect(("127.0.0.1", gw.port))
    conn.sock, conn.buf, conn.eof, conn.timeout = sock, bytearray(), False, 10.0
    _OPEN.append(conn)
    conn.send(build_request("GET", "/big"))
    head = conn.recv_headers()
    assert head.startswith(b"HTTP/1.1 200 ")
    body = bytearray(conn.buf)
    conn.buf.clear()
    while len(body) < BIG:
        time.sleep(0.1)
        chunk = sock.recv(65536)
        assert chunk, f"cut off after {len(body)} of {BIG} bytes"
        body += chunk
    assert bytes(body) == BODY
    assert_nothing_left(gw, spool_dir)


def test_upstream_paused_for_a_full_spool_does_not_time_out(make_gateway, hostile, spool_dir):
    # The spool's bound (1 MiB) pauses the upstream; the client reads only
    # after longer than upstream_read, and still gets the whole response,
    # because the gateway does not blame the upstream for its own pause.
    gw = spooling_gateway(make_gateway, hostile, spool_dir,
                          school={"response_buffer_max": 1 * MB},
                          timeouts={"upstream_read": 1.0, "client_send": 30.0})
    conn = non_reader(gw.port)
    conn.send(build_request("GET", "/big"))
    assert wait_until(lambda: spooled(gw) == (1, 1))
    # Paused past upstream_read (the worker's reaper checks every 0.25 s).
    assert not wait_until(lambda: spooled(gw) == (0, 0), 2.5)
    resp = conn.recv_response()
    assert resp.body == BODY
    assert_nothing_left(gw, spool_dir)


def test_response_buffer_max_zero_pauses_the_upstream_and_holds_the_slot(make_gateway,
                                                                         hostile, spool_dir):
    gw = spooling_gateway(make_gateway, hostile, spool_dir, school={"response_buffer_max": 0})
    conn = non_reader(gw.port)
    conn.send(build_request("GET", "/big"))
    assert wait_until(lambda: len(hostile.requests("/big")) == 1)
    waiting = RawConn(gw.port, timeout=30.0)
    _OPEN.append(waiting)
    waiting.send(build_request("GET", "/waiting"))
    wait_queued(gw.port, 1)  # max_inflight 1: the slot stays with the download
    assert spooled(gw) == (0, 0)
    assert os.listdir(spool_dir) == [] and open_files_in(gw, spool_dir) == []
    assert conn.recv_response().body == BODY
    assert waiting.recv_response().json()["target"] == "/waiting"
    assert_nothing_left(gw, spool_dir)
