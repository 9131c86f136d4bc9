"""WebSocket upgrades tunnelled through the gateway, driven by the `websockets`
client library (and by raw bytes where the handshake itself is the subject)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import struct
import threading
from contextlib import ExitStack, contextmanager

from websockets.sync.client import connect

from tests.support.clients import HOST, RawConn, build_request, wait_until


@contextmanager
def websocket(port: int, path: str = "/ws"):
    """A websockets client whose Host is the test school, connected to port."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with connect(f"ws://{HOST}:{port}{path}", sock=sock, open_timeout=5,
                 close_timeout=5, max_size=None) as ws:
        yield ws


def upgrade_request(path: str = "/ws") -> tuple[bytes, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    return build_request("GET", path, [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                                       ("Sec-WebSocket-Key", key),
                                       ("Sec-WebSocket-Version", "13")]), key


def masked_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack(">BB", first, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack(">BBQ", first, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_websocket_echoes_text_and_binary(gateway, upstream):
    with websocket(gateway.port) as ws:
        ws.send("hello, school")
        assert ws.recv(timeout=5) == "hello, school"
        ws.send(b"\x00\x01\xff binary")
        assert ws.recv(timeout=5) == b"\x00\x01\xff binary"
        ws.send("ünïcödé ✓")
        assert ws.recv(timeout=5) == "ünïcödé ✓"
    assert upstream.requests("/ws") == 1


def test_websocket_large_and_fragmented_messages(gateway):
    big = os.urandom(3 * 1024 * 1024)
    with websocket(gateway.port) as ws:
        ws.send(big)
        assert ws.recv(timeout=10) == big
        ws.send(["frag", "mented", " text"])
        assert ws.recv(timeout=5) == "fragmented text"


def test_websocket_ping_is_answered_through_the_tunnel(gateway):
    with websocket(gateway.port) as ws:
        pong = ws.ping(b"are you there")
        assert pong.wait(timeout=5)


def test_many_messages_keep_their_order(gateway):
    with websocket(gateway.port) as ws:
        def sender() -> None:
            for i in range(500):
                ws.send(f"message {i}")

        thread = threading.Thread(target=sender)
        thread.start()
        got = [ws.recv(timeout=5) for _ in range(500)]
        thread.join()
    assert got == [f"message {i}" for i in range(500)]


def test_concurrent_websockets_are_independent(gateway, upstream):
    with ExitStack() as stack:
        sockets = [stack.enter_context(websocket(gateway.port)) for _ in range(5)]
        for i, ws in enumerate(sockets):
            ws.send(f"to socket {i}")
        for i, ws in enumerate(sockets):
            assert ws.recv(timeout=5) == f"to socket {i}"
    assert upstream.requests("/ws") == 5


def test_raw_handshake_and_bytes_sent_right_after_it(gateway):
    """Frames the client sends together with its handshake are not lost."""
    head, _key = upgrade_request()
    with RawConn(gateway.port) as conn:
        conn.send(head + masked_frame(0x1, b"eager"))
        resp = conn.recv_response()
        assert resp.status == 101
        assert resp.has_token("Connection", "upgrade")
        assert (resp.header("Upgrade") or "").lower() == "websocket"
        assert conn.recv_exact(7) == b"\x81\x05eager"
        conn.send(masked_frame(0x2, b"\x01\x02", fin=True))
        assert conn.recv_exact(4) == b"\x82\x02\x01\x02"


def test_closing_handshake_closes_client_connection(gateway, upstream):
    head, _key = upgrade_request()
    with RawConn(gateway.port) as conn:
        conn.send(head)
        assert conn.recv_response().status == 101
        conn.send(masked_frame(0x8, struct.pack(">H", 1000)))
        assert conn.recv_exact(4) == b"\x88\x02\x03\xe8"
        assert conn.closed(timeout=5)
    # The upstream side of the tunnel is gone too, not left pooled or open.
    assert wait_until(lambda: upstream.stats()["open_connections"] == 0)


def test_upgrade_refused_by_upstream_is_an_ordinary_response(gateway):
    # /echo does not upgrade: the upstream answers 200 and no tunnel opens.
    head, _key = upgrade_request("/echo")
    with RawConn(gateway.port) as conn:
        conn.send(head)
        resp = conn.recv_response()
        assert resp.status == 200
        assert resp.json()["target"] == "/echo"
        # The gateway may end the connection here (what the client sent next
        # could belong to the protocol it asked for) but must then say so.
        if resp.has_token("Connection", "close"):
            assert conn.closed()
        else:
            conn.send(build_request(target="/echo?after"))
            assert conn.recv_response().json()["target"] == "/echo?after"


def test_finished_tunnel_does_not_hold_up_shutdown(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream], timeouts={"drain": 20.0})
    with websocket(gw.port) as ws:
        ws.send("bye")
        assert ws.recv(timeout=5) == "bye"
    assert wait_until(lambda: upstream.stats()["open_connections"] == 0)
    gw.signal(signal.SIGTERM)
    # Nothing is in flight any more, so there is nothing to drain for 20 s.
    assert gw.wait(timeout=5) == 0


def test_upstream_rejecting_websocket_is_relayed(gateway):
    # A GET /ws without an upgrade gets the upstream's 426 as an ordinary answer.
    with RawConn(gateway.port) as conn:
        conn.send(build_request(target="/ws"))
        resp = conn.recv_response()
        assert resp.status == 426
        conn.send(build_request(target="/echo"))
        assert conn.recv_response().status == 200
