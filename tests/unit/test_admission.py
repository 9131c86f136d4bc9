"""AdmissionController over a config, with a fake clock."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.admission import (
    ADMITTED,
    QUEUED,
    REJECTED,
    AdmissionController,
)
from gateway.config.schema import (
    Admission,
    Config,
    Pool,
    School,
    TrafficClass,
    Window,
    default_classes,
)

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY_NOON = datetime(2024, 1, 15, 12, 0, tzinfo=BERLIN).timestamp()
MONDAY_NIGHT = datetime(2024, 1, 15, 23, 0, tzinfo=BERLIN).timestamp()


def make_school(name="a", **kw) -> School:
    return School(name=name, hosts=[f"{name}.example"], upstreams=["127.0.0.1:1"], **kw)


def controller(*schools: School, classes=(), pools=(), now=MONDAY_NOON, **admission):
    cfg = Config(schools=list(schools) or [make_school(max_inflight=2)],
                 classes=list(classes), pools=list(pools), admission=Admission(**admission))
    return AdmissionController(cfg, now=now)


def test_default_classes_and_lookups():
    c = controller()
    assert c.class_names == [k.name for k in default_classes()]
    assert c.school_index("a") == 0
    assert c.class_index("submit") == 1


def test_shell_round_trip_with_user_slot():
    c = controller()
    inter = c.class_index("interactive")
    now = MONDAY_NOON
    first, second, third = (c.request(0, inter, b"1.2.3.4", now) for _ in range(3))
    assert (first.state, second.state, third.state) == (ADMITTED, ADMITTED, QUEUED)
    third.user = "resume-callback"
    assert c.position(third) == 1
    assert c.release(first, now + 1) == [third]
    assert third.user == "resume-callback"
    stats = c.stats(0)
    assert stats["inflight"] == 2 and stats["queued_total"] == 0
    assert stats["admitted"] == {"bulk": 0, "submit": 0, "interactive": 3}


def test_expiry_reports_retry_after_within_bounds():
    c = controller(min_retry=5, max_retry=30)
    bulk = c.class_index("bulk")
    held = [c.request(0, bulk, None, MONDAY_NOON) for _ in range(2)]
    waiting = c.request(0, bulk, None, MONDAY_NOON)
    assert c.next_deadline() == MONDAY_NOON + 30.0
    admitted, expired = c.poll(MONDAY_NOON + 30.0)
    assert admitted == [] and expired == [waiting]
    assert (waiting.state, waiting.reject_status, waiting.position) == (REJECTED, 429, 1)
    assert 5 <= waiting.retry_after <= 30
    assert c.stats(0)["rejected"]["bulk"] == 1
    assert all(t.state == ADMITTED for t in held)


def test_window_share_switches_at_the_edge():
    school_day = Window(days=["mon", "tue", "wed", "thu", "fri"], start="07:30",
                        end="16:00", tz="Europe/Berlin", max_share=0.1)
    classes = [TrafficClass(name="bulk", max_wait=1e6, windows=[school_day]),
               TrafficClass(name="interactive", priority=10)]
    c = controller(make_school(max_inflight=10), classes=classes)
    assert c.stats(0)["shares"] == {"bulk": 0.1, "interactive": None}
    bulk = [c.request(0, 0, None, MONDAY_NOON) for _ in range(3)]
    assert [t.state for t in bulk] == [ADMITTED, QUEUED, QUEUED]
    assert c.request(0, 1, None, MONDAY_NOON).state == ADMITTED  # not blocked by bulk
    end_of_school = datetime(2024, 1, 15, 16, 0, tzinfo=BERLIN).timestamp()
    assert c.next_deadline() == end_of_school
    assert c.poll(end_of_school - 1) == ([], [])
    assert c.poll(end_of_school) == (bulk[1:], [])
    assert c.stats(0)["shares"] == {"bulk": None, "interactive": None}
    assert c.next_deadline() == datetime(2024, 1, 16, 7, 30, tzinfo=BERLIN).timestamp()


def test_pool_shared_by_two_schools():
    c = controller(make_school("a", pool="cloud"), make_school("b", pool="cloud", weight=3.0),
                   pools=[Pool(name="cloud", max_inflight=4)])
    inter = c.class_index("interactive")
    a = [c.request(0, inter, None, MONDAY_NOON) for _ in range(8)]
    b = [c.request(1, inter, None, MONDAY_NOON) for _ in range(8)]
    assert sum(t.state == ADMITTED for t in a) == 4
    out = []
    for t in a[:4]:
        out += c.release(t, MONDAY_NOON + 1)
    assert [t.school for t in out] == [1, 1, 1, 0]  # 3:1 once the storm drains
    assert c.stats(1)["pool_inflight"] == 4
    assert all(t.state == QUEUED for t in b[3:])


def test_unknown_pool_is_a_config_error():
    with pytest.raises(ValueError, match=r"schools\.a\.pool"):
        controller(make_school(pool="nope"))


def test_connection_limit():
    c = controller(make_school(max_connections=2))
    assert [c.connection_open(0, MONDAY_NOON) for _ in range(3)] == [True, True, False]
    c.connection_close(0)
    assert c.connection_open(0, MONDAY_NOON)
    assert c.stats(0)["connections"] == 2


def test_per_client_bucket_rejects_the_flooding_client_only():
    c = controller(make_school(client_rate=1.0, client_burst=2))
    inter = c.class_index("interactive")
    flood = [c.request(0, inter, b"10.0.0.1", MONDAY_NOON) for _ in range(40)]
    assert flood[0].state == ADMITTED
    rejected = [t for t in flood if t.state == REJECTED]
    assert rejected and all(t.reject_status == 429 and t.reason in ("client_rate", "queue_full")
                            for t in rejected)
    assert any(t.reason == "client_rate" for t in rejected)
    other = c.request(0, inter, b"10.0.0.2", MONDAY_NOON)
    assert other.state in (ADMITTED, QUEUED)


def test_window_night_is_unrestricted():
    school_day = Window(start="07:30", end="16:00", tz="Europe/Berlin", max_share=0.1)
    c = controller(make_school(max_inflight=10),
                   classes=[TrafficClass(name="bulk", windows=[school_day])], now=MONDAY_NIGHT)
    assert all(c.request(0, 0, None, MONDAY_NIGHT).state == ADMITTED for _ in range(10))


# -- reconfigure (SIGHUP) ----------------------------------------------------------


def config(*schools: School, classes=(), pools=(), **admission) -> Config:
    return Config(schools=list(schools), classes=list(classes), pools=list(pools),
                  admission=Admission(**admission))


def test_reconfigure_continues_schools_by_name_with_the_new_limits():
    c = AdmissionController(config(make_school("a", max_inflight=1),
                                   make_school("b", max_inflight=1)), MONDAY_NOON)
    inter = c.class_index("interactive")
    held = c.request(0, inter, None, MONDAY_NOON)
    waiting = c.request(0, inter, None, MONDAY_NOON)
    b_held = c.request(1, inter, None, MONDAY_NOON)
    assert c.connection_open(0, MONDAY_NOON)
    # "a" moves to the end with room for two; a new school comes first.
    admitted, rejected = c.reconfigure(config(
        make_school("new"), make_school("b", max_inflight=1),
        make_school("a", max_inflight=2)), MONDAY_NOON + 1)
    assert c.school_names == ["new", "b", "a"]
    assert admitted == [waiting] and rejected == []
    assert (held.school, waiting.school, b_held.school) == (2, 2, 1)
    assert c.stats(2)["inflight"] == 2 and c.stats(2)["connections"] == 1
    assert c.stats(2)["admitted"]["interactive"] == 2
    assert c.request(1, inter, None, MONDAY_NOON + 1).state == QUEUED  # b is still full
    assert c.release(held, MONDAY_NOON + 2) == []
    assert c.stats(2)["inflight"] == 1


def test_reconfigure_answers_the_queue_of_a_removed_school_or_class():
    reports = TrafficClass(name="reports", priority=0, match=None, max_wait=30.0)
    c = AdmissionController(config(make_school("a", max_inflight=1),
                                   make_school("b", max_inflight=1), classes=[reports]),
                            MONDAY_NOON)
    a_held = c.request(0, 0, None, MONDAY_NOON)
    a_queued = c.request(0, 0, None, MONDAY_NOON)
    b_held = c.request(1, 0, None, MONDAY_NOON)
    b_queued = c.request(1, 0, None, MONDAY_NOON)
    # School "a" goes; the only class is renamed, so it is a new class.
    pages = TrafficClass(name="pages", priority=0, match=None, max_wait=30.0)
    admitted, rejected = c.reconfigure(
        config(make_school("b", max_inflight=1), classes=[pages]), MONDAY_NOON + 1)
    assert admitted == [] and rejected == [a_queued, b_queued]
    assert all((t.state, t.reason) == (REJECTED, "removed") for t in rejected)
    assert (a_held.school, b_held.school, b_held.klass) == (-1, 0, -1)
    # b's slot taken under the old class still counts against b.
    assert c.request(0, 0, None, MONDAY_NOON + 1).state == QUEUED
    assert c.release(b_held, MONDAY_NOON + 2)[0].klass == 0
    assert c.release(a_held, MONDAY_NOON + 2) == []


def test_reconfigure_applies_the_new_class_shares():
    def bulk(share):
        return TrafficClass(name="bulk", priority=0, match=None, max_wait=30.0,
                            max_share=share)

    c = AdmissionController(config(make_school("a", max_inflight=10), classes=[bulk(0.2)]),
                            MONDAY_NOON)
    tickets = [c.request(0, 0, None, MONDAY_NOON) for _ in range(4)]
    assert [t.state for t in tickets] == [ADMITTED, ADMITTED, QUEUED, QUEUED]
    admitted, _ = c.reconfigure(config(make_school("a", max_inflight=10),
                                       classes=[bulk(0.3)]), MONDAY_NOON + 1)
    assert admitted == tickets[2:3]
    assert c.stats(0)["shares"] == {"bulk": 0.3}
    admitted, _ = c.reconfigure(config(make_school("a", max_inflight=10),
                                       classes=[bulk(0.1)]), MONDAY_NOON + 2)
    assert admitted == [] and c.release(tickets[0], MONDAY_NOON + 3) == []


def test_failed_reconfigure_keeps_the_running_state():
    c = controller()
    inter = c.class_index("interactive")
    held = [c.request(0, inter, None, MONDAY_NOON) for _ in range(2)]
    with pytest.raises(ValueError, match="no pool named"):
        c.reconfigure(config(make_school("a", max_inflight=5, pool="nope")), MONDAY_NOON)
    assert c.school_names == ["a"]
    assert c.request(0, inter, None, MONDAY_NOON).state == QUEUED
    assert c.release(held[0], MONDAY_NOON + 1)[0].state == ADMITTED

