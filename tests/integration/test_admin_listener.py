"""The admin listener's hardening: header and idle timeouts like the proxy
listener's, and a bearer token when it is bound beyond loopback."""

from __future__ import annotations

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
