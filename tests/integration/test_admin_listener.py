"""The admin listener's hardening: header and idle timeouts like the proxy
listener's, and a bearer token when it is bound beyond loopback."""

from __future__ import annotations

import errno
import socket

import httpx

from tests.support.clients import wait_until
from tests.support.procs import free_port

TOKEN = "a-long-admin-token-0123456789"


def test_partial_heads_are_closed_after_the_header_timeout(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream],
                      server={"admin_listen": f"127.0.0.1:{free_port()}"},
                      timeouts={"header": 1.0})
    conns = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", gw.admin_port), timeout=15)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nX-Slow: ")
            conns.append(s)
        for s in conns:
            got = b""
            while True:  # the server answers 408 and closes: recv ends with b""
                piece = s.recv(4096)
                if not piece:
                    break
                got += piece
            assert got.startswith(b"HTTP/1.1 408 ")
    finally:
        for s in conns:
            s.close()
    # The listener still serves.
    assert httpx.get(gw.admin_url + "/healthz", timeout=5).status_code == 200


def test_idle_connections_are_closed_after_the_keepalive_timeout(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream],
                      server={"admin_listen": f"127.0.0.1:{free_port()}"},
                      timeouts={"keepalive": 1.0})
    with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=15) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        got = b""
        while True:
            piece = s.recv(4096)
            if not piece:
                break
            got += piece
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nok\n")


def test_oversized_heads_and_other_methods_are_refused(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream],
                      server={"admin_listen": f"127.0.0.1:{free_port()}"},
                      limits={"max_request_line": 1024, "max_header_bytes": 1024})
    with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 4096)
        assert s.recv(4096).startswith(b"HTTP/1.1 431 ")
    resp = httpx.post(gw.admin_url + "/metrics", timeout=5)
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, HEAD"


def test_a_non_loopback_admin_listener_asks_for_the_bearer_token(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream],
                      server={"admin_listen": f"0.0.0.0:{free_port()}", "admin_token": TOKEN})
    url = gw.admin_url
    # Health checks need no token.
    assert httpx.get(url + "/healthz", timeout=5).text == "ok\n"
    for path in ("/metrics", "/status.json", "/", "/nothing"):
        for headers in ({}, {"Authorization": "Bearer wrong-token"},
                        {"Authorization": f"Basic {TOKEN}"}):
            resp = httpx.get(url + path, headers=headers, timeout=5)
            assert resp.status_code == 401, (path, headers)
            assert resp.headers["www-authenticate"].startswith("Bearer ")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(url + "/metrics", headers=auth, timeout=5).status_code == 200
    assert httpx.get(url + "/status.json", headers=auth, timeout=5).json()["schools"]
    assert httpx.get(url + "/nothing", headers=auth, timeout=5).status_code == 404


def test_a_port_alone_listens_on_loopback(make_gateway, upstream):
    port = free_port()
    gw = make_gateway(upstreams=[upstream], server={"admin_listen": str(port)})
    assert wait_until(lambda: httpx.get(gw.admin_url + "/metrics", timeout=5).status_code == 200)
    # Nothing answers on another address of this machine.
    addrs = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None,
                                                        socket.AF_INET)}
    for addr in addrs - {"127.0.0.1"}:
        if addr.startswith("127."):
            continue
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((addr, port)) != 0


def _read_to_eof(s: socket.socket) -> bytes:
    got = b""
    while True:
        try:
            piece = s.recv(65536)
        except ConnectionResetError:
            return got
        if not piece:
            return got
        got += piece


def _statuses(data: bytes) -> list[int]:
    """The status codes of the HTTP/1.1 responses in `data`, in order (each
    response's Content-Length skips its body)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data[:200]
        lines = head.split(b"\r\n")
        out.append(int(lines[0].split()[1]))
        length = next(int(v) for n, _, v in (line.partition(b": ") for line in lines[1:])
                      if n.lower() == b"content-length")
        data = rest[length:]
    return out


def test_pipelined_answers_keep_their_order_refusals_included(make_gateway, upstream):
    """GET /metrics then a POST, pipelined: the metrics come first, then the
    405 (it was written first, and the close it brings lost the metrics)."""
    gw = make_gateway(upstreams=[upstream], server={"admin_listen": f"127.0.0.1:{free_port()}"})
    for second, status in ((b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 405),
                           (b"GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
                            413),
                           (b"GET /metrics HTTP/1.1\r\nHost a\r\n\r\n", 400)):
        with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
                      b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n" + second)
            got = _read_to_eof(s)
        assert _statuses(got) == [200, 200, status], got[-300:]
        assert b"schoolgate_workers " in got


def test_each_pipelined_head_is_measured_on_its_own(make_gateway, upstream):
    """200 small requests in one write are 200 heads within the budget, not
    one head beyond it (they got 431)."""
    gw = make_gateway(upstreams=[upstream], server={"admin_listen": f"127.0.0.1:{free_port()}"},
                      limits={"max_request_line": 1024, "max_header_bytes": 1024})
    req = b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=10) as s:
        s.sendall(req * 199 + b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        got = _read_to_eof(s)
    assert _statuses(got) == [200] * 200
    # A head beyond the budget is still refused, when it comes in pieces too.
    with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=10) as s:
        s.sendall(req + b"GET /healthz HTTP/1.1\r\n")
        for _ in range(5):
            s.sendall(b"X-Pad: " + b"a" * 500 + b"\r\n")
        got = _read_to_eof(s)
    assert _statuses(got) == [200, 431]


def test_a_client_that_pipelines_and_never_reads_is_cut_off(make_gateway, upstream):
    """Thousands of pipelined scrapes from a client that reads nothing: the
    admin process stops reading once max_pipeline answers wait, and once
    its output makes no progress for client_send the connection is reset
    (it stayed open for good, its answers held in memory)."""
    gw = make_gateway(upstreams=[upstream], server={"admin_listen": f"127.0.0.1:{free_port()}"},
                      timeouts={"client_send": 1.0})
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", gw.admin_port))
    try:
        s.setblocking(False)
        req = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
        sent = 0
        for _ in range(20000):
            try:
                s.send(req)
                sent += 1
            except BlockingIOError:
                break
        # The server resets the connection: seen without reading a byte.
        assert wait_until(lambda: s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                          == errno.ECONNRESET, timeout=30)
    finally:
        s.close()
    assert httpx.get(gw.admin_url + "/healthz", timeout=5).status_code == 200
