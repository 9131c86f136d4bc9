"""The upstream side without sockets: response framing and limits, and the
pool's keep-alive bookkeeping under an injected clock.

For the protocol cases a real App (admission off) gets a client connection
and one pooled upstream connection, both on MockTransports; the client sends
a request, which goes out on the pooled connection, and the test plays the
upstream by calling data_received with the response bytes. Each case is fed
whole and one byte per call: a limit or an end of message that only holds
when the bytes arrive in one read holds for nothing.
"""

from __future__ import annotations

import time

import pytest

from gateway.config import parse_config
from gateway.proxy.app import App
from gateway.proxy.client import ClientProtocol
from gateway.proxy.upstream import (
    REUSE_MARGIN,
    REUSE_MARGIN_SHARE,
    UNPROVEN_IDLE,
    UpstreamConnection,
    UpstreamServer,
)
from tests.support.transport import MockTransport

ADDR = "127.0.0.1:9"
CONFIG = f"""
[server]
listen = "127.0.0.1:1"

[admission]
enabled = false

[limits]
max_request_line = 256
max_header_bytes = 1024
max_headers = 10
max_chunk_ext = 200

[[schools]]
name = "school"
hosts = ["school.test"]
# Nothing listens here; every case runs on the pooled connection made below.
upstreams = ["{ADDR}"]
""".encode()
HEAD_BUDGET = 256 + 1024


class Setup:
    def __init__(self) -> None:
        self.app = App(parse_config(CONFIG, "test.toml"))
        self.server: UpstreamServer = self.app.servers[ADDR]
        self.conn, self.upstream = pooled(self.server, time.monotonic())

    def client(self, request: bytes) -> MockTransport:
        """A new client connection sending `request`."""
        proto = ClientProtocol(self.app)
        transport = MockTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        proto.data_received(request)
        return transport

    @property
    def pooled(self) -> bool:
        return self.conn in self.server.idle and not self.upstream.closed


def pooled(server: UpstreamServer, now: float) -> tuple[UpstreamConnection, MockTransport]:
    conn = UpstreamConnection(server)
    transport = MockTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    server.total.add(conn)
    server.release(conn, now)
    return conn, transport


def feed(conn: UpstreamConnection, data: bytes, bytewise: bool) -> None:
    if not bytewise:
        conn.data_received(data)
        return
    for i in range(len(data)):
        if conn.exchange is None and conn.closed:
            return  # the gateway is done with it; a transport would stop reading
        conn.data_received(data[i:i + 1])


GET = b"GET /page HTTP/1.1\r\nHost: school.test\r\n\r\n"
HEAD = b"HEAD /page HTTP/1.1\r\nHost: school.test\r\n\r\n"
# Not retried on another connection (no event loop here to dial one).
POST = b"POST /form HTTP/1.1\r\nHost: school.test\r\nContent-Length: 3\r\n\r\na=1"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
BYTEWISE = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])


def head_of(written: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, fields and body (de-chunked) of the last response in `written`."""
    written = bytes(written)
    head, _, body = written[written.rfind(b"HTTP/1.1 "):].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = [tuple(line.split(b": ", 1)) for line in lines[1:]]
    if (b"Transfer-Encoding", b"chunked") in fields:
        body = dechunk(body)
    return int(lines[0].split(b" ")[1]), fields, body  # type: ignore[return-value]


def dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            assert body == b"\r\n", body
            return out
        out += body[:size]
        assert body[size:size + 2] == b"\r\n"
        body = body[size + 2:]


# -- a response ends at its end --------------------------------------------------

LEFTOVER = {
    "next-response": (GET, OK + b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nPOISON", b"ok"),
    "stray-byte": (GET, OK + b"x", b"ok"),
    "crlf": (GET, OK + b"\r\n", b"ok"),
    "after-chunked": (GET, CHUNKED + b"2\r\nok\r\n0\r\n\r\n" + OK, b"ok"),
    "after-trailers": (GET, CHUNKED + b"2\r\nok\r\n0\r\nX-T: 1\r\n\r\n\r\n", b"ok"),
    "after-204": (GET, b"HTTP/1.1 204 No Content\r\n\r\n" + OK, b""),
    "after-304": (GET, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\nnot-a-body", b""),
    "body-after-head": (HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b""),
    "response-after-head": (HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + OK, b""),
    "after-length-0": (GET, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + OK, b""),
}


@BYTEWISE
@pytest.mark.parametrize("case", LEFTOVER)
def test_bytes_after_the_response_close_the_connection(case, bytewise):
    request, answer, body = LEFTOVER[case]
    s = Setup()
    client = s.client(request)
    assert s.conn.exchange is not None
    feed(s.conn, answer, bytewise)
    status, _, got = head_of(client.written)
    # The client gets the whole first response, and only that.
    assert status in (200, 204, 304)
    assert got == body
    assert not client.closed
    assert s.upstream.closed and not s.pooled


CLEAN = {
    "length": (GET, OK, b"ok", [200]),
    "chunked-trailers": (GET, CHUNKED + b"2\r\nok\r\n0\r\nX-Sum: 1\r\nX-More: 2\r\n\r\n",
                         b"ok", [200]),
    "chunk-extension": (GET, CHUNKED + b"2;name=value\r\nok\r\n0\r\n\r\n", b"ok", [200]),
    "103-then-200": (GET, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK, b"ok",
                     [103, 200]),
    "100-then-200": (POST, b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"ok", [200]),
    "head": (HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"", [200]),
    "head-chunked": (HEAD, CHUNKED, b"", [200]),
    "204": (GET, b"HTTP/1.1 204 No Content\r\n\r\n", b"", [204]),
    "304": (GET, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", b"", [304]),
}


@BYTEWISE
@pytest.mark.parametrize("case", CLEAN)
def test_complete_responses_keep_the_connection(case, bytewise):
    request, answer, body, statuses = CLEAN[case]
    s = Setup()
    client = s.client(request)
    feed(s.conn, answer, bytewise)
    written = bytes(client.written)
    assert [int(line.split(b" ")[1]) for line in written.split(b"\r\n")
            if line.startswith(b"HTTP/1.1 ")] == statuses
    assert head_of(written)[2] == body
    assert s.pooled and s.conn.exchange is None


@BYTEWISE
def test_trailers_do_not_become_fields_of_the_next_response(bytewise):
    s = Setup()
    s.client(GET)
    feed(s.conn, CHUNKED + b"2\r\nok\r\n0\r\nSet-Cookie: a=1\r\n\r\n", bytewise)
    assert s.pooled
    second = s.client(GET)
    assert s.conn.exchange is not None, "the pooled connection was not reused"
    feed(s.conn, OK, bytewise)
    _, fields, body = head_of(second.written)
    assert body == b"ok"
    assert all(name.lower() != b"set-cookie" for name, _ in fields), fields


@BYTEWISE
def test_a_head_answer_resets_the_parser_for_the_next_response(bytewise):
    s = Setup()
    s.client(HEAD)
    feed(s.conn, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", bytewise)
    second = s.client(GET)
    feed(s.conn, OK, bytewise)
    assert head_of(second.written)[2] == b"ok"
    assert s.pooled


@BYTEWISE
def test_close_delimited_body_ends_at_eof_and_is_not_pooled(bytewise):
    s = Setup()
    client = s.client(GET)
    feed(s.conn, b"HTTP/1.1 200 OK\r\n\r\nall of it", bytewise)
    assert s.conn.exchange is not None
    s.conn.eof_received()
    # Re-framed as chunked for the client, ending with the last chunk.
    assert head_of(client.written)[2] == b"all of it"
    assert not s.pooled


# -- limits on what an upstream sends ---------------------------------------------

def _headers(n: int, size: int = 8) -> bytes:
    return b"".join(b"X-F%03d: %b\r\n" % (i, b"v" * size) for i in range(n))


HEAD_OVER = {
    "status-line": b"HTTP/1.1 200 " + b"O" * 256 + b"\r\nContent-Length: 2\r\n\r\nok",
    "too-many-fields": b"HTTP/1.1 200 OK\r\n" + _headers(11) + b"\r\n",
    "field-bytes": b"HTTP/1.1 200 OK\r\n" + _headers(5, 220) + b"\r\n",
    "endless-field-line": b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * (HEAD_BUDGET + 10),
    "endless-field-name": b"HTTP/1.1 200 OK\r\n" + b"X" * (HEAD_BUDGET + 10),
    "1xx-storm": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 100,
}


@BYTEWISE
@pytest.mark.parametrize("case", HEAD_OVER)
def test_a_head_over_a_limit_gets_the_not_answering_page(case, bytewise):
    s = Setup()
    client = s.client(POST)
    feed(s.conn, HEAD_OVER[case], bytewise)
    assert s.upstream.aborted and not s.pooled
    written = bytes(client.written)
    status, fields, _ = head_of(written)
    assert status == 503
    assert any(name == b"Retry-After" for name, _ in fields)
    assert b"X-F" not in written and b"X-Endless" not in written


def test_exactly_at_the_limits_is_relayed():
    s = Setup()
    client = s.client(GET)
    answer = (b"HTTP/1.1 200 " + b"O" * (256 - 13) + b"\r\nContent-Length: 2\r\n"
              + _headers(9) + b"\r\nok")
    feed(s.conn, answer, False)
    status, fields, body = head_of(client.written)
    assert (status, body) == (200, b"ok")
    assert len([n for n, _ in fields if n.startswith(b"X-F")]) == 9
    assert s.pooled


BODY_OVER = {
    "chunk-extension": CHUNKED + b"2;" + b"e" * 200 + b"\r\nok\r\n0\r\n\r\n",
    "endless-chunk-extension": CHUNKED + b"2\r\nok\r\n2;" + b"e" * 10_000,
    "trailer-line": CHUNKED + b"0\r\nX-T: " + b"t" * 200 + b"\r\n\r\n",
    "too-many-trailers": CHUNKED + b"0\r\n" + b"X-T: 1\r\n" * 11 + b"\r\n",
    # Few fields, each line within max_chunk_ext, but max_header_bytes in all.
    "trailer-bytes": CHUNKED + b"0\r\n" + (b"X-U: " + b"u" * 150 + b"\r\n") * 9 + b"\r\n",
}


@BYTEWISE
@pytest.mark.parametrize("case", BODY_OVER)
def test_body_framing_over_a_limit_cuts_the_client(case, bytewise):
    s = Setup()
    client = s.client(POST)
    feed(s.conn, BODY_OVER[case], bytewise)
    assert s.upstream.aborted and not s.pooled
    if bytewise:
        # The head went out with an earlier read: an incomplete response
        # is the only signal left.
        assert client.aborted
        assert not bytes(client.written).endswith(b"0\r\n\r\n")
    else:
        # Head and bad body in one read: nothing left the gateway, so the
        # client gets the not-answering page instead (adversarial review).
        assert not client.aborted
        assert head_of(client.written)[0] == 503


def test_an_endless_head_is_cut_within_the_budget():
    # Each read is consumed, counted and refused once past the budget: the
    # connection is dropped after the read that crosses it, not later.
    s = Setup()
    s.client(POST)
    reads = 0
    s.conn.data_received(b"HTTP/1.1 200 OK\r\nX-Endless: ")
    while not s.upstream.aborted:
        reads += 1
        assert reads <= HEAD_BUDGET // 100 + 2
        s.conn.data_received(b"a" * 100)


# -- the pool's keep-alive bookkeeping (injected clock) ----------------------------------

def server(idle_timeout: float = 30.0, keepalive: int = 8) -> UpstreamServer:
    return UpstreamServer("127.0.0.1", 9, keepalive=keepalive, connect_timeout=1.0,
                          idle_timeout=idle_timeout, max_buffer=65536, max_status_line=8192,
                          max_header_bytes=32768, max_headers=100, max_chunk_ext=4096)


def test_before_anything_is_known_only_brief_idleness_is_trusted():
    assert server().reuse_limit() == UNPROVEN_IDLE


@pytest.mark.parametrize(("value", "limit"), [
    (b"max=3, Timeout = 2", 2 - REUSE_MARGIN),
    (b"timeout=5, max=100", 5 * (1 - REUSE_MARGIN_SHARE)),  # the margin grows with it
    (b'timeout="10"', 10 * (1 - REUSE_MARGIN_SHARE)),
    (b"timeout=75", 75 * (1 - REUSE_MARGIN_SHARE)),
    (b"timeout=0", -REUSE_MARGIN),       # no reuse at all
])
def test_keep_alive_header_sets_the_limit(value, limit):
    s = server(idle_timeout=300.0)
    s.learn_keep_alive(value)
    assert s.reuse_limit() == pytest.approx(limit)


def test_the_limit_never_exceeds_upstream_idle():
    s = server(idle_timeout=30.0)
    s.learn_keep_alive(b"timeout=100")
    s.observe_open(200.0)
    assert s.reuse_limit() == 30.0


@pytest.mark.parametrize("value", [b"max=5", b"timeout=", b"timeout=abc", b"timeout=-1",
                                   b"timeout=1e9", b"", b"timeout=99999999999"])
def test_keep_alive_header_without_a_usable_timeout_is_ignored(value):
    s = server()
    s.learn_keep_alive(value)
    assert s.reuse_limit() == UNPROVEN_IDLE


def test_connections_seen_open_longer_raise_the_limit():
    s = server()
    s.observe_open(2.0)
    assert s.reuse_limit() == pytest.approx(2.0 - REUSE_MARGIN)


def test_an_idle_close_sets_the_limit_below_it():
    s = server()
    s.observe_open(0.9)
    s.observe_closed(1.0)
    assert s.reuse_limit() == pytest.approx(1.0 - REUSE_MARGIN)
    s.observe_closed(1.02)  # later closes at about the same time change nothing
    assert s.reuse_limit() == pytest.approx(1.0 - REUSE_MARGIN)


def test_an_advertised_timeout_and_observed_closes_take_the_lower():
    s = server()
    s.learn_keep_alive(b"timeout=5")
    s.observe_closed(2.0)
    assert s.reuse_limit() == pytest.approx(2.0 - REUSE_MARGIN)


def test_a_restart_is_forgotten_once_connections_outlive_it():
    s = server()
    s.observe_open(4.0)
    s.observe_closed(0.1)  # every connection closed at once, young or old
    assert s.reuse_limit() < 0
    s.observe_open(0.6)    # a new connection lives longer than that
    assert s.reuse_limit() == pytest.approx(max(UNPROVEN_IDLE, 0.6 - REUSE_MARGIN))


def test_take_idle_reuses_the_newest_within_the_limit_and_keeps_older_ones():
    s = server()
    s.observe_closed(1.0)  # limit 0.75
    old, old_t = pooled(s, 0.0)
    new, _ = pooled(s, 0.5)
    assert s.take_idle(1.0) is new        # idle 0.5
    assert s.take_idle(1.0) is None       # the other one is idle 1.0
    assert list(s.idle) == [old] and not old_t.closed
    # The upstream closing it later only confirms what is known.
    old.connection_lost(None)
    assert s.closed_idle == pytest.approx(1.0)
    assert not s.idle


def test_an_upstream_close_while_idle_is_learned():
    s = server()
    conn, _ = pooled(s, time.monotonic() - 3.0)
    conn.connection_lost(None)  # the upstream closed it after ~3 s idle
    assert s.closed_idle == pytest.approx(3.0, abs=0.5)
    assert not s.idle and conn not in s.total


def test_a_close_by_the_gateway_is_not_learned():
    s = server()
    conn, _ = pooled(s, time.monotonic() - 3.0)
    conn.close()
    conn.connection_lost(None)
    assert s.closed_idle < 0


def test_reap_closes_past_upstream_idle_and_observes_the_oldest_left():
    s = server(idle_timeout=10.0)
    _, stale_t = pooled(s, 0.0)
    kept, kept_t = pooled(s, 6.0)
    s.reap_idle(12.0)
    assert stale_t.closed and not kept_t.closed
    assert list(s.idle) == [kept]
    assert s.open_idle == pytest.approx(6.0)


def test_a_full_pool_lets_the_oldest_go():
    s = server(keepalive=2)
    _, a_t = pooled(s, 0.0)
    b, _ = pooled(s, 1.0)
    c, _ = pooled(s, 2.0)
    assert a_t.closed
    assert list(s.idle) == [b, c]


@pytest.mark.parametrize("later", [None, b"max=5", b"timeout=99999999999999999999999",
                                   b"timeout=nan"])
def test_a_keep_alive_value_lasts_only_until_the_next_response(later):
    # Found by the adversarial review: one "timeout=0" switched pooling off
    # for good. The latest response speaks for the upstream now.
    s = server(idle_timeout=300.0)
    s.learn_keep_alive(b"timeout=0")
    assert s.reuse_limit() < 0
    s.learn_keep_alive(later)
    assert s.reuse_limit() == UNPROVEN_IDLE
    s.learn_keep_alive(b"timeout=5")
    assert s.reuse_limit() == pytest.approx(5 * (1 - REUSE_MARGIN_SHARE))


# -- the HTTP version of each head ------------------------------------------------
# The version is read from the head's own bytes where they are at hand (the
# first bytes of the exchange's first status line, the end of a request
# line) and from the parser otherwise: a final head after a 1xx, a request
# line split across reads. Every way must give the version llhttp read.

VERSIONS = {
    # (response, pooled afterwards): an HTTP/1.0 answer without keep-alive
    # ends its connection; an HTTP/1.1 one keeps it.
    "1.1": (OK, True),
    "1.0": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    "1.0-keep-alive": (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                       True),
    "1.1-after-1.1-103": (b"HTTP/1.1 103 Early Hints\r\n\r\n" + OK, True),
    "1.0-after-1.1-103": (b"HTTP/1.1 103 Early Hints\r\n\r\n"
                          b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    "after-empty-lines": (b"\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
}


@pytest.mark.parametrize("case", VERSIONS)
@pytest.mark.parametrize("split", [None, 1, 4, 7, 8, 9, 12])
def test_upstream_head_version_decides_reuse(case, split):
    answer, reused = VERSIONS[case]
    s = Setup()
    client = s.client(GET)
    if split is None:
        feed(s.conn, answer, bytewise=False)
    else:
        feed(s.conn, answer[:split], bytewise=False)
        feed(s.conn, answer[split:], bytewise=False)
    status, _, body = head_of(client.written)
    assert (status, body) == (200, b"ok")
    assert s.pooled is reused


def test_upstream_unsupported_version_is_refused_however_it_arrives():
    """HTTP/1.2 is no response the gateway reads: the request is answered
    with the unavailable page (503), the connection not reused."""
    for split in (None, 3, 8):
        s = Setup()
        client = s.client(POST)  # (a GET would be retried on a new connection)
        answer = b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok"
        if split is None:
            feed(s.conn, answer, bytewise=False)
        else:
            feed(s.conn, answer[:split], bytewise=False)
            feed(s.conn, answer[split:], bytewise=False)
        assert head_of(client.written)[0] == 503, split
        assert not s.pooled


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
@pytest.mark.parametrize("split", [None, 0, 5, 8, 12, 14, 15, 16, 17, 19])
def test_request_line_version_however_it_arrives(version, split):
    """Each cut of the request line (through the version, before and after
    its CR and LF) gives the version llhttp read: HTTP/1.0 without
    keep-alive is answered and closed, HTTP/1.1 stays open."""
    s = Setup()
    request = b"GET /page HTTP/" + version + b"\r\nHost: school.test\r\n\r\n"
    proto = ClientProtocol(s.app)
    client = MockTransport()
    proto.connection_made(client)  # type: ignore[arg-type]
    if split is None:
        proto.data_received(request)
    else:
        proto.data_received(request[:split])
        proto.data_received(request[split:])
    assert s.conn.exchange is not None
    sent = bytes(s.upstream.written)
    assert sent.startswith(b"GET /page HTTP/1.1\r\n"), sent
    feed(s.conn, OK, bytewise=False)
    status, fields, body = head_of(client.written)
    assert (status, body) == (200, b"ok")
    if version == b"1.0":
        assert (b"Connection", b"close") in fields
        assert client.closed
    else:
        assert (b"Connection", b"close") not in fields
        assert not client.closed
