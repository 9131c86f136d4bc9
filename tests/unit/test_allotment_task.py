"""Allotment tasks (gateway.admission.allotment) and how the controller runs
them: StaticAllotment reproduces the static per-worker split exactly, and a
task's tick is driven from the controller's poll."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.admission import ADMITTED, QUEUED, AdmissionController
from gateway.admission.allotment import StaticAllotment, share
from gateway.config.schema import Admission, Config, Pool, School, Server, TrafficClass
from tests.oracles.shares import split_limits

NOW = 1_700_000_000.0


def make_school(name, **kw) -> School:
    return School(name=name, hosts=[f"{name}.example"], upstreams=["127.0.0.1:1"], **kw)


school_st = st.fixed_dictionaries({
    "max_inflight": st.sampled_from([0, 1, 2, 3, 7, 10, 40]),
    "max_connections": st.sampled_from([0, 1, 5, 64]),
    "rate": st.sampled_from([0.0, 0.5, 3.0, 30.0]),
    "burst": st.sampled_from([0, 1, 7, 20]),
    "pool": st.sampled_from([None, "p", "q"]),
})
config_st = st.builds(
    lambda schools, pools, max_queue, workers, share_bulk: Config(
        server=Server(workers=workers),
        schools=[make_school(f"s{i}", **kw) for i, kw in enumerate(schools)],
        pools=[Pool(name=n, max_inflight=m) for n, m in zip("pq", pools, strict=True)],
        classes=[TrafficClass(name="bulk", priority=0, max_share=share_bulk),
                 TrafficClass(name="interactive", priority=10)],
        admission=Admission(max_queue=max_queue)),
    st.lists(school_st, min_size=1, max_size=4),
    st.tuples(st.integers(1, 9), st.integers(1, 9)),
    st.integers(1, 50), st.integers(1, 6), st.sampled_from([None, 0.3, 0.5]))


def limits_of(c: AdmissionController, now: float) -> list:
    """Every limit the controller enforces, and every token level."""
    return ([c.usage(i, now) for i in range(len(c.school_names))]
            + [c.pool_usage(p, now) for p in range(len(c.pool_names))])


def trace(c: AdmissionController, now: float) -> list:
    """Decisions on a burst of requests and connections per school, then a
    poll a second later: shows any difference in slots, class shares,
    queue bounds, connections and tokens."""
    out = []
    for i in range(len(c.school_names)):
        out.append([c.connection_open(i, now) for _ in range(6)])
        for k in (0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0):
            t = c.request(i, k, None, now)
            out.append((t.state, t.reason))
    admitted, expired = c.poll(now + 1.0)
    out.append((by_school(admitted), by_school(expired)))
    return out


def by_school(tickets) -> list[int]:
    """Ticket seqs grouped by school, in order within each: a poll visits
    waiting schools in no particular order."""
    return [t.seq for t in sorted(tickets, key=lambda t: t.school)]


@settings(max_examples=80, deadline=None)
@given(config_st, st.data())
def test_static_allotment_enforces_exactly_the_static_split(cfg, data):
    n = cfg.server.workers
    index = data.draw(st.integers(0, n - 1))
    split = AdmissionController(split_limits(cfg, index, n), now=NOW)
    for task in (StaticAllotment(index, n), StaticAllotment(index)):  # workers from cfg
        allotted = AdmissionController(cfg, now=NOW, allotment=task)
        assert limits_of(allotted, NOW) == limits_of(split, NOW)
    assert trace(allotted, NOW) == trace(split, NOW)
    assert limits_of(allotted, NOW + 1.0) == limits_of(split, NOW + 1.0)


@settings(max_examples=40, deadline=None)
@given(config_st, config_st, st.data())
def test_static_allotment_is_set_again_after_a_reload(cfg, new_cfg, data):
    n = cfg.server.workers
    index = data.draw(st.integers(0, n - 1))
    split = AdmissionController(split_limits(cfg, index, n), now=NOW)
    allotted = AdmissionController(cfg, now=NOW, allotment=StaticAllotment(index, n))
    assert trace(allotted, NOW) == trace(split, NOW)
    # The same worker after a reload (the worker count stays with the process).
    new_cfg = Config(server=Server(workers=n), schools=new_cfg.schools, pools=new_cfg.pools,
                     classes=new_cfg.classes, admission=new_cfg.admission)
    got = allotted.reconfigure(new_cfg, NOW + 2.0)
    want = split.reconfigure(split_limits(new_cfg, index, n), NOW + 2.0)
    assert [by_school(ts) for ts in got] == [by_school(ts) for ts in want]
    assert limits_of(allotted, NOW + 2.0) == limits_of(split, NOW + 2.0)
    assert trace(allotted, NOW + 3.0) == trace(split, NOW + 3.0)


def test_static_numbers():
    cfg = Config(
        server=Server(workers=3),
        schools=[make_school("a", max_inflight=10, max_connections=0, rate=30.0, burst=7,
                             client_rate=5.0, client_burst=2, pool="p"),
                 make_school("b", max_inflight=2, rate=6.0)],
        pools=[Pool(name="p", max_inflight=4)],
        admission=Admission(max_queue=100),
    )
    for worker, (slots, burst, pool, queue) in enumerate(
            [(4, 3, 2, 34), (3, 2, 1, 33), (3, 2, 1, 33)]):
        c = AdmissionController(cfg, now=NOW, allotment=StaticAllotment(worker, 3))
        a, b = c.usage(0, NOW), c.usage(1, NOW)
        assert (a["max_inflight"], a["burst"], a["rate"], a["max_queue"]) == (
            slots, burst, 10.0, queue)
        assert a["max_connections"] is None  # unset in the config: no limit
        assert c.pool_usage(0, NOW)["max_inflight"] == pool
        # Fewer slots than workers: each still gets one; burst 0 is one
        # second of the worker's part of the rate.
        assert (b["max_inflight"], b["rate"], b["burst"]) == (1, 2.0, 2.0)
    whole = AdmissionController(cfg, now=NOW)
    assert whole.usage(0, NOW)["max_inflight"] == 10
    assert whole.pool_usage(0, NOW)["max_inflight"] == 4
    with pytest.raises(ValueError):
        StaticAllotment(3, 3)
    with pytest.raises(ValueError):
        StaticAllotment(-1)
    assert [share(10, i, 3) for i in range(3)] == [4, 3, 3]


class Recorder:
    """A task that lends school 0 one more slot per tick, every 5 s."""

    def __init__(self, first_due: float | None):
        self.first_due = first_due
        self.calls: list = []
        self.controller: AdmissionController | None = None
        self.slots = 1

    def start(self, controller: AdmissionController, now: float) -> float | None:
        self.calls.append(("start", now))
        self.controller = controller
        self.slots = 1
        controller.set_allotment(0, now, max_inflight=self.slots)
        return self.first_due

    def tick(self, now: float) -> float | None:
        self.calls.append(("tick", now))
        self.slots += 1
        assert self.controller is not None
        self.controller.set_allotment(0, now, max_inflight=self.slots)
        return now + 5.0


def controller_with(task) -> AdmissionController:
    cfg = Config(schools=[make_school("a", max_inflight=10)],
                 classes=[TrafficClass(name="all", max_wait=60.0)])
    return AdmissionController(cfg, now=NOW, allotment=task)


def test_tick_runs_from_poll_when_due_and_its_admissions_come_out_of_that_poll():
    task = Recorder(first_due=NOW + 1.0)
    c = controller_with(task)
    assert task.calls == [("start", NOW)]
    held = c.request(0, 0, None, NOW)
    waiting = [c.request(0, 0, None, NOW) for _ in range(2)]
    assert held.state == ADMITTED and all(t.state == QUEUED for t in waiting)
    assert c.next_deadline() == NOW + 1.0
    assert c.poll(NOW + 0.5) == ([], [])
    assert task.calls == [("start", NOW)]  # not due yet
    assert c.poll(NOW + 1.0) == ([waiting[0]], [])
    assert task.calls[-1] == ("tick", NOW + 1.0)
    assert c.next_deadline() == NOW + 6.0
    # Requests and releases never run the task.
    c.release(held, NOW + 7.0)
    assert task.calls[-1] == ("tick", NOW + 1.0)
    assert c.poll(NOW + 7.0) == ([], [])  # the release let waiting[1] in
    assert waiting[1].state == ADMITTED
    assert task.calls[-1] == ("tick", NOW + 7.0)


def test_a_task_never_due_adds_no_deadline():
    task = Recorder(first_due=None)
    c = controller_with(task)
    assert c.next_deadline() is None
    c.poll(NOW + 100.0)
    assert task.calls == [("start", NOW)]


def test_reconfigure_starts_the_task_again_before_anything_is_admitted():
    task = Recorder(first_due=None)
    c = controller_with(task)
    held = c.request(0, 0, None, NOW)
    waiting = c.request(0, 0, None, NOW)
    assert waiting.state == QUEUED
    # The new config's limit is 10, but the task allots 1 before the
    # controller polls: nothing is admitted past the allotment.
    cfg = Config(schools=[make_school("a", max_inflight=10)],
                 classes=[TrafficClass(name="all", max_wait=60.0)])
    assert c.reconfigure(cfg, NOW + 1.0) == ([], [])
    assert task.calls == [("start", NOW), ("start", NOW + 1.0)]
    assert c.cfg is cfg
    assert waiting.state == QUEUED
    assert c.release(held, NOW + 2.0) == [waiting]


def test_controller_passes_grants_and_usage_through():
    cfg = Config(schools=[make_school("a", rate=10.0, burst=4)], pools=[])
    c = AdmissionController(cfg, now=NOW)
    c.set_allotment(0, NOW, rate=0.0, burst=2)
    assert c.usage(0, NOW)["tokens"] == 2.0
    assert c.reclaim_tokens(0, 5.0, NOW) == 2.0
    t = c.request(0, 0, None, NOW)
    assert t.state == QUEUED
    assert c.grant_tokens(0, 1.0, NOW + 1.0) == 1.0
    assert t.state == ADMITTED
    assert c.poll(NOW + 1.0) == ([t], [])
    assert c.usage(0, NOW + 1.0)["admitted"] == 1
    assert math.isinf(c.usage(0, NOW + 1.0)["max_inflight"] or math.inf)
