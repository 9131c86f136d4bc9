"""Core HTTP/1.x proxying: versions, keep-alive, pipelining, bodiless responses,
interim responses and the headers the gateway removes or adds."""

from __future__ import annotations

from tests.support.clients import (
    FORBIDDEN_STATUSES,
    RawConn,
    Response,
    build_request,
    http_client,
    request,
)
from tests.support.pattern import pattern_bytes


def upstream_headers(resp: Response) -> list[tuple[str, str]]:
    """The request headers as the upstream's /echo received them."""
    assert resp.status == 200, resp
    return [(k, v) for k, v in resp.json()["headers"]]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def test_get_reaches_upstream_with_target_and_host(gateway):
    resp = request(gateway.port, "GET", "/echo?a=1&b=%20x")
    assert resp.status == 200
    echo = resp.json()
    assert echo["method"] == "GET"
    assert echo["target"] == "/echo?a=1&b=%20x"
    assert values(upstream_headers(resp), "Host") == ["school.test"]
    assert resp.header("X-Upstream") == "u1"


def test_upstream_status_and_body_pass_through(gateway):
    for code in (200, 201, 400, 403, 404, 418, 500):
        resp = request(gateway.port, "GET", f"/status/{code}")
        assert resp.status == code
        assert resp.body == f"status {code}\n".encode()


def test_http10_connection_closes_without_keep_alive(gateway):
    with RawConn(gateway.port) as conn:
        conn.send(build_request(version="HTTP/1.0"))
        resp = conn.recv_response()
        assert resp.status == 200
        assert conn.closed()


def test_http10_keep_alive_when_asked(gateway, upstream):
    with RawConn(gateway.port) as conn:
        for i in range(3):
            conn.send(build_request(target=f"/echo?i={i}", version="HTTP/1.0",
                                    headers=[("Connection", "keep-alive")]))
            resp = conn.recv_response()
            assert resp.status == 200
            assert resp.json()["target"] == f"/echo?i={i}"
            assert resp.framing == "length"
            assert resp.has_token("Connection", "keep-alive")
        assert not conn.closed(timeout=0.3)


def test_http10_client_gets_chunked_upstream_body_close_delimited(gateway):
    with RawConn(gateway.port) as conn:
        conn.send(build_request(target="/chunked?n=100000&size=1000", version="HTTP/1.0"))
        resp = conn.recv_response()
        assert resp.status == 200
        assert resp.headers_named("Transfer-Encoding") == []
        assert resp.framing == "close"
        assert resp.body == pattern_bytes(100000)


def test_many_requests_on_one_keep_alive_connection(gateway, upstream):
    with RawConn(gateway.port) as conn:
        for i in range(50):
            conn.send(build_request(target=f"/echo?i={i}"))
            resp = conn.recv_response()
            assert resp.status == 200
            assert resp.json()["target"] == f"/echo?i={i}"
        assert not conn.closed(timeout=0.2)
    # Sequential requests never need a second upstream connection.
    assert upstream.stats()["connections"] == 1


def test_pipelined_requests_answered_in_order(gateway):
    payload = b"pipelined body " * 100
    reqs = []
    for i in range(10):
        if i % 3 == 0:
            reqs.append(("GET", f"/bytes?n={1000 * i + 1}", b""))
        elif i % 3 == 1:
            reqs.append(("POST", f"/echo?i={i}", payload[:i * 97]))
        else:
            reqs.append(("GET", f"/chunked?n={500 * i}&size=77", b""))
    with RawConn(gateway.port) as conn:
        conn.send(b"".join(build_request(m, t, body=b) for m, t, b in reqs))
        for i, (_method, target, body) in enumerate(reqs):
            resp = conn.recv_response()
            assert resp.status == 200, (i, resp)
            if i % 3 == 0:
                assert resp.body == pattern_bytes(1000 * i + 1)
            elif i % 3 == 1:
                echo = resp.json()
                assert echo["target"] == target
                assert echo["body_length"] == len(body)
            else:
                assert resp.body == pattern_bytes(500 * i)
        assert not conn.closed(timeout=0.2)


def test_head_keeps_upstream_connection_in_sync(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(build_request("HEAD", "/head-cl"))
        head = conn.recv_response("HEAD")
        assert head.status == 200
        assert head.header("Content-Length") == "1000"
        conn.send(build_request("GET", "/echo"))
        resp = conn.recv_response()
        assert resp.status == 200
        assert resp.json()["method"] == "GET"
        # Had the gateway waited for 1000 body bytes after HEAD, or read them
        # into the next answer, the GET would have failed or come out garbled.
        assert resp.json()["request_number"] == 2
        conn.send(build_request("GET", "/head-cl"))
        assert conn.recv_response().body == pattern_bytes(1000)
    stats = upstream.stats()
    assert stats["connections"] == 1
    assert stats["requests"]["/head-cl"] == {"HEAD": 1, "GET": 1}


def test_no_body_statuses_keep_connection_in_sync(gateway, upstream):
    with RawConn(gateway.port) as conn:
        for target, status in (("/204", 204), ("/304", 304), ("/204", 204)):
            conn.send(build_request(target=target))
            resp = conn.recv_response()
            assert resp.status == status
            assert resp.body == b""
            assert resp.headers_named("Transfer-Encoding") == []
            conn.send(build_request(target="/echo"))
            assert conn.recv_response().status == 200
    assert upstream.stats()["connections"] == 1


def test_early_hints_forwarded_before_final_response(gateway):
    with RawConn(gateway.port) as conn:
        conn.send(build_request(target="/early-hints"))
        resp = conn.recv_response()
        assert [r.status for r in resp.interim] == [103]
        assert resp.interim[0].header("Link") == "</style.css>; rel=preload; as=style"
        assert resp.status == 200
        assert resp.json()["target"] == "/early-hints"
        # The connection is still usable afterwards.
        conn.send(build_request(target="/echo"))
        assert conn.recv_response().status == 200


def test_hop_by_hop_headers_not_forwarded(gateway):
    resp = request(gateway.port, "GET", "/echo", headers=[
        # Upgrade without the "upgrade" Connection token asks for nothing
        # (RFC 9110 7.8), so it is a stray hop-by-hop header to drop.
        ("Connection", "keep-alive, X-Secret"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("TE", "gzip"),
        ("Trailer", "X-Checksum"),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "h2c"),
        ("X-Secret", "only for the gateway"),
        ("X-Kept", "end to end"),
    ])
    seen = upstream_headers(resp)
    names = {k.lower() for k, _ in seen}
    for name in ("keep-alive", "trailer", "proxy-connection", "upgrade", "x-secret"):
        assert name not in names, seen
    # The gateway may speak its own Connection/TE to the upstream, never the client's.
    for value in values(seen, "Connection"):
        assert not {"x-secret", "upgrade"} & {t.strip().lower() for t in value.split(",")}
    assert "gzip" not in " ".join(values(seen, "TE")).lower()
    assert values(seen, "X-Kept") == ["end to end"]


def test_hop_by_hop_response_headers_from_upstream_are_not_relayed(gateway):
    # The upstream's own Connection: close must not reach the client: the
    # client connection stays open although the upstream one was closed.
    with RawConn(gateway.port) as conn:
        conn.send(build_request(target="/close"))
        resp = conn.recv_response()
        assert resp.status == 200
        assert not resp.has_token("Connection", "close")
        conn.send(build_request(target="/echo"))
        assert conn.recv_response().status == 200


def test_forwarding_headers_added(gateway):
    seen = upstream_headers(request(gateway.port, "GET", "/echo"))
    assert values(seen, "X-Forwarded-For") == ["127.0.0.1"]
    assert values(seen, "X-Forwarded-Proto") == ["http"]
    assert values(seen, "X-Forwarded-Host") == ["school.test"]
    via = values(seen, "Via")
    assert len(via) == 1 and via[0].endswith("schoolgate")
    assert via[0].startswith("1.1 ")


def test_forwarded_for_appended_to_trusted_proxy_chain(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream], server={"trusted_proxies": ["127.0.0.1"],
                                                    "via_name": "gate-7"})
    resp = request(gw.port, "GET", "/echo", headers=[("X-Forwarded-For", "203.0.113.7"),
                                                     ("Via", "1.1 edge")])
    seen = upstream_headers(resp)
    xff = ", ".join(values(seen, "X-Forwarded-For"))
    assert [a.strip() for a in xff.split(",")] == ["203.0.113.7", "127.0.0.1"]
    via = ", ".join(values(seen, "Via"))
    assert [v.strip() for v in via.split(",")] == ["1.1 edge", "1.1 gate-7"]


def test_untrusted_client_cannot_hide_behind_forwarded_for(gateway):
    seen = upstream_headers(request(gateway.port, "GET", "/echo",
                                    headers=[("X-Forwarded-For", "198.51.100.1")]))
    xff = ", ".join(values(seen, "X-Forwarded-For"))
    # Whatever the gateway keeps of the claim, the real peer comes last.
    assert xff.split(",")[-1].strip() == "127.0.0.1"


def test_request_headers_kept_in_order_with_duplicates(gateway):
    seen = upstream_headers(request(gateway.port, "GET", "/echo", headers=[
        ("X-A", "1"), ("Cookie", "a=1"), ("X-A", "2"), ("Accept", "text/plain"),
    ]))
    end_to_end = [(k.lower(), v) for k, v in seen if k.lower() in ("x-a", "cookie", "accept")]
    assert end_to_end == [("x-a", "1"), ("cookie", "a=1"), ("x-a", "2"),
                          ("accept", "text/plain")]


def test_httpx_client_round_trips(gateway):
    with http_client(gateway.url) as client:
        for i in range(5):
            resp = client.post("/echo", params={"i": i}, content=b"x" * i)
            assert resp.status_code == 200
            echo = resp.json()
            assert echo["body_length"] == i
            assert echo["target"] == f"/echo?i={i}"
        resp = client.get("/bytes", params={"n": 300000})
        assert resp.content == pattern_bytes(300000)
        assert resp.status_code not in FORBIDDEN_STATUSES


def test_h2c_upgrade_is_served_as_http11(gateway):
    # A cleartext HTTP/2 upgrade is never passed on: the upstream would be
    # free to answer 101 and carry later requests past routing and admission
    # (h2c smuggling). The request is forwarded as plain HTTP/1.1 and the
    # connection keeps working for pipelined requests behind it.
    upgrade = build_request(target="/echo", headers=[
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
    ])
    with RawConn(gateway.port) as conn:
        conn.send(upgrade + build_request(target="/echo?second=1"))
        first = conn.recv_response()
        assert first.status == 200
        assert not first.interim
        seen = {k.lower() for k, _ in first.json()["headers"]}
        assert not {"upgrade", "http2-settings"} & seen
        second = conn.recv_response()
        assert second.status == 200
        assert second.json()["target"] == "/echo?second=1"
