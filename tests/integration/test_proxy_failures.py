"""Upstream failures: what is retried, what is never sent twice, and what the
client sees when nothing works (a 503 waiting page with Retry-After, never a
502 or 504)."""

from __future__ import annotations

import json

import pytest

from tests.support.clients import (
    FORBIDDEN_STATUSES,
    RawConn,
    Response,
    build_request,
    http_client,
    request,
    wait_until,
)
from tests.support.procs import free_port

# The test upstream's ?only=<name> makes one pool member misbehave while the
# others answer the same target like /echo.


def refused_addr() -> str:
    """An address nobody listens on: connecting gets ECONNREFUSED."""
    return f"127.0.0.1:{free_port()}"


def assert_unavailable(resp: Response) -> None:
    assert resp.status not in FORBIDDEN_STATUSES
    assert resp.status == 503, resp
    retry_after = resp.header("Retry-After")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1


def test_refused_upstream_is_skipped_for_the_next_one(make_upstream, make_gateway):
    live = make_upstream("live")
    gw = make_gateway(upstreams=[refused_addr(), live])
    # Round robin would send every other request to the dead address.
    for i in range(6):
        resp = request(gw.port, "GET", f"/echo?i={i}")
        assert resp.status == 200
        assert resp.header("X-Upstream") == "live"
    assert live.requests("/echo") == 6


def test_refused_connect_makes_even_a_post_safe_to_retry(make_upstream, make_gateway):
    live = make_upstream("live")
    gw = make_gateway(upstreams=[refused_addr(), live])
    for _ in range(4):
        resp = request(gw.port, "POST", "/echo", body=b"payload")
        assert resp.status == 200
        assert resp.json()["body_length"] == 7
    # Nothing left the gateway on the refused attempts: each POST arrived once.
    assert live.requests("/echo", "POST") == 4


@pytest.mark.parametrize("accept", ["text/html", "text/html,application/xhtml+xml,*/*;q=0.8"])
def test_all_upstreams_refused_gives_html_waiting_page(make_gateway, accept):
    gw = make_gateway(upstreams=[refused_addr(), refused_addr()])
    resp = request(gw.port, "GET", "/lesson/42", headers=[("Accept", accept)])
    assert_unavailable(resp)
    assert (resp.header("Content-Type") or "").startswith("text/html")
    assert b"<html" in resp.body.lower()


def test_all_upstreams_refused_gives_json_to_api_clients(make_gateway):
    gw = make_gateway(upstreams=[refused_addr()])
    resp = request(gw.port, "GET", "/api/grades", headers=[("Accept", "application/json")])
    assert_unavailable(resp)
    assert (resp.header("Content-Type") or "").startswith("application/json")
    assert isinstance(resp.json(), dict)


def test_all_upstreams_refused_via_httpx(make_gateway):
    gw = make_gateway(upstreams=[refused_addr(), refused_addr()])
    with http_client(gw.url) as client:
        for method in ("GET", "POST", "PUT", "DELETE"):
            resp = client.request(method, "/api/x", headers={"Accept": "application/json"},
                                  content=b"{}" if method in ("POST", "PUT") else None)
            assert resp.status_code == 503
            assert int(resp.headers["Retry-After"]) >= 1
            json.loads(resp.content)


def test_unavailable_answer_keeps_the_client_connection(make_gateway):
    gw = make_gateway(upstreams=[refused_addr()])
    with RawConn(gw.port) as conn:
        for _ in range(3):
            conn.send(build_request(headers=[("Accept", "application/json")]))
            resp = conn.recv_response()
            assert_unavailable(resp)
            if resp.has_token("Connection", "close"):
                assert conn.closed()
                break


def test_dropped_get_is_retried_once_on_another_upstream(make_upstream, make_gateway):
    a, b = make_upstream("a"), make_upstream("b")
    gw = make_gateway(upstreams=[a, b])
    for _ in range(4):
        resp = request(gw.port, "GET", "/drop?only=a")
        assert resp.status == 200
        assert resp.header("X-Upstream") == "b"
    # Round robin sent some first attempts to a; every request ended at b once.
    assert 1 <= a.requests("/drop") <= 4
    assert b.requests("/drop") == 4


def test_reset_get_is_retried_on_another_upstream(make_upstream, make_gateway):
    a, b = make_upstream("a"), make_upstream("b")
    gw = make_gateway(upstreams=[a, b])
    for _ in range(4):
        resp = request(gw.port, "GET", "/reset?only=a")
        assert resp.status == 200
        assert resp.header("X-Upstream") == "b"
    assert a.requests("/reset") >= 1


def test_dropped_get_everywhere_is_503_after_bounded_retries(make_upstream, make_gateway):
    a, b = make_upstream("a"), make_upstream("b")
    gw = make_gateway(upstreams=[a, b])
    assert_unavailable(request(gw.port, "GET", "/drop"))
    # Retried, but once: the request reached the upstreams at most twice.
    assert a.requests("/drop") + b.requests("/drop") == 2


def test_dropped_post_is_never_sent_twice(gateway, upstream):
    resp = request(gateway.port, "POST", "/drop", body=b"pay the school trip")
    assert_unavailable(resp)
    assert upstream.requests("/drop", "POST") == 1


def test_dropped_posts_with_a_second_upstream_are_not_retried(make_upstream, make_gateway):
    a, b = make_upstream("a"), make_upstream("b")
    gw = make_gateway(upstreams=[a, b])
    for i in range(4):
        resp = request(gw.port, "POST", "/drop", body=b"x" * (i + 1))
        assert_unavailable(resp)
    assert a.requests("/drop", "POST") + b.requests("/drop", "POST") == 4


def test_chunked_post_to_a_dropping_upstream_arrives_once(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(build_request("POST", "/drop", [("Transfer-Encoding", "chunked")],
                                b"5\r\nhello\r\n0\r\n\r\n"))
        assert_unavailable(conn.recv_response())
    assert upstream.requests("/drop", "POST") == 1


def test_hanging_upstream_is_503_not_504(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream], timeouts={"upstream_read": 0.5})
    resp = request(gw.port, "GET", "/hang", headers=[("Accept", "text/html")])
    assert_unavailable(resp)
    assert b"<html" in resp.body.lower()


def test_hanging_upstream_does_not_spoil_the_pool(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream], timeouts={"upstream_read": 0.5})
    assert_unavailable(request(gw.port, "POST", "/hang", body=b"x"))
    assert upstream.requests("/hang", "POST") == 1
    # The timed-out connection is not reused for the next request.
    resp = request(gw.port, "GET", "/echo")
    assert resp.status == 200
    assert resp.json()["request_number"] == 1


def test_upstream_dying_mid_response_truncates_visibly(gateway, upstream):
    n = 64 * 1024 * 1024
    with RawConn(gateway.port, timeout=10) as conn:
        conn.send(build_request(target=f"/bytes?n={n}"))
        head = conn.recv_headers()
        assert head.startswith(b"HTTP/1.1 200")
        # The client is not reading, so most of the body is still to come.
        upstream.kill()
        got = len(conn.recv_until_close())
    # The head promised n bytes; the client must see the short body as a
    # closed connection, not as a complete response.
    assert got < n


def test_service_returns_once_the_upstream_is_back(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream])
    upstream.kill()
    for _ in range(4):
        assert_unavailable(request(gw.port, "GET", "/echo"))
    upstream.start()
    # Marked down after repeated failures, the server gets a probe request
    # after a cooldown; until then the waiting page is the right answer.
    statuses: list[int] = []

    def back() -> bool:
        statuses.append(request(gw.port, "GET", "/echo").status)
        return statuses[-1] == 200

    assert wait_until(back, timeout=15, interval=0.2)
    assert set(statuses) <= {200, 503}
