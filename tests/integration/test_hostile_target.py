"""What is routed is what is forwarded: absolute-form request targets.

The issue's example: `GET http://beta.test/secret HTTP/1.1` with
`Host: alpha.test` was routed and admitted as alpha (by Host) but forwarded
with beta's target, so behind a virtual-hosting upstream beta's site
answered, counted against alpha's limits. RFC 9112 3.2.2: a server MUST
ignore the received Host when the target is in absolute form and use the
target's host. The gateway routes by that authority and forwards origin-form
with a matching Host, so every school's upstream (a Gate each, in this
process, recording heads and peak concurrency) sees only its own requests,
counted against its own limits.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_admission_support import (
    HTML_ACCEPT,
    JSON_ACCEPT,
    PROBE_HEADER,
    SECRET,
    Gate,
    assert_waiting_page,
    classes,
    hold,
    read_all,
    send,
    start_gate,
    stop_gate,
    wait_queued,
)

from tests.support.clients import RawConn, build_request

pytestmark = pytest.mark.usefixtures("admission_connections")

CLIENTS = 30
BETA_INFLIGHT = 3


@pytest.fixture
def gates() -> Iterator[tuple[Gate, Gate, Gate]]:
    """One counting upstream per school: alpha, beta and an IPv6-named one."""
    started = [start_gate() for _ in range(3)]
    yield started[0], started[1], started[2]
    for gate in started:
        stop_gate(gate)


@pytest.fixture
def gw(make_gateway, gates):
    alpha, beta, v6 = gates
    # alpha could take every request at once: anything charged to it would
    # reach an upstream without waiting.
    schools = [
        {"name": "alpha", "hosts": ["alpha.test"], "upstreams": [alpha.addr],
         "max_inflight": 100},
        {"name": "beta", "hosts": ["beta.test"], "upstreams": [beta.addr],
         "max_inflight": BETA_INFLIGHT},
        {"name": "v6", "hosts": ["[::1]"], "upstreams": [v6.addr], "max_inflight": 100},
    ]
    return make_gateway(schools=schools, classes=classes(), admission={"secret": SECRET})


def exchange(port: int, raw: bytes) -> tuple[int, bytes]:
    with RawConn(port) as conn:
        conn.send(raw)
        resp = conn.recv_response()
        return resp.status, resp.body


@pytest.mark.parametrize("form", ["absolute-form", "Host"])
def test_requests_for_beta_are_counted_against_beta(gw, gates, form):
    # The example: 30 concurrent slow requests for beta, beta max_inflight 3.
    # Named by an absolute-form target under alpha's Host, they must fare
    # exactly as with Host: beta.test: 3 at beta's upstream at once, 27 in
    # beta's queue, none at alpha's.
    alpha, beta, _ = gates
    if form == "absolute-form":
        target, host = "http://beta.test/hold/slow?n=1", "alpha.test"
    else:
        target, host = "/hold/slow?n=1", "beta.test"
    conns = [send(gw.port, "GET", target, [JSON_ACCEPT], host=host) for _ in range(CLIENTS)]
    assert beta.wait_count(BETA_INFLIGHT)
    wait_queued(gw.port, CLIENTS - BETA_INFLIGHT, host="beta.test")
    assert beta.count() == BETA_INFLIGHT
    assert alpha.count() == 0
    beta.release("slow")
    assert [r.status for r in read_all(conns)] == [200] * CLIENTS
    assert beta.peak == BETA_INFLIGHT
    assert alpha.count() == 0
    arrivals = beta.snapshot()
    assert len(arrivals) == CLIENTS
    for arrival in arrivals:
        # Origin-form, with beta's Host: what a virtual-hosting upstream needs.
        assert arrival.target == "/hold/slow?n=1"
        assert arrival.header("Host") == "beta.test"
        assert arrival.header("X-Forwarded-Host") == "beta.test"


@pytest.mark.parametrize(("request_line", "host", "school", "target", "forwarded_host"), [
    ("GET http://beta.test/secret HTTP/1.1", "alpha.test", 1, "/secret", "beta.test"),
    # Empty path: "/" (RFC 9112 3.2.1), the query kept.
    ("GET http://beta.test HTTP/1.1", "alpha.test", 1, "/", "beta.test"),
    ("GET http://beta.test?x=1 HTTP/1.1", "alpha.test", 1, "/?x=1", "beta.test"),
    # Scheme and host case-insensitive; a port stays in the forwarded Host.
    ("GET HTTPS://Beta.Test:8443/a HTTP/1.1", "alpha.test", 1, "/a", "Beta.Test:8443"),
    # The other way round: the target names alpha, Host beta.
    ("POST http://alpha.test/form HTTP/1.1", "beta.test", 0, "/form", "alpha.test"),
    ("GET http://[::1]:8080/v6 HTTP/1.1", "alpha.test", 2, "/v6", "[::1]:8080"),
    # OPTIONS for the whole server (RFC 9112 3.2.4), and asterisk-form.
    ("OPTIONS http://beta.test HTTP/1.1", "alpha.test", 1, "*", "beta.test"),
    ("OPTIONS * HTTP/1.1", "beta.test", 1, "*", "beta.test"),
    # HTTP/1.0 may leave Host out when the target names the host.
    ("GET http://beta.test/old HTTP/1.0", None, 1, "/old", "beta.test"),
])
def test_forwarded_target_and_host_match_the_routed_school(gw, gates, request_line, host,
                                                           school, target, forwarded_host):
    method, raw_target, version = request_line.split(" ")
    raw = build_request(method, raw_target, [("Content-Length", "0")] if method == "POST" else [],
                        version=version, host=host)
    status, _ = exchange(gw.port, raw)
    assert status == 200
    for i, gate in enumerate(gates):
        arrivals = gate.snapshot()
        if i != school:
            assert arrivals == [], f"school {i} received {[a.target for a in arrivals]}"
            continue
        [arrival] = arrivals
        assert arrival.method == method
        assert arrival.target == target
        hosts = [v for k, v in arrival.headers if k.lower() == "host"]
        assert hosts == [forwarded_host]
        assert arrival.header("X-Forwarded-Host") == forwarded_host


@pytest.mark.parametrize(("request_line", "words"), [
    ("GET ftp://beta.test/x HTTP/1.1", ("scheme",)),
    ("GET http://user@beta.test/x HTTP/1.1", ("userinfo",)),
    ("GET http://user:secret@beta.test/x HTTP/1.1", ("userinfo",)),
    ("GET http:///x HTTP/1.1", ("authority",)),
    ("GET http://beta.test:8o/x HTTP/1.1", ("authority",)),
    ("GET * HTTP/1.1", ("options",)),
    ("GET /x#top HTTP/1.1", ("fragment",)),
])
def test_bad_targets_are_400_and_reach_no_upstream(gw, gates, request_line, words):
    status, body = exchange(gw.port, (request_line + "\r\nHost: alpha.test\r\n\r\n").encode())
    assert status == 400
    assert any(w in body.decode().lower() for w in words), body
    assert all(gate.snapshot() == [] for gate in gates)


def test_unknown_authority_is_421_whatever_the_host_says(gw, gates):
    raw = build_request("GET", "http://nobody.test/x", host="alpha.test")
    assert exchange(gw.port, raw)[0] == 421
    assert all(gate.snapshot() == [] for gate in gates)


def test_status_endpoint_and_waiting_page_use_the_routed_target(gw, gates):
    _, beta, _ = gates
    held = [hold(gw.port, beta, f"h{i}", host="beta.test") for i in range(BETA_INFLIGHT)]
    # The status poll in absolute-form is answered by the gateway for beta.
    raw = build_request("GET", "http://beta.test/.schoolgate/status", [JSON_ACCEPT],
                        host="alpha.test")
    status, body = exchange(gw.port, raw)
    assert status == 200 and b'"state"' in body
    # beta is full: the waiting page sends the visitor back to the origin-form
    # URL (same origin), not to the absolute one.
    with RawConn(gw.port) as conn:
        conn.send(build_request("GET", "http://beta.test/lesson?id=5",
                                [HTML_ACCEPT, (PROBE_HEADER, "1")], host="alpha.test"))
        assert_waiting_page(conn.recv_response(), url="/lesson?id=5")
    beta.release(*(f"h{i}" for i in range(BETA_INFLIGHT)))
    assert [r.status for r in read_all(held)] == [200] * BETA_INFLIGHT
    assert all(a.path.startswith("/hold/") for a in beta.snapshot())
