"""The upstream connection pool and the balancer, observed from the upstream's
own counters (/__stats): connections accepted and requests per path."""

from __future__ import annotations

import threading
from collections import Counter
from itertools import pairwise

from tests.support.clients import RawConn, build_request, http_client, request, wait_until


def test_sequential_requests_reuse_one_upstream_connection(gateway, upstream):
    # Separate client connections, one at a time: one pooled upstream connection.
    for i in range(20):
        assert request(gateway.port, "GET", f"/echo?i={i}").status == 200
    stats = upstream.stats()
    assert stats["requests"]["/echo"]["GET"] == 20
    assert stats["connections"] == 1
    numbers = [request(gateway.port).json()["request_number"] for _ in range(3)]
    assert numbers == [21, 22, 23]


def test_requests_with_bodies_reuse_the_connection(gateway, upstream):
    with http_client(gateway.url) as client:
        for i in range(10):
            resp = client.post("/upload", content=b"z" * (1000 * i))
            assert resp.json()["length"] == 1000 * i
        assert client.get("/chunked", params={"n": 10000}).status_code == 200
        assert client.get("/echo").status_code == 200
    assert upstream.stats()["connections"] == 1


def test_upstream_closing_after_response_is_not_reused(gateway, upstream):
    assert request(gateway.port, "GET", "/close").status == 200
    # The upstream said Connection: close; the next request needs a new one.
    resp = request(gateway.port, "GET", "/echo")
    assert resp.status == 200
    assert resp.json()["request_number"] == 1
    assert upstream.stats()["connections"] == 2


def test_close_delimited_response_is_not_reused(gateway, upstream):
    resp = request(gateway.port, "GET", "/until-close?n=1000")
    assert resp.status == 200 and len(resp.body) == 1000
    resp = request(gateway.port, "GET", "/echo")
    assert resp.status == 200 and resp.json()["request_number"] == 1


def test_restarted_upstream_stale_pooled_connection_is_detected(gateway, upstream):
    assert request(gateway.port).status == 200
    # Every pooled connection dies with the process; the port comes back.
    upstream.kill()
    upstream.start()
    for _ in range(3):
        resp = request(gateway.port, "GET", "/echo")
        assert resp.status == 200
    assert upstream.stats()["requests"]["/echo"]["GET"] == 3


def test_stale_connection_detected_for_a_post_too(gateway, upstream):
    assert request(gateway.port).status == 200
    upstream.kill()
    upstream.start()
    # A pooled connection closed while idle is known dead before anything is
    # written, so even a non-idempotent request can safely take a fresh one.
    resp = request(gateway.port, "POST", "/echo", body=b"once")
    assert resp.status == 200
    assert upstream.requests("/echo", "POST") == 1


def test_idle_pooled_connections_are_closed_after_upstream_idle(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream], timeouts={"upstream_idle": 0.5})
    assert request(gw.port).status == 200
    assert upstream.stats()["open_connections"] == 1
    assert wait_until(lambda: upstream.stats()["open_connections"] == 0, timeout=5)
    assert request(gw.port).status == 200
    assert upstream.stats()["connections"] == 2


def test_no_pooling_when_upstream_keepalive_is_zero(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream], limits={"upstream_keepalive": 0})
    for _ in range(4):
        assert request(gw.port).status == 200
    assert upstream.stats()["connections"] == 4
    assert wait_until(lambda: upstream.stats()["open_connections"] == 0)


def test_concurrent_requests_open_parallel_connections_then_reuse_them(gateway, upstream):
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def slow_request() -> None:
        barrier.wait()
        statuses.append(request(gateway.port, "GET", "/slow?ms=300").status)

    threads = [threading.Thread(target=slow_request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 4
    opened = upstream.stats()["connections"]
    # Held concurrently, so not serialised over one connection.
    assert opened >= 2
    for _ in range(5):
        assert request(gateway.port).status == 200
    assert upstream.stats()["connections"] == opened


def test_round_robin_across_two_upstreams(make_upstream, make_gateway):
    a, b = make_upstream("a"), make_upstream("b")
    gw = make_gateway(upstreams=[a, b], school={"balance": "round_robin"})
    served = Counter(request(gw.port).header("X-Upstream") for _ in range(10))
    assert served == {"a": 5, "b": 5}
    assert a.requests("/echo") == 5
    assert b.requests("/echo") == 5
    # Each upstream needed only one pooled connection for sequential traffic.
    assert a.stats()["connections"] == 1
    assert b.stats()["connections"] == 1


def test_round_robin_alternates_on_one_client_connection(make_upstream, make_gateway):
    a, b = make_upstream("a"), make_upstream("b")
    gw = make_gateway(upstreams=[a, b])
    with RawConn(gw.port) as conn:
        served = []
        for _ in range(6):
            conn.send(build_request())
            served.append(conn.recv_response().header("X-Upstream"))
    assert sorted(served) == ["a"] * 3 + ["b"] * 3
    assert all(x != y for x, y in pairwise(served))


def test_least_inflight_avoids_the_busy_upstream(make_upstream, make_gateway):
    a, b = make_upstream("a"), make_upstream("b")
    gw = make_gateway(upstreams=[a, b], school={"balance": "least_inflight"})
    busy = RawConn(gw.port, timeout=10)
    try:
        # Whichever upstream takes the slow request is busy while it runs.
        busy.send(build_request(target="/slow?ms=2000"))
        assert wait_until(lambda: a.requests("/slow") + b.requests("/slow") == 1)
        slow_one = "a" if a.requests("/slow") else "b"
        served = {request(gw.port).header("X-Upstream") for _ in range(4)}
        assert served == {"b" if slow_one == "a" else "a"}
        assert busy.recv_response().status == 200
    finally:
        busy.close()
