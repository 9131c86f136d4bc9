"""A config reload in one worker, without sockets: App.take_over and the
admission state it keeps (gateway/proxy/app.py, gateway/proxy/admission.py).

As in test_admission_shell: real Apps and ClientProtocols over mock
transports, with a recording Exchange whose admitted() notes the exchange
instead of connecting, and finish() ending an admitted exchange (which gives
its slot back). A reload is what Worker.reload does: a new App built with the
old one's servers and admission, then take_over() of every App before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from msgspec.structs import replace

from gateway.admission import ADMITTED, QUEUED
from gateway.config import parse_config
from gateway.proxy.app import App
from gateway.proxy.client import ClientProtocol
from gateway.proxy.exchange import ADMITTING, CONNECTING, DONE, Exchange
from tests.support.transport import MockTransport

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def config(*schools: str, admission: str = "", classes: str = "") -> str:
    return (f'[server]\nlisten = "127.0.0.1:1"\n\n[admission]\n{admission}\n'
            + classes + "".join(schools))


def school(name: str = "school", host: str = "school.test", upstream: str = "127.0.0.1:9",
           **limits: object) -> str:
    keys = "".join(f"{k} = {v!r}\n" if not isinstance(v, str) else f'{k} = "{v}"\n'
                   for k, v in limits.items())
    return (f'\n[[schools]]\nname = "{name}"\nhosts = ["{host}"]\n'
            f'upstreams = ["{upstream}"]\n{keys}')


def req(target: str = "/page", host: str = "school.test", *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def finish(ex: Exchange) -> None:
    """The upstream answered and the response ended."""
    ex.rejected(OK)


def status_of(transport: MockTransport) -> int:
    return int(bytes(transport.written).split(b" ", 2)[1])


class Worker:
    """The Apps of one worker, reloaded the way gateway/server/worker.py does."""

    def __init__(self, text: str) -> None:
        self.app = App(parse_config(text.encode(), "test.toml"))
        self.retired: list[App] = []
        self.connected: list[Exchange] = []
        self.routed: list[Exchange] = []

    def reload(self, text: str) -> App:
        old = self.app
        previous = [old, *self.retired]
        new = App(parse_config(text.encode(), "test.toml"), servers=old.servers,
                  admission=old.admission)
        new.take_over(previous)
        self.app = new
        self.retired = [a for a in previous if a.connections]
        return new

    def client(self) -> tuple[ClientProtocol, MockTransport]:
        proto = ClientProtocol(self.app)
        transport = MockTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        return proto, transport

    def get(self, target: str = "/page", host: str = "school.test",
            conn: tuple[ClientProtocol, MockTransport] | None = None,
            ) -> tuple[ClientProtocol, MockTransport, Exchange]:
        proto, transport = conn or self.client()
        proto.data_received(req(target, host))
        return proto, transport, self.routed[-1]

    def paths(self) -> list[str]:
        return [ex.head.target.decode() for ex in self.connected]  # type: ignore[union-attr]

    def stats(self, name: str = "school") -> dict:
        controller = self.app.admission.controller
        return controller.stats(controller.school_index(name))


@pytest.fixture
def run(monkeypatch) -> Iterator[Callable[..., Any]]:
    """run(body, text): body(worker) inside an event loop."""

    def execute(body: Callable[[Worker], Any], text: str) -> Any:
        async def main() -> Any:
            worker = Worker(text)

            class Recorded(Exchange):
                def __init__(self, *args: Any) -> None:
                    super().__init__(*args)
                    worker.routed.append(self)

                def admitted(self) -> None:
                    if self.state == ADMITTING:
                        self.state = CONNECTING
                        worker.connected.append(self)

            monkeypatch.setattr("gateway.proxy.app.Exchange", Recorded)
            try:
                result = body(worker)
                if asyncio.iscoroutine(result):
                    result = await result
                return result
            finally:
                worker.app.admission.close()
        return asyncio.run(main())

    yield execute


# -- limits survive a reload ----------------------------------------------------------


def test_slots_in_flight_still_count_after_a_reload(run):
    def body(w: Worker) -> None:
        _, _, a = w.get("/a")
        _, _, b = w.get("/b")
        assert w.paths() == ["/a", "/b"]
        # Only the title changes: nothing may be admitted beyond the limit.
        w.reload(config(school(max_inflight=2, title="Renamed")))
        _, _, c = w.get("/c")  # a new connection, on the new App
        assert c.ticket is not None and c.ticket.state == QUEUED
        assert w.stats()["inflight"] == 2
        # Slots taken under the old config are given back into the new state.
        finish(a)
        assert w.paths() == ["/a", "/b", "/c"]
        finish(b)
        finish(c)
        assert w.stats()["inflight"] == 0
        assert a.ticket is None and b.ticket is None
    run(body, config(school(max_inflight=2)))


def test_three_reloads_never_add_slots(run):
    def body(w: Worker) -> None:
        held = [w.get(f"/h{i}")[2] for i in range(2)]
        for n in range(3):
            w.reload(config(school(max_inflight=2, title=f"Title {n}")))
            w.get(f"/after{n}")
        assert w.paths() == ["/h0", "/h1"]
        assert w.stats()["inflight"] == 2 and w.stats()["queued_total"] == 3
        for ex in held:
            finish(ex)
        assert w.paths() == ["/h0", "/h1", "/after0", "/after1"]
    run(body, config(school(max_inflight=2)))


def test_lowered_limit_waits_for_the_count_to_fall_below_it(run):
    def body(w: Worker) -> None:
        held = [w.get(f"/h{i}")[2] for i in range(3)]
        w.reload(config(school(max_inflight=1)))
        w.get("/next")
        finish(held[0])
        finish(held[1])
        assert w.paths() == ["/h0", "/h1", "/h2"]
        finish(held[2])
        assert w.paths()[-1] == "/next"
    run(body, config(school(max_inflight=3)))


def test_raised_limit_admits_what_was_queued(run):
    def body(w: Worker) -> None:
        w.get("/h")
        w.get("/q1")
        w.get("/q2")
        assert w.paths() == ["/h"]
        w.reload(config(school(max_inflight=3)))
        assert w.paths() == ["/h", "/q1", "/q2"]
    run(body, config(school(max_inflight=1)))


def test_connection_count_survives_a_reload(run):
    def body(w: Worker) -> None:
        first, _, ex = w.get("/a")
        finish(ex)
        w.reload(config(school(max_connections=1, title="New")))
        _, t2, refused = w.get("/b")
        assert status_of(t2) == 503 and not refused.keep_alive
        first.connection_lost(None)
        assert w.stats()["connections"] == 0
        w.get("/c")
        assert w.paths() == ["/a", "/c"]
        assert w.stats()["connections"] == 1
    run(body, config(school(max_connections=1)))


def test_admission_turned_on_by_a_reload_counts_connections_right(run):
    def body(w: Worker) -> None:
        conns = [w.get(f"/{i}") for i in range(2)]
        w.reload(config(school(max_connections=2)))
        assert w.stats()["connections"] == 2
        assert status_of(w.get("/third")[1]) == 503
        for proto, _, ex in conns:
            finish(ex)
            proto.connection_lost(None)  # no count goes negative
        assert w.stats()["connections"] == 0
    run(body, config(school(max_connections=2), admission="enabled = false"))


# -- connections move to the new config -----------------------------------------------------


def test_keep_alive_connection_moves_to_the_new_config_at_its_next_request(run):
    def body(w: Worker) -> None:
        old = w.app
        conn = w.client()
        _, t, first = w.get("/one", conn=conn)
        assert first.school.balancer.servers[0].port == 9  # type: ignore[union-attr]
        finish(first)
        new = w.reload(config(school(upstream="127.0.0.1:10", title="Moved")))
        assert conn[0].app is old  # idle: it moves when it asks again
        _, _, second = w.get("/two", conn=conn)
        assert conn[0].app is new and conn[0] in new.connections
        assert conn[0] not in old.connections
        assert second.school.balancer.servers[0].port == 10  # type: ignore[union-attr]
        assert second.school.title == "Moved"  # type: ignore[union-attr]
        finish(second)
        assert w.retired == [old]
        w.reload(config(school(upstream="127.0.0.1:10", title="Again")))
        assert w.retired == [new]  # the first App had nothing left: dropped
        assert status_of(t) == 200
    run(body, config(school()))


def test_exchange_in_progress_keeps_its_school_and_app(run):
    def body(w: Worker) -> None:
        old = w.app
        conn = w.client()
        _, _, first = w.get("/one", conn=conn)
        w.reload(config(school(upstream="127.0.0.1:10", max_inflight=1)))
        # Pipelined behind the exchange in progress: routed by the new config,
        # while the connection (and the first exchange) stay where they are.
        _, _, second = w.get("/two", conn=conn)
        assert conn[0].app is old
        assert first.school.balancer.servers[0].port == 9  # type: ignore[union-attr]
        assert second.school.balancer.servers[0].port == 10  # type: ignore[union-attr]
        finish(first)
        assert w.paths() == ["/one", "/two"]
        finish(second)
        w.get("/three", conn=conn)
        assert conn[0].app is w.app
    run(body, config(school(max_inflight=1)))


# -- schools removed or renumbered ---------------------------------------------------------


def test_removed_school_finishes_in_flight_and_answers_its_queue(run):
    def body(w: Worker) -> None:
        conn = w.client()
        _, t1, running = w.get("/running", "gone.test", conn=conn)
        _, _, pipelined = w.get("/pipelined", "gone.test", conn=conn)
        _, t2, queued = w.get("/queued", "gone.test")
        _, _, kept = w.get("/kept", "kept.test")
        assert w.paths() == ["/running", "/kept"]
        w.reload(config(school("kept", "kept.test", max_inflight=1)))
        # Queued: answered at once, honestly (nothing was sent).
        assert status_of(t2) == 503
        assert b"Retry-After: 1\r\n" in t2.written and b"nothing was sent" in t2.written
        assert queued.state == DONE and queued.ticket is None
        # In flight: goes on, and its slot is given back without harm.
        assert running.state == CONNECTING
        assert running.school.index == -1  # type: ignore[union-attr]
        assert running.ticket.state == ADMITTED  # type: ignore[union-attr]
        assert t1.written == b""
        finish(running)
        assert running.ticket is None
        # Pipelined behind it, not started: the same answer in its turn.
        answers = bytes(t1.written).split(b"HTTP/1.1 ")[1:]
        assert [a[:3] for a in answers] == [b"200", b"503"]
        assert b"nothing was sent" in answers[1] and pipelined.state == DONE
        assert w.paths() == ["/running", "/kept"]
        # The kept school's slot was never touched by all this.
        assert w.stats("kept")["inflight"] == 1
        assert w.app.admission.controller.school_names == ["kept"]
        finish(kept)
        assert w.stats("kept")["inflight"] == 0
        # The connection counted against the removed school counts nowhere
        # now; its next request counts it against the school it names.
        assert conn[0].school == -1
        w.get("/next", "kept.test", conn=conn)
        assert conn[0].school == 0 and w.stats("kept")["connections"] == 2
    run(body, config(school("gone", "gone.test", max_inflight=1),
                     school("kept", "kept.test", max_inflight=1)))


def test_renumbered_schools_keep_their_own_counts(run):
    def body(w: Worker) -> None:
        conn_a = w.client()
        _, _, a = w.get("/a", "a.test", conn=conn_a)
        _, _, b = w.get("/b", "b.test")
        # A new school first: a and b move to indices 2 and 1.
        w.reload(config(school("new", "new.test"), school("b", "b.test", max_inflight=1),
                        school("a", "a.test", max_inflight=1)))
        assert a.school.index == 2 and b.school.index == 1  # type: ignore[union-attr]
        assert conn_a[0].school == 2
        _, _, a2 = w.get("/a2", "a.test")
        assert a2.ticket.state == QUEUED  # type: ignore[union-attr]
        finish(a)
        assert w.paths() == ["/a", "/b", "/a2"]
        assert w.stats("a")["connections"] == 2 and w.stats("b")["connections"] == 1
        conn_a[0].connection_lost(None)
        assert w.stats("a")["connections"] == 1
    run(body, config(school("a", "a.test", max_inflight=1),
                     school("b", "b.test", max_inflight=1)))


def test_failed_reload_changes_nothing(run):
    def body(w: Worker) -> None:
        old = w.app
        _, _, a = w.get("/a")
        # A config the controller refuses (load_config refuses it earlier;
        # built by hand here to get past it).
        cfg = parse_config(config(school()).encode(), "test.toml")
        broken = replace(cfg, schools=[replace(cfg.schools[0], pool="missing")])
        with pytest.raises(ValueError, match="no pool named"):
            App(broken, servers=old.servers, admission=old.admission).take_over([old])
        assert old.successor is None and old.admission.app is old
        assert w.get("/b")[2].ticket.state == QUEUED  # type: ignore[union-attr]
        finish(a)
        assert w.paths() == ["/a", "/b"]
    run(body, config(school(max_inflight=1)))


def test_servers_are_handed_over_retired_or_reconfigured(run):
    def body(w: Worker) -> None:
        old = w.app
        kept, dropped = old.servers["127.0.0.1:9"], old.servers["127.0.0.1:8"]
        new = w.reload(config(school("a", "a.test", "127.0.0.1:9"))
                       + "\n[limits]\nupstream_keepalive = 7\n")
        assert new.servers == {"127.0.0.1:9": kept}  # the same pool, by address
        assert kept.keepalive == 7
        # Dropped: nothing is pooled on it any more, what is in flight finishes.
        assert dropped.keepalive == 0
        assert new.metrics is old.metrics
    run(body, config(school("a", "a.test", "127.0.0.1:9"), school("b", "b.test", "127.0.0.1:8")))


FIRST = '\n[[classes]]\nname = "first"\npriority = 5\nmatch = {paths = ["/a"]}\n'
SECOND = '\n[[classes]]\nname = "second"\n'


def test_pipelined_request_keeps_its_class_when_classes_are_renumbered(run):
    def body(w: Worker) -> None:
        conn = w.client()
        _, _, running = w.get("/x", conn=conn)
        _, _, waiting = w.get("/a/1", conn=conn)
        assert waiting.klass == 0
        w.reload(config(school(max_inflight=1), classes=SECOND + FIRST))
        assert waiting.klass == 1
        finish(running)
        assert w.paths() == ["/x", "/a/1"]
        assert w.stats()["admitted"] == {"second": 1, "first": 1}
    run(body, config(school(max_inflight=1), classes=FIRST + SECOND))


def test_pipelined_request_of_a_removed_class_is_answered(run):
    def body(w: Worker) -> None:
        conn = w.client()
        _, t, running = w.get("/x", conn=conn)
        _, _, waiting = w.get("/a/1", conn=conn)
        w.reload(config(school(max_inflight=1), classes=SECOND))
        finish(running)
        assert waiting.state == DONE and w.paths() == ["/x"]
        assert [a[:3] for a in bytes(t.written).split(b"HTTP/1.1 ")[1:]] == [b"200", b"503"]
    run(body, config(school(max_inflight=1), classes=FIRST + SECOND))
