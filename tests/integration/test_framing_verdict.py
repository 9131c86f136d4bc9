"""One verdict on where a request ends (issue 7 point A).

The gateway's own framing (Content-Length, or its strict chunked reader)
decides where each request body ends, and llhttp must agree; whatever the
two could read differently is refused with 400 and a closed connection.
Each case checks what the client is told, what the upstream received (the
recorder parses every byte the gateway sends it), and that the worker still
serves the next request promptly: a spinning or desynchronised worker fails
the follow-up.
"""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.clients import RawConn, wait_until
from tests.support.procs import Gateway, gateway_config
from tests.support.recorder import (
    Recorder,
    expect_400,
    expect_clean_follow_up,
    head,
    log_tail,
)


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    with Recorder.running() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, recorder: Recorder) -> Iterator[Gateway]:
    gw = Gateway(gateway_config([recorder.addr]), tmp_path_factory.mktemp("verdict"),
                 name="gateway").start()
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def fresh_record(recorder: Recorder) -> Iterator[None]:
    recorder.clear()
    yield
    assert not recorder.parse_errors, f"upstream could not parse: {recorder.parse_errors}"


def cpu_seconds(gw: Gateway) -> float:
    """User + system CPU time of the gateway's process tree, in seconds."""
    total = 0
    for pid in gw.pids():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def send_in_two_writes(gw: Gateway, first: bytes, second: bytes) -> RawConn:
    conn = RawConn(gw.port)
    conn.send(first)
    time.sleep(0.1)  # a separate read on the gateway's side
    try:
        conn.send(second)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return conn


# -- the example: a chunk size of 23 digits ----------------------------

def test_overlong_chunk_size_is_refused_and_the_worker_stays_idle(gateway, recorder):
    # llhttp reads "00000000000000000000010" as 16 and the old chunk limiter
    # gave up on it; the two then disagreed on where the body ended, and the
    # worker spun feeding the upstream endless last-chunks.
    cpu_before = cpu_seconds(gateway)
    first = head("POST /up HTTP/1.1", "Transfer-Encoding: chunked") + b"00000000000000000000010\r\n"
    with send_in_two_writes(gateway, first, b"0\r\n\r\nAAAAAAAAAAA\r\n0\r\n\r\n") as conn:
        resp = conn.recv_response("POST")
        assert resp.status == 400, f"{resp}\n{log_tail(gateway)}"
        assert b"chunk size" in resp.body
        assert conn.closed()
    expect_clean_follow_up(gateway, recorder)
    time.sleep(0.5)
    # An idle worker uses next to no CPU; a spinning one a whole core.
    cpu_used = cpu_seconds(gateway) - cpu_before
    assert cpu_used < 0.4, f"workers used {cpu_used:.2f} s of CPU after the attack"
    assert not any(s.complete and s.target == "/up" for s in recorder.snapshot())


@pytest.mark.parametrize(("name", "body", "words"), [
    ("17-digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n", ("chunk size",)),
    ("space-after-size", b"5 \r\nhello\r\n0\r\n\r\n", ("chunk size",)),
    ("cr-cr-lf", b"5\r\r\nhello\r\n0\r\n\r\n", ("lf", "cr")),
    ("bare-lf-after-data", b"5\r\nhello\n0\r\n\r\n", ("crlf",)),
    ("no-crlf-after-data", b"5\r\nhelloXX0\r\n\r\n", ("crlf",)),
    ("bare-lf-trailer", b"0\r\nX: y\n\r\n", ("lf", "cr")),
    ("folded-trailer", b"0\r\nX: y\r\n z\r\n\r\n", ("trailer",)),
    ("trailer-without-colon", b"0\r\nnonsense\r\n\r\n", ("trailer",)),
    ("huge-trailer", b"0\r\n" + b"X: y\r\n" * 8000 + b"\r\n", ("trailer",)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_chunked_framing_read_two_ways_is_refused(gateway, recorder, name, body, words):
    payload = head("POST /chunks HTTP/1.1", "Transfer-Encoding: chunked") + body
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: school.test\r\n\r\n"
    expect_400(gateway, payload + smuggled, words)
    assert not any(s.complete for s in recorder.snapshot())
    expect_clean_follow_up(gateway, recorder)


def test_sixteen_digit_chunk_size_and_trailers_are_forwarded(gateway, recorder):
    # The longest size the verdict reads, leading zeros and all, and a
    # trailer section: read the same way by both, so forwarded, and the
    # pipelined request behind it is a request of its own.
    body = b"0000000000000005;a=b\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n"
    payload = (head("POST /sixteen HTTP/1.1", "Transfer-Encoding: chunked") + body
               + head("GET /behind HTTP/1.1"))
    with RawConn(gateway.port) as conn:
        conn.send(payload)
        first = conn.recv_response("POST")
        second = conn.recv_response()
    assert (first.status, second.status) == (200, 200)
    seen = recorder.snapshot()
    assert [(s.target, s.body, s.complete) for s in seen] == [
        ("/sixteen", b"hello", True), ("/behind", b"", True)]


def test_chunked_body_byte_by_byte(gateway, recorder):
    payload = (head("POST /bytewise HTTP/1.1", "Transfer-Encoding: chunked")
               + b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n" + head("GET /next HTTP/1.1"))
    with RawConn(gateway.port) as conn:
        for i in range(len(payload)):
            conn.send(payload[i:i + 1])
        assert conn.recv_response("POST").status == 200
        assert conn.recv_response().status == 200
    assert [(s.target, s.body) for s in recorder.snapshot()] == [
        ("/bytewise", b"abcde"), ("/next", b"")]


# -- CONNECT and upgrades: llhttp hands what follows the head to a tunnel -------

def test_connect_with_content_length_is_refused(gateway, recorder):
    # The old path: the parser treated CONNECT as bodiless, the gateway
    # forwarded its Content-Length, and the pooled upstream connection ate
    # the next client's request as the CONNECT body.
    hidden = b"GET /admin HTTP/1.1\r\nHost: beta.test\r\n\r\n"
    payload = (b"CONNECT school.test:443 HTTP/1.1\r\nHost: school.test:443\r\n"
               b"Content-Length: %d\r\n\r\n" % len(hidden))
    expect_400(gateway, payload, ("connect",))
    # The next client's request carries the hidden one in its body; the
    # upstream must see exactly that request and its body.
    post = head("POST /next HTTP/1.1", f"Content-Length: {len(hidden)}") + hidden
    with RawConn(gateway.port) as conn:
        conn.send(post)
        assert conn.recv_response("POST").status == 200
    assert [(s.method, s.target, s.body) for s in recorder.snapshot()] == [
        ("POST", "/next", hidden)]


def test_connect_is_refused_unless_the_school_enables_it(gateway, recorder):
    with RawConn(gateway.port) as conn:
        conn.send(b"CONNECT school.test:443 HTTP/1.1\r\nHost: school.test:443\r\n\r\n"
                  b"\x16\x03\x01tls-bytes")
        resp = conn.recv_response("CONNECT")
        assert resp.status == 501, f"{resp}\n{log_tail(gateway)}"
        assert b"CONNECT" in resp.body
        assert conn.closed()
    assert recorder.snapshot() == []
    expect_clean_follow_up(gateway, recorder)


@pytest.mark.parametrize("upgrade", ["websocket", "h2c"])
@pytest.mark.parametrize("framing", ["Content-Length: 44", "Transfer-Encoding: chunked"])
def test_body_on_an_upgrade_request_is_refused(gateway, recorder, upgrade, framing):
    hidden = b"GET /smuggled HTTP/1.1\r\nHost: school.test\r\n\r\n"
    body = hidden if framing.startswith("Content") else b"2c\r\n" + hidden + b"\r\n0\r\n\r\n"
    payload = head("POST /upgrade HTTP/1.1", framing, f"Upgrade: {upgrade}",
                   "Connection: Upgrade") + body
    expect_400(gateway, payload, ("upgrade",))
    assert recorder.snapshot() == []
    expect_clean_follow_up(gateway, recorder)


def test_upstream_never_sees_an_endless_run_of_last_chunks(gateway, recorder):
    # A body split into many reads, each ending right after a chunk's data:
    # no empty piece may ever be framed as "0\r\n\r\n" on the way up.
    first = head("POST /pieces HTTP/1.1", "Transfer-Encoding: chunked")
    pieces = [b"3\r\nabc\r\n", b"3\r\ndef", b"\r\n", b"0\r\n", b"\r\n"]
    with RawConn(gateway.port) as conn:
        conn.send(first)
        for piece in pieces:
            time.sleep(0.02)
            conn.send(piece)
        assert conn.recv_response("POST").status == 200
    assert wait_until(lambda: recorder.targets() == ["/pieces"])
    [seen] = recorder.snapshot()
    assert seen.body == b"abcdef"


# -- CONNECT where a school enables it --------------------------------------------

class _ConnectUpstream(socketserver.ThreadingTCPServer):
    """Answers CONNECT to port 443 with 200 and then echoes the tunnel's bytes
    upper-cased; any other CONNECT gets 403 with a small body."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ConnectHandler)
        self.heads: list[bytes] = []

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _ConnectHandler(socketserver.BaseRequestHandler):
    server: _ConnectUpstream

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(4096)
            if not more:
                return
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        self.server.heads.append(head)
        if not head.startswith(b"CONNECT school.test:443 "):
            sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n")
            return
        sock.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n" + rest.upper())
        try:
            while more := sock.recv(4096):
                sock.sendall(more.upper())
        except OSError:
            pass


@pytest.fixture(scope="module")
def connect_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    upstream = _ConnectUpstream()
    thread = threading.Thread(target=upstream.serve_forever, name="connect-up", daemon=True)
    thread.start()
    gw = Gateway(gateway_config([upstream.addr], school={"allow_connect": True}),
                 tmp_path_factory.mktemp("connect"), name="gateway").start()
    yield gw, upstream
    gw.stop()
    upstream.shutdown()
    upstream.server_close()
    thread.join()


def test_enabled_connect_becomes_a_tunnel(connect_gateway):
    gw, upstream = connect_gateway
    with RawConn(gw.port) as conn:
        conn.send(b"CONNECT school.test:443 HTTP/1.1\r\nHost: school.test:443\r\n\r\nhello ")
        # A 2xx to CONNECT has no body: read its head only ("HEAD" framing).
        resp = conn.recv_response("HEAD")
        assert resp.status == 200, f"{resp}\n{log_tail(gw)}"
        assert resp.header("Content-Length") is None
        assert resp.header("Transfer-Encoding") is None
        conn.send(b"tunnel")
        got = b""
        for _ in range(50):
            got += conn.recv_available(0.1)
            if got == b"HELLO TUNNEL":
                break
        assert got == b"HELLO TUNNEL"
    assert upstream.heads[-1].startswith(b"CONNECT school.test:443 HTTP/1.1\r\n")


def test_refused_connect_ends_the_connection(connect_gateway):
    gw, upstream = connect_gateway
    with RawConn(gw.port) as conn:
        conn.send(b"CONNECT school.test:25 HTTP/1.1\r\nHost: school.test:25\r\n\r\n")
        resp = conn.recv_response("CONNECT")
        assert resp.status == 403 and resp.body == b"no\n"
        assert conn.closed()
    assert upstream.heads[-1].startswith(b"CONNECT school.test:25 HTTP/1.1\r\n")


# -- found by the fuzzer (tests/fuzz): the verdict is what goes upstream ---------

@pytest.mark.parametrize("spelled", ["0000000000000000000005", " 5", "05"])
def test_content_length_goes_upstream_as_the_gateway_read_it(gateway, recorder, spelled):
    payload = (b"POST /cl HTTP/1.1\r\nHost: school.test\r\nContent-Length: "
               + spelled.encode() + b"\r\n\r\nhello")
    with RawConn(gateway.port) as conn:
        conn.send(payload)
        assert conn.recv_response("POST").status == 200
    [seen] = recorder.snapshot()
    assert seen.body == b"hello"
    assert [v for k, v in seen.headers if k.lower() == "content-length"] == ["5"]


@pytest.mark.parametrize("lead", [b"\r", b"\n", b"\r\r\n", b"\n\r\n"],
                         ids=["cr", "lf", "cr-crlf", "lf-crlf"])
def test_bare_cr_or_lf_before_the_request_line_is_refused(gateway, recorder, lead):
    expect_400(gateway, lead + head("GET /lead HTTP/1.1"), ("bare cr or lf",))
    assert recorder.snapshot() == []


def test_empty_lines_before_a_request_line_are_skipped(gateway, recorder):
    # RFC 9112 2.2: CRLFs before a request line may be ignored, also when a
    # CRLF is split across reads.
    with RawConn(gateway.port) as conn:
        conn.send(b"\r\n\r")
        time.sleep(0.05)
        conn.send(b"\n" + head("GET /after-empty-lines HTTP/1.1"))
        assert conn.recv_response().status == 200
    assert recorder.targets() == ["/after-empty-lines"]
