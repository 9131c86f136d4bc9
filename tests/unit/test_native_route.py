"""Per-request routing without a Python frame (native/context.pyx,
Context.route), and the rare requests App.route still takes.

A real App and real ClientProtocols over mock transports, inside an asyncio
loop, with App.route wrapped in a counter and a recording Exchange subclass
(as in test_admission_shell.py: admitted() notes the exchange instead of
picking an upstream, and the test finishes it with a canned response, which
gives its slot back). What is checked is behaviour: which requests App.route
saw, what each client was answered, which school and class each exchange
got, the /metrics counters, and which Python functions of the gateway ran
while ordinary keep-alive requests were served (none may).
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import gateway
from gateway.config import parse_config
from gateway.proxy.app import App
from gateway.proxy.client import ClientProtocol
from gateway.proxy.exchange import ADMITTING, CONNECTING, Exchange
from tests.support.transport import MockTransport

SECRET = "unit-test-secret-0123456789"

CONFIG = """
[server]
listen = "127.0.0.1:1"
{server}

[admission]
secret = "{secret}"

[[classes]]
name = "bulk"
priority = 0
match = {{paths = ["/import"]}}

[[classes]]
name = "pages"
priority = 10
match = {{paths = ["/page"]}}

[[schools]]
name = "north"
hosts = ["north.test"]
upstreams = ["127.0.0.1:9"]
max_inflight = 4
{school}

[[schools]]
name = "south"
hosts = ["south.test", "*.south.test"]
upstreams = ["127.0.0.1:9"]
max_inflight = 4
"""

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
GATEWAY_DIR = str(Path(gateway.__file__).parent)


def req(target: str, host: str = "north.test", method: str = "GET", *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def statuses(transport: MockTransport) -> list[int]:
    """The status code of every response written, in order."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", bytes(transport.written))]


class Harness:
    """An App whose route() calls are counted and whose admitted exchanges
    are recorded."""

    def __init__(self, server: str = "", school: str = "") -> None:
        self.text = CONFIG.format(secret=SECRET, server=server, school=school)
        self.app = App(parse_config(self.text.encode(), "test.toml"))
        self.routed: list[tuple[App, bytes]] = []  # (App, target) per App.route call
        self.connected: list[Exchange] = []

    def client(self, peer: str = "198.51.100.7") -> tuple[ClientProtocol, MockTransport]:
        proto = ClientProtocol(self.app)
        transport = MockTransport(peer)
        proto.connection_made(transport)  # type: ignore[arg-type]
        return proto, transport

    def send(self, proto: ClientProtocol, raw: bytes) -> Exchange | None:
        """Send one request head; its exchange (the last one queued), None
        if it is already done (a response the gateway made)."""
        proto.data_received(raw)
        return proto.queue[-1] if proto.queue else None

    def finish(self, ex: Exchange) -> None:
        """The upstream answered and the response ended."""
        ex.rejected(OK)

    def reload(self) -> App:
        old = self.app
        new = App(parse_config(self.text.encode(), "test.toml"), servers=old.servers,
                  admission=old.admission)
        new.take_over([old])
        self.app = new
        return new


@pytest.fixture
def run(monkeypatch) -> Iterator[Callable[..., Any]]:
    """run(body, server=..., school=...): body(harness) inside an event loop."""

    def execute(body: Callable[[Harness], Any], server: str = "", school: str = "") -> Any:
        async def main() -> Any:
            h = Harness(server, school)

            class Recorded(Exchange):
                def admitted(self) -> None:
                    if self.state == ADMITTING:
                        self.state = CONNECTING
                        h.connected.append(self)

            route = App.route

            def counted(app: App, client: ClientProtocol, head: Any) -> Exchange:
                h.routed.append((app, head.target))
                return route(app, client, head)

            monkeypatch.setattr("gateway.proxy.app.Exchange", Recorded)
            monkeypatch.setattr(App, "route", counted)
            try:
                return body(h)
            finally:
                h.app.admission.close()
        return asyncio.run(main())

    yield execute


def gateway_frames(action: Callable[[], None]) -> list[str]:
    """The gateway's Python functions (by file:name) that run during
    `action`. Cython code makes no Python frame, so only the interpreted
    parts of the gateway show up here."""
    seen: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(GATEWAY_DIR):
            seen.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return seen


# -- ordinary requests --------------------------------------------------------------


@pytest.mark.parametrize("limits", [
    "",
    # Token buckets for the school and each client: the scheduler then
    # always has a deadline pending (the client buckets' sweep), so the
    # shell's poll timer stays armed while requests are released.
    "rate = 100000.0\nburst = 100000\nclient_rate = 100000.0\nclient_burst = 100000",
])
def test_keep_alive_requests_after_the_first_run_no_python_of_the_gateway(run, limits):
    n = 40

    def body(h: Harness) -> None:
        proto, transport = h.client()
        first = h.send(proto, req("/page/0"))
        h.finish(first)

        def serve_the_rest() -> None:
            for i in range(1, n):
                ex = h.send(proto, req(f"/page/{i}"))
                assert h.connected[-1] is ex  # admitted at once
                h.finish(ex)

        # Routing, classification, the exchange, admission and its release:
        # all native for these (the recording Exchange's admitted() is the
        # test's own, outside the gateway).
        assert gateway_frames(serve_the_rest) == []
        # Only the connection's first request went through App.route.
        assert [target for _, target in h.routed] == [b"/page/0"]
        assert [ex.head.target for ex in h.connected] == [f"/page/{i}".encode()
                                                          for i in range(n)]
        assert statuses(transport) == [200] * n
        assert not transport.done
        assert h.app.metrics.requests_total == n
        assert [s.requests for s in h.app.schools] == [n, 0]
        assert h.app.admission.controller.stats(0)["inflight"] == 0
    run(body, school=limits)


def test_natively_routed_requests_get_the_school_and_class_app_route_would(run):
    def body(h: Harness) -> None:
        proto, transport = h.client()
        h.finish(h.send(proto, req("/page/first", host="south.test")))
        cases = [
            ("/import/x", "north.test", "north", "bulk"),
            ("/page/y", "a.south.test", "south", "pages"),
            # No class matches: judged as the least urgent class.
            ("/other", "SOUTH.test.", "south", "bulk"),
            ("/page/z", "north.test:8080", "north", "pages"),
        ]
        for target, host, school, klass in cases:
            ex = h.send(proto, req(target, host=host))
            assert (ex.school.name, h.app.classes[ex.klass].name) == (school, klass)
            h.finish(ex)
        assert len(h.routed) == 1
        assert statuses(transport) == [200] * 5
        assert h.app.metrics.requests_total == 5
        assert [s.requests for s in h.app.schools] == [2, 3]
    run(body)


def test_pipelined_requests_are_routed_natively_in_order(run):
    def body(h: Harness) -> None:
        proto, transport = h.client()
        h.finish(h.send(proto, req("/page/0")))
        proto.data_received(b"".join(req(f"/page/{i}") for i in range(1, 4)))
        for _ in range(3):
            h.finish(h.connected[-1])
        assert [ex.head.target for ex in h.connected] == [b"/page/0", b"/page/1",
                                                          b"/page/2", b"/page/3"]
        assert len(h.routed) == 1
        assert statuses(transport) == [200] * 4
    run(body)


# -- the rare requests App.route still takes ------------------------------------------


def test_rare_requests_on_a_counted_connection_go_through_app_route(run):
    def body(h: Harness) -> None:
        proto, transport = h.client()
        h.finish(h.send(proto, req("/page/0")))
        h.finish(h.send(proto, req("/page/1")))  # native
        # Answered by the gateway, never admitted to the upstream.
        assert h.send(proto, req("/.schoolgate/status")) is None
        assert h.send(proto, req("north.test:443", method="CONNECT")) is None
        assert [ex.head.target for ex in h.connected] == [b"/page/0", b"/page/1"]
        assert [target for _, target in h.routed] == [
            b"/page/0", b"/.schoolgate/status", b"north.test:443"]
        assert statuses(transport) == [200, 200, 200, 501]
        assert transport.done  # CONNECT refused: the connection ends
        # Every head counted once, native or not (the status request too).
        assert h.app.metrics.requests_total == 4
        assert [s.requests for s in h.app.schools] == [4, 0]
    run(body)


def test_unknown_host_after_a_routed_request_is_421(run):
    def body(h: Harness) -> None:
        proto, transport = h.client()
        h.finish(h.send(proto, req("/page/0")))
        assert h.send(proto, req("/page/1", host="elsewhere.test")) is None
        assert len(h.connected) == 1
        assert [target for _, target in h.routed] == [b"/page/0", b"/page/1"]
        assert statuses(transport) == [200, 421]
        assert transport.done
        assert h.app.metrics.requests_total == 2
        assert [s.requests for s in h.app.schools] == [1, 0]
    run(body)


def test_every_request_of_a_trusted_proxy_goes_through_app_route(run):
    def body(h: Harness) -> None:
        proto, transport = h.client(peer="192.0.2.7")
        keys = []
        for i, client in enumerate(["203.0.113.1", "203.0.113.2", "203.0.113.3"]):
            ex = h.send(proto, req(f"/page/{i}", "north.test", "GET",
                                   f"X-Forwarded-For: {client}, 192.0.2.9"))
            keys.append(proto.client_key)
            h.finish(ex)
        # Each request is keyed by the client its proxy names.
        assert keys == [b"203.0.113.1", b"203.0.113.2", b"203.0.113.3"]
        assert len(h.routed) == 3
        assert statuses(transport) == [200] * 3
    run(body, server='trusted_proxies = ["192.0.2.0/24"]')


def test_a_reload_moves_the_connection_then_it_is_routed_natively_again(run):
    def body(h: Harness) -> None:
        proto, transport = h.client()
        h.finish(h.send(proto, req("/page/0")))
        old = h.app
        new = h.reload()
        # The old config no longer routes: its App.route moves the
        # connection, and the new config routes from the next request on.
        moved = h.send(proto, req("/page/1"))
        assert moved.school is new.schools[0] and proto.app is new
        h.finish(moved)
        h.finish(h.send(proto, req("/page/2")))
        assert h.routed == [(old, b"/page/0"), (old, b"/page/1"), (new, b"/page/1")]
        assert h.connected[-1].school is new.schools[0]
        assert statuses(transport) == [200] * 3
        # The worker's count goes on across the reload; a school's starts
        # with its config.
        assert new.metrics.requests_total == 3
        assert [s.requests for s in new.schools] == [2, 0]
        assert [s.requests for s in old.schools] == [1, 0]
    run(body)


def test_a_waiting_line_holds_only_its_own_schools_fast_path(run):
    # While north's line has tickets waiting, north's newcomers go through
    # the shell (they join the line's end); south's requests keep the
    # frameless path.
    n = 20

    def body(h: Harness) -> None:
        controller = h.app.admission.controller
        controller.hold_fast_path(0, True)
        assert h.app.admission.core.held is controller.held == {0}
        south, _ = h.client()
        h.finish(h.send(south, req("/page/0", host="south.test")))
        north, _ = h.client("198.51.100.8")
        h.finish(h.send(north, req("/page/0")))

        def south_requests() -> None:
            for i in range(1, n):
                h.finish(h.send(south, req(f"/page/{i}", host="south.test")))

        def north_requests() -> None:
            for i in range(1, 3):
                h.finish(h.send(north, req(f"/page/{i}")))

        assert gateway_frames(south_requests) == []
        frames = gateway_frames(north_requests)
        assert "admission.py:admit" in frames and "admission.py:release" in frames
        controller.hold_fast_path(0, False)
        assert controller.held == set()
        assert gateway_frames(north_requests) == []

    run(body)
