"""Allotments: the part of each limit a worker's scheduler enforces, moved by
a separate task (Scheduler.set_allotment & co, invariant 8 of
native/scheduler.pyx). Native and reference on the same inputs, unit cases
and state scripts checked against the brute-force model."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.admission.scheduler import ADMITTED, QUEUED, REJECTED, Scheduler
from tests.oracles import admission as reference
from tests.unit.admission_model import ClassSpec, Model, SchoolSpec
from tests.unit.test_scheduler import (
    BULK,
    CLASSES,
    FAST,
    INTERACTIVE,
    SUBMIT,
    classes_st,
    drive,
    reload_classes_st,
    school,
    schools_st,
)

IMPLS = pytest.mark.parametrize("impl", [Scheduler, reference.Scheduler],
                                ids=["native", "reference"])


def inflight(s, i):
    return s.usage(i, 0.0)["inflight"]


# -- slots -------------------------------------------------------------------------

@IMPLS
def test_lowered_allotment_admits_nothing_until_use_is_below_it(impl):
    s = impl([school(3)], CLASSES)
    held = [s.request(0, INTERACTIVE, None, 0.0) for _ in range(3)]
    waiting = s.request(0, INTERACTIVE, None, 0.0)
    s.set_allotment(0, 1.0, max_inflight=1)
    assert s.poll(1.0) == ([], [])
    assert s.request(0, INTERACTIVE, None, 1.0).state == QUEUED
    # The slots held from before are given back; none is handed on until
    # fewer than the allotment are in use.
    assert s.release(held[0], 2.0) == []
    assert s.release(held[1], 2.0) == []
    assert inflight(s, 0) == 1
    assert s.release(held[2], 3.0) == [waiting]
    assert inflight(s, 0) == 1


@IMPLS
def test_raised_allotment_admits_queued_tickets_at_once_in_queue_order(impl):
    s = impl([school(1)], CLASSES, aging=1e9)
    s.request(0, SUBMIT, None, 0.0)
    bulk = s.request(0, BULK, None, 0.1)
    inter = [s.request(0, INTERACTIVE, None, 0.2 + i) for i in range(2)]
    s.set_allotment(0, 5.0, max_inflight=3)
    # Admitted now, before any poll: the most urgent class first, FCFS in it.
    assert [t.state for t in (*inter, bulk)] == [ADMITTED, ADMITTED, QUEUED]
    assert s.next_deadline() == 5.0  # the shell polls at once
    assert s.poll(5.0) == (inter, [])
    assert s.position(bulk) == 1
    assert s.next_deadline() == bulk.deadline


@IMPLS
def test_tickets_a_raise_admits_also_come_out_of_the_next_release(impl):
    s = impl([school(1)], CLASSES)
    first = s.request(0, INTERACTIVE, None, 0.0)
    waiting = s.request(0, INTERACTIVE, None, 0.0)
    s.set_allotment(0, 1.0, max_inflight=2)
    assert s.release(first, 1.0) == [waiting]
    assert s.poll(1.0) == ([], [])


@IMPLS
def test_zero_is_none_and_none_is_no_limit(impl):
    s = impl([school(2), school(0)], CLASSES)
    s.set_allotment(0, 0.0, max_inflight=0)
    shut = [s.request(0, INTERACTIVE, None, 0.0) for _ in range(3)]
    assert [t.state for t in shut] == [QUEUED] * 3
    assert s.usage(0, 0.0)["max_inflight"] == 0
    s.set_allotment(0, 1.0, max_inflight=None)
    assert [t.state for t in shut] == [ADMITTED] * 3  # beyond the configured 2
    assert s.usage(0, 1.0)["max_inflight"] is None
    # A school the config leaves unlimited can be given a limit here.
    assert s.usage(1, 1.0)["max_inflight"] is None
    s.set_allotment(1, 1.0, max_inflight=1)
    assert [s.request(1, BULK, None, 1.0).state for _ in range(2)] == [ADMITTED, QUEUED]


@IMPLS
def test_queue_allotment_bounds_the_queue(impl):
    s = impl([school(1, max_queue=10)], CLASSES, min_retry=1)
    s.request(0, INTERACTIVE, None, 0.0)
    waiting = [s.request(0, INTERACTIVE, None, 0.0) for _ in range(3)]
    s.set_allotment(0, 1.0, max_queue=2)
    # The three queued stay; the fourth is refused.
    assert all(t.state == QUEUED for t in waiting)
    full = s.request(0, INTERACTIVE, None, 1.0)
    assert (full.state, full.reason) == (REJECTED, "queue_full")
    s.set_allotment(0, 1.0, max_queue=0)
    s.set_allotment(0, 1.0, max_queue=None)
    assert s.request(0, INTERACTIVE, None, 1.0).state == QUEUED


@IMPLS
def test_connection_allotment(impl):
    s = impl([school(max_connections=3)], CLASSES)
    assert all(s.connection_open(0) for _ in range(3))
    s.set_allotment(0, 0.0, max_connections=1)
    assert not s.connection_open(0)
    s.connection_close(0)
    s.connection_close(0)
    assert not s.connection_open(0)  # still 1 open: at the allotment
    s.connection_close(0)
    assert s.connection_open(0) and not s.connection_open(0)
    s.set_allotment(0, 0.0, max_connections=None)
    assert all(s.connection_open(0) for _ in range(10))
    assert s.usage(0, 0.0)["connections"] == 11


@IMPLS
def test_pool_allotment_lowered_then_raised_by_fairness(impl):
    s = impl([school(pool=0), school(pool=0, weight=2.0)], CLASSES, [4])
    a = [s.request(0, INTERACTIVE, None, 0.0) for _ in range(4)]
    assert all(t.state == ADMITTED for t in a)
    s.set_pool_allotment(0, 1.0, 2)
    assert s.pool_usage(0, 1.0)["max_inflight"] == 2
    a_more = [s.request(0, INTERACTIVE, None, 1.0) for _ in range(2)]
    b = [s.request(1, INTERACTIVE, None, 1.5) for _ in range(4)]
    assert all(t.state == QUEUED for t in a_more + b)
    # Two of the four carried slots go back: still at the allotment.
    assert s.release(a[0], 2.0) == [] and s.release(a[1], 2.0) == []
    # Raised by three: each goes to the school with the least inflight /
    # weight (school 0 holds 2 / 1; school 1 climbs 0, 0.5, 1 of weight 2).
    s.set_pool_allotment(0, 3.0, 5)
    assert [t.state for t in b] == [ADMITTED, ADMITTED, ADMITTED, QUEUED]
    assert [t.state for t in a_more] == [QUEUED, QUEUED]
    assert s.poll(3.0) == (b[:3], [])
    assert s.pool_usage(0, 3.0)["inflight"] == 5


@IMPLS
def test_class_shares_follow_the_allotted_slots(impl):
    s = impl([school(10), school(pool=0)], CLASSES, [10])
    s.set_share(BULK, 0.2)
    for i, set_slots in ((0, lambda n: s.set_allotment(0, 0.0, max_inflight=n)),
                         (1, lambda n: s.set_pool_allotment(0, 0.0, n))):
        set_slots(5)  # bulk: one slot of five
        first = [s.request(i, BULK, None, 0.0) for _ in range(2)]
        assert [t.state for t in first] == [ADMITTED, QUEUED]
        set_slots(10)  # two of ten: the queued one is admitted at once
        assert first[1].state == ADMITTED
        assert s.poll(0.0) == ([first[1]], [])


@IMPLS
def test_reconfigure_starts_allotments_again_from_the_config(impl):
    s = impl([school(4, max_connections=2)], CLASSES, [3])
    s.set_allotment(0, 0.0, max_inflight=1, max_connections=0)
    s.set_pool_allotment(0, 0.0, 0)
    s.reconfigure([school(4, max_connections=2)], CLASSES, [3], school_from=[0],
                  class_from=[0, 1, 2], pool_from=[0], now=1.0)
    use = s.usage(0, 1.0)
    assert (use["max_inflight"], use["max_connections"]) == (4, 2)
    assert s.pool_usage(0, 1.0)["max_inflight"] == 3


@IMPLS
def test_bad_allotments_change_nothing(impl):
    s = impl([school(2, max_connections=2), school(1, rate=1.0)], CLASSES, [3])
    before = s.usage(0, 0.0), s.usage(1, 0.0), s.pool_usage(0, 0.0)
    bad = [
        dict(max_inflight=-1), dict(max_connections=-5), dict(max_queue=-1),
        dict(max_inflight=2**31 - 1),
        # No bucket (no rate in the config): nothing else of the call applies.
        dict(max_inflight=1, rate=5.0), dict(max_queue=1, burst=3),
    ]
    for kw in bad:
        with pytest.raises(ValueError):
            s.set_allotment(0, 0.0, **kw)
    for kw in (dict(max_inflight=5, rate=-1.0), dict(rate=math.inf), dict(rate=math.nan),
               dict(max_inflight=5, burst=-1)):
        with pytest.raises(ValueError):
            s.set_allotment(1, 0.0, **kw)
    with pytest.raises(ValueError):
        s.set_pool_allotment(0, 0.0, None)
    with pytest.raises(ValueError):
        s.set_pool_allotment(0, 0.0, -1)
    for n in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            s.grant_tokens(1, n, 0.0)
        with pytest.raises(ValueError):
            s.reclaim_tokens(1, n, 0.0)
    with pytest.raises(ValueError):
        s.grant_tokens(0, 1.0, 0.0)
    with pytest.raises(ValueError):
        s.reclaim_tokens(0, 1.0, 0.0)
    with pytest.raises(IndexError):
        s.set_allotment(2, 0.0, max_inflight=1)
    with pytest.raises(IndexError):
        s.set_pool_allotment(1, 0.0, 1)
    with pytest.raises(IndexError):
        s.usage(5, 0.0)
    with pytest.raises(IndexError):
        s.pool_usage(1, 0.0)
    assert (s.usage(0, 0.0), s.usage(1, 0.0), s.pool_usage(0, 0.0)) == before


# -- tokens ------------------------------------------------------------------------

@IMPLS
def test_rate_allotment_refills_at_the_allotted_rate_up_to_the_allotted_burst(impl):
    s = impl([school(0, rate=10.0, burst=10)], CLASSES)
    s.set_allotment(0, 0.0, rate=2.0, burst=2)
    use = s.usage(0, 0.0)
    assert (use["rate"], use["burst"], use["tokens"]) == (2.0, 2.0, 2.0)
    got = [s.request(0, INTERACTIVE, None, 0.0) for _ in range(4)]
    assert [t.state for t in got] == [ADMITTED, ADMITTED, QUEUED, QUEUED]
    assert s.next_deadline() == pytest.approx(0.5)
    assert s.poll(0.5) == ([got[2]], [])
    # Only the rate: the burst stays (2 tokens), the refill speeds up.
    s.set_allotment(0, 0.5, rate=4.0)
    assert s.usage(0, 0.5)["burst"] == 2.0
    assert s.next_deadline() == pytest.approx(0.75)
    # burst 0: one second of the allotted rate, as in the config.
    s.set_allotment(0, 0.5, burst=0)
    assert s.usage(0, 0.5)["burst"] == 4.0


@IMPLS
def test_token_grants_admit_at_once_and_unspent_tokens_go_back(impl):
    s = impl([school(0, rate=5.0, burst=5)], CLASSES)
    # Grant mode: no local refill, room for three tokens.
    s.set_allotment(0, 0.0, rate=0.0, burst=3)
    assert s.usage(0, 0.0)["tokens"] == 3.0
    got = [s.request(0, INTERACTIVE, None, 0.0) for _ in range(5)]
    assert [t.state for t in got] == [ADMITTED] * 3 + [QUEUED] * 2
    # Time brings no token: the next deadline is the queued tickets' max_wait.
    assert s.next_deadline() == got[3].deadline
    assert s.poll(10.0) == ([], [])
    assert s.grant_tokens(0, 1.0, 10.0) == 1.0
    assert got[3].state == ADMITTED and got[4].state == QUEUED
    assert s.poll(10.0) == ([got[3]], [])
    # More than the burst holds: the rest is not taken.
    assert s.grant_tokens(0, 10.0, 11.0) == 3.0
    assert s.poll(11.0) == ([got[4]], [])
    assert s.usage(0, 11.0)["tokens"] == 2.0
    assert s.reclaim_tokens(0, 5.0, 12.0) == 2.0
    assert s.reclaim_tokens(0, 1.0, 12.0) == 0.0
    assert s.usage(0, 12.0)["admitted"] == 5


@IMPLS
def test_refund_in_grant_mode_gives_the_token_back(impl):
    s = impl([school(0, rate=5.0, burst=5)], CLASSES)
    s.set_allotment(0, 0.0, rate=0.0, burst=1)
    first = s.request(0, SUBMIT, None, 0.0)
    waiting = s.request(0, SUBMIT, None, 0.0)
    assert (first.state, waiting.state) == (ADMITTED, QUEUED)
    assert s.release(first, 1.0, refund=True) == [waiting]


@IMPLS
def test_lowered_burst_keeps_no_more_tokens_than_it_allows(impl):
    s = impl([school(0, rate=1.0, burst=8)], CLASSES)
    s.set_allotment(0, 0.0, burst=3)
    assert s.usage(0, 0.0)["tokens"] == 3.0
    s.set_allotment(0, 0.0, burst=8)  # raised: no tokens appear
    assert s.usage(0, 0.0)["tokens"] == 3.0
    assert s.usage(0, 2.0)["tokens"] == 5.0


# -- usage ---------------------------------------------------------------------------

@IMPLS
def test_usage_counts_admissions_net_of_refunds_and_across_reloads(impl):
    s = impl([school(2, max_connections=4)], CLASSES)
    assert s.connection_open(0)
    a = s.request(0, BULK, None, 0.0)
    b = s.request(0, INTERACTIVE, None, 0.0)
    c = s.request(0, INTERACTIVE, None, 0.0)
    s.release(b, 0.5, refund=True)  # c takes the slot
    use = s.usage(0, 1.0)
    assert {k: use[k] for k in ("inflight", "queued", "connections", "admitted")} == {
        "inflight": 2, "queued": 0, "connections": 1, "admitted": 2}
    assert use["admission_rate"] > 0.0
    assert (use["max_inflight"], use["max_connections"], use["max_queue"]) == (2, 4, 1000)
    assert (use["tokens"], use["rate"], use["burst"]) == (math.inf, None, None)
    # BULK goes away: its admission still counts, so two looks differ by
    # what was admitted between them.
    s.reconfigure([school(2)], [CLASSES[INTERACTIVE], CLASSES[SUBMIT]], school_from=[0],
                  class_from=[INTERACTIVE, SUBMIT], now=2.0)
    assert s.usage(0, 2.0)["admitted"] == 2
    s.release(a, 2.0)
    s.release(c, 2.0)
    s.request(0, 0, None, 2.0)
    assert s.usage(0, 2.0)["admitted"] == 3


@IMPLS
def test_pool_usage(impl):
    s = impl([school(1, pool=0), school(pool=0)], CLASSES, [2])
    s.request(0, BULK, None, 0.0)
    s.request(0, BULK, None, 0.0)
    s.request(1, BULK, None, 0.0)
    s.request(1, BULK, None, 0.0)
    use = s.pool_usage(0, 0.0)
    assert (use["inflight"], use["queued"], use["max_inflight"]) == (2, 2, 2)
    assert use["admission_rate"] == pytest.approx(
        s.usage(0, 0.0)["admission_rate"] + s.usage(1, 0.0)["admission_rate"])


# -- state scripts -----------------------------------------------------------------

allot_ops = st.lists(st.tuples(st.sampled_from(["req", "req", "req", "rel", "cancel", "poll",
                                                "allot", "allot"]),
                               st.integers(0, 2), st.integers(0, 2), st.integers(0, 30)),
                     min_size=10, max_size=120)


@FAST
@given(schools_st, classes_st, allot_ops)
def test_property_allotments_keep_the_rules_and_match_reference(schools, classes, script):
    # Slots held above a lowered allotment were held before it; a raised one
    # admits at once exactly what the rules say, in queue order (the model's
    # expected admissions, without aging: strict priority, FCFS in a class).
    logs = [drive(impl, Model(schools, classes, aging=1e9), script)
            for impl in (Scheduler, reference.Scheduler)]
    assert logs[0] == logs[1]


pool_schools_st = st.lists(st.builds(SchoolSpec, max_inflight=st.sampled_from([0, 0, 3]),
                                     pool=st.just(0), max_queue=st.integers(1, 8)),
                           min_size=2, max_size=3)


@FAST
@given(pool_schools_st, classes_st, st.integers(1, 6),
       st.lists(st.tuples(st.sampled_from(["req", "req", "req", "rel", "cancel", "poll",
                                           "allot", "pallot", "pallot"]),
                          st.integers(0, 2), st.integers(0, 2), st.integers(0, 30)),
                min_size=10, max_size=120))
def test_property_pool_allotments_keep_the_rules_and_match_reference(schools, classes,
                                                                     pool_size, script):
    logs = [drive(impl, Model(schools, classes, pools=[pool_size]), script)
            for impl in (Scheduler, reference.Scheduler)]
    assert logs[0] == logs[1]


@FAST
@given(schools_st, classes_st,
       st.lists(st.tuples(st.sampled_from(["req", "req", "rel", "poll", "allot", "reload"]),
                          st.integers(0, 2), st.integers(0, 2), st.integers(0, 30)),
                min_size=10, max_size=120),
       st.lists(st.tuples(schools_st, reload_classes_st, st.just([]), st.integers(0, 2**32)),
                max_size=4))
def test_property_reloads_reset_allotments_and_match_reference(schools, classes, script,
                                                               reloads):
    logs = [drive(impl, Model(schools, classes, aging=1e9), script, reloads=reloads)
            for impl in (Scheduler, reference.Scheduler)]
    assert logs[0] == logs[1]


token_ops = st.lists(st.tuples(
    st.sampled_from(["req", "req", "req", "rel", "poll", "rate", "grant", "reclaim"]),
    st.integers(0, 1), st.floats(0, 4, allow_nan=False), st.integers(0, 30)),
    min_size=10, max_size=100)


def drive_tokens(impl, specs: list[SchoolSpec], script) -> list:
    """A token script on bucketed schools; checks slot limits with the model
    and that no school spends more tokens than came in. Returns the log."""
    model = Model(specs, [ClassSpec(max_wait=5.0)])
    sched = impl([sp.as_tuple() for sp in specs], [(0, 5.0, 503)])
    now, log, held = 0.0, [], []
    # Tokens each school could have spent: its start, refill and grants,
    # less what was reclaimed (plus one microsecond of early refill a step).
    income = [sched.usage(i, 0.0)["tokens"] for i in range(len(specs))]
    for op, a, x, pick in script:
        i = a % len(specs)
        dt = 0.05 * (pick % 8)
        for j in range(len(specs)):
            income[j] += (dt + 1e-6) * sched.usage(j, now)["rate"]
        now += dt
        if op == "req":
            t = sched.request(i, 0, None, now)
            model.issued(t)
            held += [t] if t.state == ADMITTED else []
            log.append(("req", t.seq, t.state))
        elif op == "rel" and held:
            t = held.pop(pick % len(held))
            model.released(t)
            out = sched.release(t, now, refund=pick % 5 == 0)
            model.admitted(out)
            held += out
            log.append(("rel", t.seq, [u.seq for u in out]))
        elif op == "poll":
            admitted, expired = sched.poll(now)
            model.admitted(admitted)
            held += admitted
            log.append(("poll", [u.seq for u in admitted], [u.seq for u in expired]))
        elif op == "rate":
            sched.set_allotment(i, now, rate=x if pick % 3 else 0.0, burst=pick % 5)
            log.append(("rate", i))
        elif op == "grant":
            got = sched.grant_tokens(i, x, now)
            assert 0.0 <= got <= x
            income[i] += got
            log.append(("grant", i, round(got, 9)))
        else:
            got = sched.reclaim_tokens(i, x, now)
            assert 0.0 <= got <= x
            income[i] -= got
            log.append(("reclaim", i, round(got, 9)))
        model.check_limits()
        for j in range(len(specs)):
            use = sched.usage(j, now)
            assert -1e-6 <= use["tokens"] <= use["burst"] + 1e-9
            # Refunded tokens came back into the bucket (up to its burst), so
            # admissions net of refunds are the tokens spent.
            assert use["admitted"] <= income[j] + 1e-6, (j, use, income[j])
            log.append(("use", j, use["inflight"], use["queued"], use["admitted"],
                        round(use["tokens"], 9), use["rate"], use["burst"]))
    return log


@FAST
@given(st.lists(st.builds(SchoolSpec, max_inflight=st.integers(1, 4),
                          rate=st.floats(0.5, 8), burst=st.integers(0, 4)),
                min_size=1, max_size=2),
       token_ops)
def test_property_token_allotments_and_grants_match_reference(specs, script):
    logs = [drive_tokens(impl, specs, script) for impl in (Scheduler, reference.Scheduler)]
    assert logs[0] == logs[1]
