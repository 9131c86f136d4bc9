"""One estimate per ticket, whichever worker or instance is asked (issue 9
point 4: "the estimated wait comes from the measured admission rate of the
whole fleet").

The estimate is the position the shared line keeps for the ticket over the
fleet's admission rate, never a worker's own queue or rate: one ticket polled
at instance A and instance B (one Redis), or at either worker of one
instance (shared memory), gets the same estimate, give or take a sync. While
the fleet has measured no admissions, every worker says "not known yet"
(eta null) instead of guessing from its own share of the traffic.

A `redis-server` is started on a free loopback port per test (fixture from
test_line_shared) and killed by its PID afterwards.
"""

from __future__ import annotations

import threading
import time

import pytest
from test_admission_room import poll, turned_away
from test_admission_support import JSON_ACCEPT, PROBE_HEADER, classes, hold, ticket_cookie
from test_line_shared import redis_url  # noqa: F401 (the fixture)

from tests.support.clients import request, wait_until

pytestmark = pytest.mark.usefixtures("admission_connections")

SERVICE_MS = 300


def _answer(port: int, cookie: str) -> tuple[str, int | None, float | None]:
    body = poll(port, cookie).json()
    return body["state"], body["position"], body["eta"]


def _load(ports: tuple[int, ...], stop: threading.Event) -> None:
    """Scripts' requests (no place in the line) that keep the slots busy, so
    the fleet admits at a steady pace and the line moves."""
    i = 0
    while not stop.is_set():
        port = ports[i % len(ports)]
        i += 1
        request(port, "GET", f"/sleep/{SERVICE_MS}?load={i}",
                headers=[JSON_ACCEPT, (PROBE_HEADER, "1")], timeout=10)


def _compare(ports: tuple[int, ...], visitors: list[str], rounds: int) -> list[tuple]:
    """Each waiting visitor asked at every port in quick succession, `rounds`
    times: [(answers at each port)] for the rounds where all said "wait"."""
    pairs = []
    for _ in range(rounds):
        for cookie in visitors:
            answers = [_answer(port, cookie) for port in ports]
            if all(a[0] == "wait" for a in answers):
                pairs.append(tuple(answers))
        time.sleep(0.2)
    return pairs


def _check_same_estimates(ports: tuple[int, ...], gate, slots: list[tuple]) -> None:
    # Fast requests at the first port only: its workers' own admission rate
    # is far above the others' (what a worker-local estimate would show).
    for i in range(20):
        assert request(ports[0], "GET", f"/lesson/warm{i}").status == 200
    holds = [(hold(port, gate, name), name) for port, name in slots]
    visitors = [ticket_cookie(turned_away(ports[i % len(ports)], f"/lesson/v{i}"))
                for i in range(4)]
    # Every slot held: the first port's own rate is all the fleet has
    # measured, and every port answers from the fleet's figure alike.
    held = _compare(ports, visitors, 3)
    assert held
    for answers in held:
        etas = [a[2] for a in answers]
        assert etas == [etas[0]] * len(ports), answers
    for conn, name in holds:
        gate.release(name)
        assert conn.recv_response().status == 200
    # Now the fleet admits at a steady pace and the line moves: one ticket
    # gets one estimate at every port (within a factor of 1.5, and a second
    # or two: the rate moves a little between two polls).
    stop = threading.Event()
    loaders = [threading.Thread(target=_load, args=(ports, stop), daemon=True)
               for _ in range(4)]
    for th in loaders:
        th.start()
    try:
        assert wait_until(lambda: any(_answer(ports[0], v)[2] is not None for v in visitors),
                          10.0)
        more = [ticket_cookie(turned_away(ports[i % len(ports)], f"/lesson/w{i}"))
                for i in range(4)]
        pairs = _compare(ports, visitors + more, 8)
    finally:
        stop.set()
        for th in loaders:
            th.join(15)
    measured = [p for p in pairs if all(a[2] is not None for a in p)]
    assert measured, pairs
    for answers in measured:
        etas = [a[2] for a in answers]
        assert max(etas) <= 1.5 * min(etas) + 2.0, answers


def test_one_ticket_gets_one_estimate_at_two_instances(make_gateway, gate, redis_url):  # noqa: F811
    def instance():
        return make_gateway(upstreams=[gate.addr], school={"max_inflight": 2},
                            classes=classes(),
                            redis={"url": redis_url, "prefix": "eta:", "sync_interval": 0.05})

    a, b = instance(), instance()
    _check_same_estimates((a.port, b.port), gate, [(a.port, "a"), (b.port, "b")])


def test_one_ticket_gets_one_estimate_at_two_workers(make_gateway, gate):
    gw = make_gateway(upstreams=[gate.addr], school={"max_inflight": 2}, classes=classes(),
                      server={"workers": 2})
    # Each poll opens a new connection: the port stands for both workers,
    # asked twice in a row (the pairs land on either worker at random).
    _check_same_estimates((gw.port, gw.port), gate, [(gw.port, "a"), (gw.port, "b")])
