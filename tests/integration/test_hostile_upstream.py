"""Hostile upstreams: responses that run past their end, and responses
without limits.

One gateway serves two schools: school.test in front of a scripted raw-socket
upstream (tests/support/hostile.py) whose answer each test chooses by path,
and other.test in front of the ordinary test upstream. What is checked:

- a response ends where its framing says; whatever follows it (another
  response, a stray byte, a body after a HEAD answer) closes the upstream
  connection instead of reaching the next request on it, while the client
  gets the complete response it asked for;
- 1xx responses followed by the final one in the same read, and chunked
  responses with trailers, are legitimate and keep the connection pooled;
- a request retried after a pooled connection failed goes to a new one;
- what an upstream sends is bounded like what a client sends (status line,
  header count and bytes, chunk lines, trailers, 1xx heads): over a limit the
  client gets the "not answering" page (503, Retry-After) if nothing of the
  response reached it yet, else its connection is cut; the upstream
  connection is closed; the other school is answered meanwhile; the worker
  lives on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.support.clients import (
    FORBIDDEN_STATUSES,
    ProtocolViolation,
    RawConn,
    Response,
    build_request,
)
from tests.support.hostile import CLOSE, HostileUpstream, echo, response
from tests.support.procs import Gateway, RssSampler, Upstream, gateway_config

LOG_TAIL = 40
OTHER = "other.test"
# The gateway's defaults ([limits]); the cases below go just past them.
MAX_LINE = 8192
MAX_HEADER_BYTES = 32768
MAX_HEADERS = 100
MAX_CHUNK_EXT = 4096
BLOCK = 65536


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with HostileUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = Upstream(tmp_path_factory.mktemp("hostile-upstream-other"), "other").start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, hostile: HostileUpstream,
            other: Upstream) -> Iterator[Gateway]:
    schools = [
        {"name": "hostile", "hosts": ["school.test"], "upstreams": [hostile.addr]},
        {"name": "other", "hosts": [OTHER], "upstreams": [other.addr]},
    ]
    gw = Gateway(gateway_config([], schools=schools),
                 tmp_path_factory.mktemp("hostile-upstream-gw"), name="gateway").start()
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def fresh(hostile: HostileUpstream, gateway: Gateway) -> Iterator[list[int]]:
    """Every test starts with the hostile upstream's record empty and its
    routes unset, and ends with the gateway's worker processes unchanged."""
    hostile.routes.clear()
    hostile.clear()
    pids = sorted(gateway.pids())
    yield pids
    assert gateway.alive(), _tail(gateway)
    assert sorted(gateway.pids()) == pids, f"a worker died or was replaced\n{_tail(gateway)}"


def _tail(gw: Gateway) -> str:
    return "\n".join(gw.log().splitlines()[-LOG_TAIL:])


def get(gw: Gateway, target: str, method: str = "GET", host: str = "school.test",
        body: bytes = b"", timeout: float = 5.0) -> Response:
    with RawConn(gw.port, timeout=timeout) as conn:
        conn.send(build_request(method, target, body=body, host=host))
        return conn.recv_response(method)


def expect_other_school_served(gw: Gateway) -> None:
    """The other school is answered, within a bound far above its normal time."""
    resp = get(gw, "/echo?other=1", host=OTHER, timeout=2.0)
    assert resp.status == 200, f"{resp}\n{_tail(gw)}"
    assert resp.json()["target"] == "/echo?other=1"


def expect_unavailable(resp: Response) -> None:
    assert resp.status not in FORBIDDEN_STATUSES
    assert resp.status == 503, resp
    retry_after = resp.header("Retry-After")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1


def expect_all_closed(hostile: HostileUpstream, path: str) -> None:
    """Every upstream connection that carried `path` was closed by the gateway."""
    seen = hostile.requests(path)
    assert seen, f"{path} never reached the upstream"
    for req in seen:
        assert hostile.wait_ended(req.conn) == "peer", (path, req)


def answered_on(resp: Response) -> int:
    """Which upstream connection answered (the echo handler's JSON)."""
    return resp.json()["conn"]


# == C: a response ends at its end ==============================================

NEXT_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nPOISON"


@pytest.mark.parametrize("after", [
    pytest.param(NEXT_RESPONSE, id="start-of-another-response"),
    pytest.param(response(200, b"again"), id="whole-second-response"),
    pytest.param(b"x", id="one-stray-byte"),
    pytest.param(b"\r\n", id="crlf"),
])
def test_bytes_after_a_response_close_the_connection(gateway, hostile, after):
    # The example: "ok", then the start of another response in the
    # same write. Pooled, the next request's answer would be read as the
    # rest of that second response's body.
    hostile.routes["/poison"] = lambda req: response(200, b"ok") + after
    resp = get(gateway, "/poison")
    assert (resp.status, resp.body) == (200, b"ok"), resp
    expect_all_closed(hostile, "/poison")
    follow = get(gateway, "/after")
    assert follow.status == 200, f"{follow}\n{_tail(gateway)}"
    assert follow.json()["target"] == "/after"
    assert answered_on(follow) != hostile.requests("/poison")[0].conn


def test_bytes_arriving_while_idle_close_the_connection(gateway, hostile):
    hostile.routes["/late"] = lambda req: [response(200, b"ok"), 0.2, NEXT_RESPONSE]
    assert get(gateway, "/late").body == b"ok"
    expect_all_closed(hostile, "/late")
    follow = get(gateway, "/after")
    assert follow.json()["target"] == "/after"
    assert answered_on(follow) != hostile.requests("/late")[0].conn


@pytest.mark.parametrize("method", ["HEAD", "GET"])
@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_status_followed_by_bytes_is_not_pooled(gateway, hostile, method, status):
    hostile.routes["/nobody"] = lambda req: response(status, reason="X") + b"junk"
    resp = get(gateway, "/nobody", method)
    assert resp.status == status and resp.body == b""
    expect_all_closed(hostile, "/nobody")
    assert get(gateway, "/after").json()["target"] == "/after"


@pytest.mark.parametrize("after", [
    pytest.param(b"12345", id="the-announced-body"),
    pytest.param(response(200, b"next"), id="another-response"),
])
def test_head_answer_followed_by_bytes_is_not_pooled(gateway, hostile, after):
    head = response(200, headers=[("Content-Length", "5")])
    hostile.routes["/head"] = lambda req: head + after
    with RawConn(gateway.port) as conn:
        conn.send(build_request("HEAD", "/head"))
        resp = conn.recv_response("HEAD")
        assert resp.status == 200 and resp.header("Content-Length") == "5"
        # Nothing of what followed reaches this client either.
        conn.send(build_request("GET", "/after"))
        follow = conn.recv_response()
    assert follow.json()["target"] == "/after"
    expect_all_closed(hostile, "/head")
    assert answered_on(follow) != hostile.requests("/head")[0].conn


def test_clean_head_answer_keeps_the_connection(gateway, hostile):
    hostile.routes["/head"] = lambda req: response(200, headers=[("Content-Length", "5")])
    resp = get(gateway, "/head", "HEAD")
    assert resp.status == 200
    follow = get(gateway, "/after")
    assert answered_on(follow) == hostile.requests("/head")[0].conn


@pytest.mark.parametrize("interim", [
    pytest.param(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
                 id="103"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", id="100"),
    pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n"
                 b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n", id="100+103"),
])
def test_interim_and_final_response_in_one_read_are_one_exchange(gateway, hostile, interim):
    hostile.routes["/early"] = lambda req: interim + response(200, b"final")
    with RawConn(gateway.port) as conn:
        conn.send(build_request("POST", "/early", body=b"form=1"))
        resp = conn.recv_response()
    assert (resp.status, resp.body) == (200, b"final"), resp
    # 100 Continue is the gateway's own business; Early Hints are passed on.
    assert [r.status for r in resp.interim] == [103] * interim.count(b" 103 ")
    follow = get(gateway, "/after")
    assert answered_on(follow) == hostile.requests("/early")[0].conn, "1xx spoiled the pool"


def _chunked(trailers: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n" + trailers + b"\r\n")


def test_chunked_response_with_trailers_keeps_the_connection(gateway, hostile):
    hostile.routes["/chunked"] = lambda req: _chunked(
        b"Set-Cookie: session=upstream-trailer\r\nX-Checksum: 1\r\n")
    resp = get(gateway, "/chunked")
    assert (resp.status, resp.body) == (200, b"hello world")
    follow = get(gateway, "/after")
    assert answered_on(follow) == hostile.requests("/chunked")[0].conn
    # Trailer fields are not forwarded, and never become fields of the next
    # response on the connection (another client's).
    assert follow.header("Set-Cookie") is None and follow.header("X-Checksum") is None


def test_chunked_response_followed_by_bytes_is_not_pooled(gateway, hostile):
    hostile.routes["/chunked"] = lambda req: _chunked(b"X-Checksum: 1\r\n") + NEXT_RESPONSE
    resp = get(gateway, "/chunked")
    assert (resp.status, resp.body) == (200, b"hello world")
    expect_all_closed(hostile, "/chunked")
    assert get(gateway, "/after").json()["target"] == "/after"


def test_retry_after_a_stale_pooled_connection_uses_a_new_one(gateway, hostile):
    # Two pooled connections: two requests at once, each answered late.
    hostile.routes["/slow"] = lambda req: [0.3, echo(req)]
    with RawConn(gateway.port) as a, RawConn(gateway.port) as b:
        a.send(build_request("GET", "/slow?a"))
        b.send(build_request("GET", "/slow?b"))
        assert {a.recv_response().status, b.recv_response().status} == {200}
    pooled = {s.conn for s in hostile.requests("/slow")}
    assert len(pooled) == 2
    # Now every connection that has served before is stale: the upstream
    # drops a request on it unanswered. Retrying on the other pooled one
    # would meet the same fate.
    hostile.routes["/stale"] = lambda req: None if req.number > 1 else echo(req)
    resp = get(gateway, "/stale")
    assert resp.status == 200, f"{resp}\n{_tail(gateway)}"
    seen = hostile.requests("/stale")
    assert len(seen) == 2, seen
    # Tried first on one of the pooled connections, then on a new one.
    assert seen[0].conn in pooled and seen[0].number > 1
    assert seen[1].conn not in pooled and seen[1].number == 1
    assert answered_on(resp) == seen[1].conn


# == D: limits on what an upstream sends ============================================

def _endless(first: bytes, filler: bytes) -> Iterator[bytes]:
    yield first
    block = filler * (BLOCK // len(filler))
    while True:
        yield block


def _many_headers(n: int) -> Iterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    lines = (b"X-Header-%d: value\r\n" % i for i in range(n))
    while piece := b"".join(itertools.islice(lines, 4096)):
        yield piece
    yield b"\r\nok"


def _header_lines(n: int, size: int) -> bytes:
    value = b"v" * (size - 16)
    return b"".join(b"X-Big-%05d: %b\r\n" % (i, value) for i in range(n))


def _interim_storm() -> Iterator[bytes]:
    hint = b"HTTP/1.1 103 Early Hints\r\nLink: </x.css>; rel=preload\r\n\r\n"
    while True:
        yield hint * 64


# Field names the hostile heads below use.
UPSTREAM_FIELDS = ("x-header-", "x-big-", "x-endless")

# Answers whose head breaks a limit: no byte of them may reach the client.
HEAD_OVER_LIMIT = {
    # The 200,000 headers (about 12 MB of head).
    "many-headers": lambda req: _many_headers(200_000),
    "one-more-than-max-headers": lambda req: _many_headers(MAX_HEADERS + 1),
    # One header line that never ends.
    "endless-header-line": lambda req: _endless(b"HTTP/1.1 200 OK\r\nX-Endless: ", b"a"),
    "endless-status-line": lambda req: _endless(b"HTTP/1.1 200 ", b"O"),
    "status-line-over-limit": lambda req: (
        b"HTTP/1.1 200 " + b"O" * MAX_LINE + b"\r\nContent-Length: 2\r\n\r\nok"),
    # Few headers, but more bytes than max_header_bytes (within the raw budget).
    "header-bytes-over-limit": lambda req: (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
        + _header_lines(MAX_HEADER_BYTES // 1000 + 2, 1000) + b"\r\nok"),
    "endless-1xx": lambda req: _interim_storm(),
}


@pytest.mark.parametrize("case", HEAD_OVER_LIMIT)
def test_response_head_over_a_limit_is_not_answering(gateway, hostile, case):
    hostile.routes["/big"] = HEAD_OVER_LIMIT[case]
    with RssSampler(gateway) as rss, RawConn(gateway.port) as conn:
        conn.send(build_request("GET", "/big"))
        # Served while the attack is under way.
        expect_other_school_served(gateway)
        resp = conn.recv_response()
    expect_unavailable(resp)
    assert all(r.status == 103 for r in resp.interim)
    # The gateway's own page: nothing of the upstream's head is relayed.
    assert not any(name.lower().startswith(UPSTREAM_FIELDS) for name, _ in resp.headers)
    expect_all_closed(hostile, "/big")
    # A GET is tried once more, on a new connection, and no more.
    assert len(hostile.requests("/big")) <= 2
    assert rss.growth < 32 << 20, (rss.idle, rss.peak)
    expect_other_school_served(gateway)


def test_exactly_max_headers_are_relayed(gateway, hostile):
    hostile.routes["/max"] = lambda req: _many_headers(MAX_HEADERS - 1)  # + Content-Length
    resp = get(gateway, "/max")
    assert (resp.status, resp.body) == (200, b"ok")
    assert len([n for n, _ in resp.headers if n.startswith("X-Header-")]) == MAX_HEADERS - 1


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

# Chunked bodies whose framing breaks a limit after the head went out (in a
# later read; within the head's own read see test_a_bad_chunked_body_...).
BODY_OVER_LIMIT = {
    "endless-chunk-extension": lambda req: _endless(
        CHUNKED_HEAD + b"5\r\nhello\r\n5;ext=", b"e"),
    "endless-trailer-line": lambda req: _endless(
        CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-Trailer: ", b"t"),
    "endless-trailers": lambda req: _endless(
        CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n", b"X-T: 1\r\n"),
}


@pytest.mark.parametrize("case", BODY_OVER_LIMIT)
def test_response_body_framing_over_a_limit_cuts_the_client(gateway, hostile, case):
    hostile.routes["/framing"] = BODY_OVER_LIMIT[case]
    with RawConn(gateway.port) as conn:
        conn.send(build_request("GET", "/framing"))
        expect_other_school_served(gateway)
        # If the head (and "hello") went out, the only honest signal left is
        # a response that never completes; if the limit was crossed within
        # the read that brought the head, nothing had left the gateway and
        # the not-answering page is the answer.
        try:
            resp = conn.recv_response()
        except ProtocolViolation:
            assert conn.closed()
        else:
            expect_unavailable(resp)  # a whole answer: the connection may stay
    expect_all_closed(hostile, "/framing")
    expect_other_school_served(gateway)


def test_post_over_a_limit_is_not_sent_twice(gateway, hostile):
    hostile.routes["/form"] = lambda req: _many_headers(MAX_HEADERS + 1)
    resp = get(gateway, "/form", "POST", body=b"homework=1")
    expect_unavailable(resp)
    assert len(hostile.requests("/form")) == 1
    expect_all_closed(hostile, "/form")


def test_a_close_after_the_response_is_not_a_leftover(gateway, hostile):
    # Sanity for the cases above: a response followed by the upstream's own
    # close is complete and clean.
    hostile.routes["/bye"] = lambda req: [response(200, b"bye", [("Connection", "close")]),
                                          CLOSE]
    resp = get(gateway, "/bye")
    assert (resp.status, resp.body) == (200, b"bye")
    assert get(gateway, "/after").json()["target"] == "/after"


# == found by the adversarial review =============================================

@pytest.mark.parametrize("protocol", ["h2c", "other", ""])
def test_a_101_to_a_protocol_not_offered_is_not_tunnelled(gateway, hostile, protocol):
    hostile.routes["/ws"] = lambda req: (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "
        + protocol.encode() + b"\r\n\r\nsmuggled bytes")
    with RawConn(gateway.port) as conn:
        conn.send(b"GET /ws HTTP/1.1\r\nHost: school.test\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n")
        resp = conn.recv_response()
    expect_unavailable(resp)
    assert b"smuggled" not in resp.body
    expect_all_closed(hostile, "/ws")
    expect_other_school_served(gateway)


@pytest.mark.parametrize("body", [
    pytest.param(b"00000000000000000000002\r\nok\r\n0\r\n\r\n", id="23-digit-size"),
    pytest.param(b"2;" + b"a" * 100_000 + b"\r\nok\r\n0\r\n\r\n", id="endless-extension"),
    pytest.param(b"5;x=" + b"e" * MAX_CHUNK_EXT + b"\r\nhello\r\n0\r\n\r\n",
                 id="chunk-extension-over-limit"),
    pytest.param(b"2\r\nok\r\n0\r\n" + b"X: y\r\n" * 50_000 + b"\r\n", id="huge-trailers"),
    pytest.param(b"2\nok\r\n0\r\n\r\n", id="bare-lf"),
])
def test_a_bad_chunked_body_within_the_first_read_gets_the_page(gateway, hostile, body):
    # Found by the adversarial review: the head was already corked when the
    # body proved bad, and the client got an empty close; nothing had left
    # the gateway, so the honest answer is still the not-answering page.
    hostile.routes["/badchunks"] = lambda req: CHUNKED_HEAD + body
    expect_unavailable(get(gateway, "/badchunks"))
    expect_all_closed(hostile, "/badchunks")
    expect_other_school_served(gateway)


def test_a_bad_chunk_after_part_of_the_body_went_out_cuts_the_client(gateway, hostile):
    # Once bytes of the response have reached the client, cutting its
    # connection is the only way left to say the response is incomplete.
    hostile.routes["/latebad"] = lambda req: [CHUNKED_HEAD + b"2\r\nok\r\n", 0.3,
                                             b"zz\r\nbad\r\n"]
    with RawConn(gateway.port) as conn:
        conn.send(build_request("GET", "/latebad", host="school.test"))
        data = conn.recv_until_close()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert not data.endswith(b"0\r\n\r\n")
    expect_all_closed(hostile, "/latebad")
