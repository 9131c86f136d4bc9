"""SIGHUP under load: limits survive a reload, open connections move to the
new configuration at their next request, and a school a reload removes lets
its requests in flight finish (issue 7, F).

The counting upstream is a `Gate` in the test process (test_admission_support):
it records the peak of requests in flight at once. A reload is known to have
happened from the worker's log line, not from time passing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import pytest
from test_admission_support import (
    JSON_ACCEPT,
    SECRET,
    Gate,
    classes,
    connect,
    hold,
    queue,
    send,
)

from tests.support.clients import FORBIDDEN_STATUSES, HOST, RawConn, build_request, wait_until
from tests.support.procs import Gateway, gateway_config

pytestmark = pytest.mark.usefixtures("admission_connections")

RELOADED = "worker 0 reloaded"


def reload(gw: Gateway, config: str) -> None:
    """Rewrite the config file, send SIGHUP, and wait until the worker has
    taken the new config."""
    before = gw.log().count(RELOADED)
    gw.write_config(config)
    gw.signal(signal.SIGHUP)
    assert wait_until(lambda: gw.log().count(RELOADED) > before, timeout=10), gw.log()


# -- limits survive a reload -----------------------------------------------------------


class Load:
    """Clients sending GET /sleep/<ms> back to back: `keep` of them on one
    keep-alive connection each for the whole run, `fresh` of them opening a
    new connection every third request (so both connections from before and
    after each reload are in play). Every answer is recorded by status."""

    def __init__(self, port: int, keep: int, fresh: int, ms: int) -> None:
        self.port, self.ms = port, ms
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i, i >= keep), daemon=True)
                        for i in range(keep + fresh)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _run(self, index: int, fresh: bool) -> None:
        n = 0
        conn = connect(self.port, timeout=30)
        try:
            while not self.stop.is_set():
                if fresh and n and n % 3 == 0:
                    conn.close()
                    conn = connect(self.port, timeout=30)
                conn.send(build_request(target=f"/sleep/{self.ms}?client={index}&n={n}"))
                status = conn.recv_response().status
                with self.lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                n += 1
        except Exception as exc:  # reported by the test, not lost in a thread
            with self.lock:
                self.errors.append(f"client {index}: {exc!r}")
        finally:
            conn.close()


def _config(gw_port: int, gate: Gate, max_inflight: int, title: str) -> str:
    return gateway_config([gate.addr], port=gw_port,
                          school={"max_inflight": max_inflight, "title": title},
                          admission={"secret": SECRET})


def _arrivals(gate: Gate, n: int) -> None:
    """Wait until n more requests have reached the upstream."""
    target = gate.count() + n
    assert gate.wait_count(target, timeout=20), f"the upstream saw {gate.count()} < {target}"


def test_limits_hold_across_reloads_under_keep_alive_load(make_gateway, gate):
    # The example: max_inflight = 2 and three SIGHUPs under keep-alive
    # load let the upstream see 2, 4, 6, then 8 requests at once.
    gw = make_gateway(_config(0, gate, 2, "Nord"))
    port = gw.port
    with Load(port, keep=3, fresh=3, ms=40) as load:
        _arrivals(gate, 10)
        reload(gw, _config(port, gate, 2, "Nord (title changed)"))
        _arrivals(gate, 10)
        assert gate.peak == 2, "saturated at the limit, never beyond it"

        reload(gw, _config(port, gate, 1, "Nord (lowered)"))
        # Slots admitted before the reload finish; none is added until the
        # count is below the new limit, so after a few arrivals at most one
        # request is at the upstream, and it stays so.
        _arrivals(gate, 6)
        gate.clear()
        _arrivals(gate, 15)
        assert gate.peak == 1

        reload(gw, _config(port, gate, 3, "Nord (raised)"))
        assert wait_until(lambda: gate.peak == 3, timeout=10), gate.peak
        _arrivals(gate, 15)
        assert gate.peak == 3
    assert not load.errors, load.errors
    assert set(load.statuses) == {200}, load.statuses
    assert gw.log().count(RELOADED) == 3


# -- connections move to the new config -------------------------------------------------


def _school(upstream: str, **extra: object) -> dict:
    return {"name": "school", "hosts": [HOST], "upstreams": [upstream], **extra}


def test_keep_alive_connection_reaches_the_new_upstream_after_reload(make_gateway,
                                                                     make_upstream):
    old, new = make_upstream("old"), make_upstream("new")
    gw = make_gateway(upstreams=[old])
    with RawConn(gw.port) as conn:
        conn.send(build_request())
        first = conn.recv_response()
        assert first.status == 200 and first.header("X-Upstream") == "old"

        reload(gw, gateway_config([new.addr], port=gw.port))
        # The same connection, opened before the reload: its next request
        # goes by the new config.
        conn.send(build_request())
        second = conn.recv_response()
        assert second.status == 200 and second.header("X-Upstream") == "new"
        assert not second.has_token("Connection", "close")
        conn.send(build_request())
        assert conn.recv_response().header("X-Upstream") == "new"
    assert new.requests("/echo") == 2 and old.requests("/echo") == 1


def test_reload_changes_where_a_pipelined_connection_goes_next(make_gateway, make_upstream):
    old, new = make_upstream("old"), make_upstream("new")
    gw = make_gateway(upstreams=[old])
    with RawConn(gw.port) as conn:
        # One slow request in progress with another pipelined behind it.
        conn.send(build_request(target="/slow?ms=1500") + build_request(target="/echo?1"))
        assert wait_until(lambda: old.requests("/slow") == 1)
        reload(gw, gateway_config([new.addr], port=gw.port))
        conn.send(build_request(target="/echo?2"))
        answers = [conn.recv_response() for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]
    # Each request went where the config said when its head was read.
    assert [a.header("X-Upstream") for a in answers] == ["old", "old", "new"]


# -- a school removed by a reload ----------------------------------------------------------


def _two_schools(port: int, gate: Gate, kept: str, with_gone: bool = True) -> str:
    schools = [{"name": "kept", "hosts": [HOST], "upstreams": [kept]}]
    if with_gone:
        schools.insert(0, {"name": "gone", "hosts": ["gone.test"], "upstreams": [gate.addr],
                           "max_inflight": 1})
    return gateway_config([kept], port=port, schools=schools, classes=classes(),
                          admission={"secret": SECRET})


def test_school_removed_by_reload_lets_in_flight_requests_finish(make_gateway, gate,
                                                                  make_upstream):
    kept = make_upstream("kept")
    gw = make_gateway(_two_schools(0, gate, kept.addr))
    port = gw.port
    idle = send(port, "GET", "/before", host="gone.test")
    assert idle.recv_response().status == 200  # then idle, kept alive
    running = hold(port, gate, "a", host="gone.test")
    waiting = queue(port, "GET", "/waiting", [JSON_ACCEPT], host="gone.test")

    # The reload removes the school and its upstream (the Gate).
    reload(gw, _two_schools(port, gate, kept.addr, with_gone=False))
    # Queued and never sent: told so, with a time to retry.
    answer = waiting.recv_response()
    assert answer.status == 503 and int(answer.header("Retry-After") or 0) >= 1
    assert b"nothing was sent" in answer.body
    assert gate.paths() == ["/before", "/hold/a"]
    # In flight: finishes normally on its upstream connection.
    gate.release("a")
    done = running.recv_response()
    assert done.status == 200 and done.json()["target"] == "/hold/a"
    assert gate.abandoned == 0
    # A connection from before the reload asking for the removed school now
    # gets the new config's answer; the school that stayed works.
    idle.send(build_request(target="/after", host="gone.test"))
    assert idle.recv_response().status == 421
    with RawConn(port) as conn:
        conn.send(build_request())
        resp = conn.recv_response()
    assert resp.status == 200 and resp.header("X-Upstream") == "kept"
    assert resp.status not in FORBIDDEN_STATUSES


# -- SIGTERM after a reload --------------------------------------------------------------


def test_sigterm_after_reload_drains_connections_of_both_configs(make_gateway, make_upstream):
    up = make_upstream("u1")
    gw = make_gateway(upstreams=[up], timeouts={"drain": 10.0})
    result: dict[str, object] = {}
    ready = threading.Event()

    def slow(name: str, before_reload: Callable[[], None]) -> None:
        with RawConn(gw.port, timeout=15) as conn:
            before_reload()
            ready.wait(10)
            conn.send(build_request(target=f"/slow?ms=1500&{name}"))
            result[name] = conn.recv_response()

    with RawConn(gw.port) as idle_old:
        idle_old.send(build_request())
        assert idle_old.recv_response().status == 200
        opened = threading.Event()
        old_client = threading.Thread(target=slow, args=("old", opened.set))
        old_client.start()
        assert opened.wait(5)
        reload(gw, gateway_config([up.addr], port=gw.port, timeouts={"drain": 10.0},
                                  school={"title": "After"}))
        new_client = threading.Thread(target=slow, args=("new", lambda: None))
        new_client.start()
        ready.set()
        assert wait_until(lambda: up.requests("/slow") == 2)
        gw.signal(signal.SIGTERM)
        # The idle connection from before the reload is closed at once.
        assert idle_old.closed(timeout=2.0)
    old_client.join(timeout=10)
    new_client.join(timeout=10)
    for name in ("old", "new"):
        resp = result[name]
        assert resp.status == 200, resp  # type: ignore[attr-defined]
        assert resp.has_token("Connection", "close")  # type: ignore[attr-defined]
    assert gw.wait(timeout=10) == 0, gw.log()
