"""Hostile connections: slow senders, slow readers, idle sockets, bytes that
are not HTTP at all, and responses that could desynchronise a pooled
upstream connection.

The header and keep-alive deadlines are shortened to one second so the
timeouts are exercised without long waits; every wait below is a generous
upper bound, not a measurement.
"""

from __future__ import annotations

import csv
import select
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus

import pytest

from tests.support.clients import RawConn, build_request, request, wait_until
from tests.support.procs import Gateway, RssSampler, Upstream, gateway_config

LOG_TAIL = 40
SHORT = {"header": 1.0, "keepalive": 1.0}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = Upstream(tmp_path_factory.mktemp("hostile-conn"), "u1").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    gw = Gateway(gateway_config([upstream.addr], timeouts=SHORT),
                 tmp_path_factory.mktemp("hostile-conn-gw"), name="gateway").start()
    yield gw
    gw.stop()


def _tail(gw: Gateway) -> str:
    return "\n".join(gw.log().splitlines()[-LOG_TAIL:])


def expect_serving(gw: Gateway) -> None:
    resp = request(gw.port, target="/echo?still=serving")
    assert resp.status == 200, f"{resp}\n{_tail(gw)}"
    assert resp.json()["target"] == "/echo?still=serving"


# -- slow and idle clients -----------------------------------------------------

def test_header_trickle_is_cut_off_with_408(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(b"GET /c/trickle HTTP/1.1\r\nHost: school.test\r\n")
        started = time.monotonic()
        # One byte a second, stopping as soon as the gateway says anything:
        # writing into a socket it has closed would only earn a reset.
        for byte in b"X-Slow: " + b"a" * 20:
            readable, _, _ = select.select([conn.sock], [], [], 1.0)
            if readable:
                break
            try:
                conn.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
        resp = conn.recv_response()
        elapsed = time.monotonic() - started
        assert resp.status == 408, f"{resp}\n{_tail(gateway)}"
        assert resp.reason == HTTPStatus.REQUEST_TIMEOUT.phrase
        assert resp.has_token("Connection", "close")
        assert resp.header("Content-Type") == "text/plain; charset=utf-8"
        assert b"header" in resp.body.lower() or b"time" in resp.body.lower()
        assert conn.closed()
    # 1 s allowed; the trickle would have gone on for 20 s.
    assert elapsed < 6, elapsed
    assert upstream.stats()["requests"].get("/c/trickle") is None


def test_idle_keepalive_connection_is_closed(gateway):
    with RawConn(gateway.port, timeout=10) as conn:
        conn.send(build_request())
        assert conn.recv_response().status == 200
        assert conn.closed(timeout=6), "idle keep-alive connection outlived [timeouts] keepalive"


def test_connection_that_never_speaks_is_closed(gateway):
    with RawConn(gateway.port, timeout=10) as conn:
        assert conn.closed(timeout=6), "silent connection was never closed"


def test_keepalive_connection_in_use_is_not_closed(gateway):
    # The idle deadline restarts with every request.
    with RawConn(gateway.port) as conn:
        for _ in range(4):
            conn.send(build_request())
            assert conn.recv_response().status == 200
            time.sleep(0.5)


def test_slow_reader_does_not_grow_gateway_memory(gateway, upstream):
    # 200 MB offered, never read: only the bounded per-connection buffers
    # (plus socket buffers, which are kernel memory) may fill.
    with RssSampler(gateway) as rss, RawConn(gateway.port) as conn:
        conn.send(build_request(target="/bytes?n=200000000"))
        head = conn.recv_headers()
        assert head.startswith(b"HTTP/1.1 200 ")
        time.sleep(3)
    assert rss.growth < 24 * 1024 * 1024, f"RSS grew by {rss.growth} bytes"
    expect_serving(gateway)


@pytest.mark.skipif(shutil.which("slowhttptest") is None, reason="slowhttptest not installed")
def test_slowloris_does_not_starve_normal_clients(gateway, tmp_path):
    report = tmp_path / "slowloris"
    attack = subprocess.Popen(
        ["slowhttptest", "-H", "-c", "300", "-r", "150", "-i", "1", "-x", "24", "-l", "5",
         "-p", "2", "-g", "-o", str(report), "-u", f"{gateway.url}/c/slowloris"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2.5)  # the attack is at full strength
        expect_serving(gateway)
        assert attack.wait(timeout=30) == 0
    finally:
        if attack.poll() is None:
            attack.kill()
            attack.wait()
    # slowhttptest's own view, one row a second: its probe kept getting
    # answers, and the gateway hung up on the tricklers instead of holding them.
    with open(f"{report}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, "slowhttptest wrote no statistics"
    assert all(int(r["Service Available"]) > 0 for r in rows), rows
    assert int(rows[-1]["Closed"]) > 0, rows
    expect_serving(gateway)


# -- bytes that are not HTTP ---------------------------------------------------

def _client_hello() -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="school.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _expect_refused_or_closed(gw: Gateway, payload: bytes) -> None:
    """Non-HTTP input gets at most a 400, then the connection ends."""
    with RawConn(gw.port) as conn:
        conn.send(payload)
        data = b""
        while chunk := conn.recv_available(2.0):
            data += chunk
        assert conn.closed(), f"connection left open after {payload[:16]!r}"
    assert data == b"" or data.startswith(b"HTTP/1.1 400 "), data[:200]


@pytest.mark.parametrize("payload", [
    b"\x00\xff\xfe garbage \x01\x02\r\n\r\n",
    bytes(range(256)) * 8,
    b"\r\n" * 5000,
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
], ids=["binary", "all-bytes", "blank-lines", "h2-preface"])
def test_garbage_is_refused_and_others_keep_being_served(gateway, payload):
    _expect_refused_or_closed(gateway, payload)
    expect_serving(gateway)


def test_tls_client_hello_on_plain_port(gateway):
    _expect_refused_or_closed(gateway, _client_hello())
    expect_serving(gateway)


def test_connections_dropped_at_once_do_not_hurt(gateway):
    for _ in range(20):
        socket.create_connection(("127.0.0.1", gateway.port)).close()
    for _ in range(20):
        # A reset instead of a close, before and after sending half a head.
        sock = socket.create_connection(("127.0.0.1", gateway.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"GET /echo HTTP/1.1\r\nHo")
        sock.close()
    expect_serving(gateway)


def test_hostile_input_does_not_disturb_a_request_in_flight(gateway):
    result: dict[str, object] = {}

    def slow() -> None:
        result["resp"] = request(gateway.port, target="/slow?ms=800", timeout=10)

    worker = threading.Thread(target=slow)
    worker.start()
    _expect_refused_or_closed(gateway, _client_hello())
    _expect_refused_or_closed(gateway, b"\x00" * 1000)
    worker.join(timeout=15)
    assert result["resp"].status == 200  # type: ignore[attr-defined]


# -- routing -------------------------------------------------------------------

def test_unknown_host_is_answered_by_the_gateway(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(b"GET /c/unknown HTTP/1.1\r\nHost: nobody.example\r\n\r\n")
        resp = conn.recv_response()
    assert resp.status in (404, 421), resp
    assert (resp.header("Content-Type") or "").startswith("text/"), resp.headers
    assert b"host" in resp.body.lower() or b"school" in resp.body.lower(), resp.body
    assert upstream.stats()["requests"].get("/c/unknown") is None


# -- upstream framing ----------------------------------------------------------

def test_head_responses_do_not_desync_the_pooled_connection(make_upstream, make_gateway):
    upstream = make_upstream("pooled")
    gw = make_gateway(upstreams=[upstream])
    with RawConn(gw.port) as conn:
        # Each HEAD answer announces a body that never comes; a proxy that
        # waits for it (or forwards the next response as that body) hangs or
        # hands the GET's answer to the wrong request.
        for target in ("/head-cl", "/bytes?n=5000", "/chunked?n=5000"):
            conn.send(build_request("HEAD", target))
            resp = conn.recv_response("HEAD")
            assert resp.status == 200, resp
            assert resp.body == b""
        conn.send(build_request("GET", "/echo"))
        echo = conn.recv_response().json()
    assert echo["target"] == "/echo"
    # All four went over one pooled upstream connection, in order.
    assert echo["request_number"] == 4
    assert upstream.stats()["connections"] == 1
    assert wait_until(lambda: upstream.stats()["requests"]["/echo"]["GET"] == 1)
