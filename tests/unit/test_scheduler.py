"""Scheduler: unit cases with a fake clock, and property tests against the model."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.admission.scheduler import ADMITTED, CANCELLED, QUEUED, REJECTED, Scheduler
from tests.oracles import admission as reference
from tests.unit.admission_model import ClassSpec, Model, SchoolSpec

IMPLS = pytest.mark.parametrize("impl", [Scheduler, reference.Scheduler],
                                ids=["native", "reference"])

BULK, INTERACTIVE, SUBMIT = 0, 1, 2
CLASSES = [(0, 30.0, 429), (10, 20.0, 503), (20, 60.0, 503)]


def school(max_inflight=0, *, rate=0.0, burst=0, weight=1.0, pool=None, max_queue=1000,
           client_rate=0.0, client_burst=0, max_connections=0):
    return (max_inflight, max_connections, rate, burst, weight, pool, max_queue,
            client_rate, client_burst)


@IMPLS
def test_admits_up_to_max_inflight_then_queues(impl):
    s = impl([school(2)], CLASSES)
    tickets = [s.request(0, INTERACTIVE, None, 0.0) for _ in range(3)]
    assert [t.state for t in tickets] == [ADMITTED, ADMITTED, QUEUED]
    assert s.position(tickets[2]) == 1
    assert s.release(tickets[0], 1.0) == [tickets[2]]
    assert tickets[2].state == ADMITTED


@IMPLS
def test_most_urgent_class_first_then_fcfs(impl):
    s = impl([school(1)], CLASSES, aging=1e9)
    first = s.request(0, BULK, None, 0.0)
    bulk = [s.request(0, BULK, None, 0.1 + i) for i in range(2)]
    inter = [s.request(0, INTERACTIVE, None, 3.0 + i) for i in range(2)]
    submit = s.request(0, SUBMIT, None, 5.0)
    assert [s.position(t) for t in (submit, *inter, *bulk)] == [1, 2, 3, 4, 5]
    order = []
    held = first
    for now in range(6, 11):
        (held,) = s.release(held, float(now))
        order.append(held)
    assert order == [submit, *inter, *bulk]


@IMPLS
def test_aging_lets_old_bulk_overtake_fresh_interactive(impl):
    s = impl([school(1)], CLASSES, aging=1.0)
    held = s.request(0, SUBMIT, None, 0.0)
    old_bulk = s.request(0, BULK, None, 0.0)
    # Interactive is 10 steps more urgent; arriving 11 s later it is behind.
    late = s.request(0, INTERACTIVE, None, 11.0)
    assert s.position(old_bulk) == 1 and s.position(late) == 2
    assert s.release(held, 12.0) == [old_bulk]


@IMPLS
def test_returning_visitor_keeps_its_place(impl):
    s = impl([school(1)], CLASSES)
    held = s.request(0, INTERACTIVE, None, 100.0)
    fresh = s.request(0, INTERACTIVE, None, 101.0)
    back = s.request(0, INTERACTIVE, None, 102.0, arrived_at=50.0)
    assert back.arrived_at == 50.0 and back.deadline == 122.0
    assert s.position(back) == 1 and s.position(fresh) == 2
    future = s.request(0, INTERACTIVE, None, 103.0, arrived_at=1e12)
    assert future.arrived_at == 103.0  # clamped: no cutting in from the future
    assert s.release(held, 104.0) == [back]


@IMPLS
def test_share_limit_skips_class_without_blocking_others(impl):
    s = impl([school(10)], CLASSES)
    s.set_share(BULK, 0.2)
    bulk = [s.request(0, BULK, None, 0.0) for _ in range(4)]
    assert [t.state for t in bulk] == [ADMITTED, ADMITTED, QUEUED, QUEUED]
    inter = s.request(0, INTERACTIVE, None, 1.0)
    assert inter.state == ADMITTED
    s.set_share(BULK, None)
    admitted, expired = s.poll(2.0)
    assert admitted == bulk[2:] and expired == []


@IMPLS
def test_share_of_small_school_is_at_least_one_slot(impl):
    s = impl([school(3)], CLASSES)
    s.set_share(BULK, 0.1)
    assert [s.request(0, BULK, None, 0.0).state for _ in range(2)] == [ADMITTED, QUEUED]


@IMPLS
def test_queue_bound_and_max_wait_expiry(impl):
    s = impl([school(1, max_queue=2)], CLASSES, min_retry=2, max_retry=60)
    held = s.request(0, BULK, None, 0.0)
    waiting = [s.request(0, BULK, None, 1.0) for _ in range(2)]
    full = s.request(0, BULK, None, 1.0)
    assert full.state == REJECTED and full.reason == "queue_full"
    assert full.reject_status == 429 and 2 <= full.retry_after <= 60
    assert s.next_deadline() == 31.0
    assert s.poll(30.9) == ([], [])
    admitted, expired = s.poll(31.0)
    assert admitted == [] and expired == waiting
    assert [(t.state, t.reason, t.position) for t in expired] == [
        (REJECTED, "max_wait", 1), (REJECTED, "max_wait", 1)]
    assert s.next_deadline() is None
    assert s.release(held, 32.0) == []


@IMPLS
def test_ahead_counts_only_what_a_returning_request_lines_up_behind(impl):
    s = impl([school(1)], CLASSES, aging=1e9)
    s.request(0, BULK, None, 0.0)  # holds the slot
    s.request(0, INTERACTIVE, None, 1.0)
    s.request(0, INTERACTIVE, None, 3.0)
    s.request(0, SUBMIT, None, 4.0)
    s.request(0, BULK, None, 0.5)
    # An interactive visitor who first came at 2.0: behind the submit and the
    # interactive from 1.0, ahead of the later interactive and of bulk.
    assert s.ahead(0, INTERACTIVE, 2.0) == 2
    assert s.ahead(0, SUBMIT, 0.0) == 0
    assert s.ahead(0, BULK, 10.0) == 4
    with pytest.raises(IndexError):
        s.ahead(0, 7, 0.0)


@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0, 100)), max_size=30),
       st.integers(0, 2), st.floats(0, 100))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_ahead_agrees_with_position_and_the_model(arrivals, klass, at):
    counts = []
    for impl in (Scheduler, reference.Scheduler):
        s = impl([school(1)], CLASSES, aging=5.0)
        s.request(0, BULK, None, 0.0)
        for k, t in arrivals:
            s.request(0, k, None, 100.0, arrived_at=t)
        counts.append(s.ahead(0, klass, at))
        # The same request actually made lines up exactly there.
        assert s.position(s.request(0, klass, None, 100.0, arrived_at=at)) == counts[-1] + 1
    assert counts[0] == counts[1]


@IMPLS
def test_refilled_bucket_is_no_deadline_while_slots_hold_the_school(impl):
    # Full on max_inflight and rate limited: once the bucket has its token,
    # time alone changes nothing until a slot frees, so the next deadline is
    # the queued ticket's max_wait, not a refill time already past (which
    # made the shell poll in a busy loop).
    s = impl([school(1, rate=5.0, burst=1)], CLASSES)
    held = s.request(0, BULK, None, 0.0)
    s.request(0, BULK, None, 0.0)
    assert s.next_deadline() == pytest.approx(0.2)
    for now in (0.2, 1.0, 5.0):
        assert s.poll(now) == ([], [])
        assert s.next_deadline() == 30.0
    assert [t.state for t in s.release(held, 6.0)] == [ADMITTED]


@IMPLS
def test_zero_max_wait_rejects_instead_of_queueing(impl):
    s = impl([school(1)], [(0, 0.0, 503)])
    s.request(0, 0, None, 0.0)
    busy = s.request(0, 0, None, 0.0)
    assert (busy.state, busy.reason, busy.reject_status) == (REJECTED, "busy", 503)


@IMPLS
def test_cancel_removes_from_line(impl):
    s = impl([school(1)], CLASSES)
    held = s.request(0, BULK, None, 0.0)
    a, b = s.request(0, BULK, None, 1.0), s.request(0, BULK, None, 2.0)
    assert s.cancel(a, 3.0) is True and a.state == CANCELLED
    assert s.cancel(a, 3.0) is False and s.cancel(held, 3.0) is False
    assert s.position(b) == 1
    assert s.release(held, 4.0) == [b]
    with pytest.raises(ValueError):
        s.release(held, 5.0)


@IMPLS
def test_bucket_limited_request_waits_for_refill(impl):
    s = impl([school(0, rate=2.0, burst=1)], CLASSES)
    first = s.request(0, INTERACTIVE, None, 0.0)
    second = s.request(0, INTERACTIVE, None, 0.0)
    assert (first.state, second.state) == (ADMITTED, QUEUED)
    assert s.next_deadline() == pytest.approx(0.5)
    assert s.poll(0.4) == ([], [])
    assert s.poll(0.5) == ([second], [])


@IMPLS
def test_refund_gives_the_school_token_back_and_uncounts_the_admission(impl):
    # A request admitted while its body was still with the client gives its
    # slot back unused (gateway/proxy/admission.py): one token and one
    # admission in all, however often it had to ask.
    s = impl([school(1, rate=1.0, burst=1)], CLASSES)
    first = s.request(0, SUBMIT, None, 0.0)
    assert first.state == ADMITTED
    waiting = s.request(0, INTERACTIVE, None, 0.0)
    assert waiting.state == QUEUED  # no slot, and no token until 1.0
    assert s.release(first, 0.1, refund=True) == [waiting]  # the token is back at once
    again = s.request(0, SUBMIT, None, 0.2)
    assert again.state == QUEUED  # the refunded token went to `waiting`
    s.release(waiting, 0.3)
    assert s.poll(1.1) == ([again], [])
    # A refund never lifts the bucket above its capacity.
    s.release(again, 5.0, refund=True)
    assert s.request(0, SUBMIT, None, 5.0).state == ADMITTED
    assert s.request(0, SUBMIT, None, 5.0).state == QUEUED


def test_refunded_admission_is_not_counted():
    s = Scheduler([school(1)], CLASSES)
    t = s.request(0, SUBMIT, None, 0.0)
    s.release(t, 0.1, refund=True)
    s.release(s.request(0, SUBMIT, None, 0.2), 0.3)
    assert s.stats(0, 0.3)["admitted"] == [0, 0, 1]


@IMPLS
def test_max_wait_override_sets_the_deadline_and_zero_means_no_wait(impl):
    s = impl([school(1)], CLASSES)
    held = s.request(0, SUBMIT, None, 0.0)
    short = s.request(0, SUBMIT, None, 1.0, arrived_at=0.5, max_wait=2.0)
    assert (short.state, short.deadline) == (QUEUED, 3.0)
    assert s.request(0, SUBMIT, None, 1.0, max_wait=0.0).reason == "busy"
    assert s.request(0, SUBMIT, None, 1.0, max_wait=-1.0).reason == "busy"
    admitted, expired = s.poll(3.0)
    assert (admitted, expired) == ([], [short])
    assert s.release(held, 4.0) == []


@IMPLS
def test_client_bucket_delays_then_rejects_with_429(impl):
    s = impl([school(0, client_rate=1.0, client_burst=1)], [(0, 1.5, 503)])
    now_ok = s.request(0, 0, b"a", 0.0)
    delayed = s.request(0, 0, b"a", 0.0)
    too_many = s.request(0, 0, b"a", 0.0)
    other = s.request(0, 0, b"b", 0.0)
    assert (now_ok.state, delayed.state, other.state) == (ADMITTED, QUEUED, ADMITTED)
    assert (too_many.state, too_many.reason, too_many.reject_status) == (
        REJECTED, "client_rate", 429)
    assert too_many.retry_after == 2
    assert s.next_deadline() == pytest.approx(1.0)
    assert s.poll(1.0) == ([delayed], [])


@IMPLS
def test_pool_slots_go_to_the_least_loaded_school(impl):
    s = impl([school(pool=0), school(pool=0, weight=2.0)], CLASSES, [3])
    storm = [s.request(0, INTERACTIVE, None, 0.0) for _ in range(10)]
    assert sum(t.state == ADMITTED for t in storm) == 3
    late = [s.request(1, INTERACTIVE, None, 1.0) for _ in range(5)]
    assert all(t.state == QUEUED for t in late)
    # Each freed slot goes to school 1 until inflight/weight evens out.
    assert s.release(storm[0], 2.0) == [late[0]]
    assert s.release(storm[1], 2.0) == [late[1]]
    assert s.release(storm[2], 2.0) == [storm[3]]


@IMPLS
def test_connections(impl):
    s = impl([school(max_connections=1)], CLASSES)
    assert s.connection_open(0) and not s.connection_open(0)
    s.connection_close(0)
    assert s.connection_open(0)


def test_estimated_wait_follows_measured_rate():
    s = Scheduler([school(1)], CLASSES)
    held = s.request(0, INTERACTIVE, None, 0.0)
    for i in range(1, 41):  # one admission every 0.25 s
        queued = s.request(0, INTERACTIVE, None, i * 0.25)
        (held,) = s.release(held, i * 0.25)
        assert held is queued
    waiting = [s.request(0, INTERACTIVE, None, 10.0) for _ in range(8)]
    assert s.position(waiting[-1]) == 8
    assert s.estimated_wait(waiting[-1], 10.0) == pytest.approx(2.0, rel=0.15)
    assert s.stats(0, 10.0)["admission_rate"] == pytest.approx(4.0, rel=0.15)


# -- properties -----------------------------------------------------------------

ops = st.lists(st.tuples(st.sampled_from(["req", "req", "req", "rel", "cancel", "poll"]),
                         st.integers(0, 2), st.integers(0, 2), st.integers(0, 30)),
               max_size=120)


def drive(impl, model: Model, script, *, check_next=True, reloads=()):
    """Run a script; check the model's rules after every call. Returns the log.

    A "reload" op reconfigures the scheduler with the next entry of reloads:
    (schools, classes, pools, seed); seed picks which old schools and classes
    the new ones continue (the same choice for every impl). An "allot" op
    sets school a's allotment (b picks max_inflight, max_queue or both), a
    "pallot" op pool 0's (see allot_values)."""
    sched = impl([sp.as_tuple() for sp in model.schools],
                 [c.as_tuple() for c in model.classes], model.pools, aging=model.aging)
    for k, c in enumerate(model.classes):
        sched.set_share(k, c.share)
    now, log, held = 0.0, [], []
    reloads = list(reloads)
    for op, a, b, pick in script:
        now += 0.25
        if op == "reload" and reloads:
            schools, classes, pools, seed = reloads.pop(0)
            rng = random.Random(seed)
            school_from = _continues(rng, len(model.schools), len(schools))
            class_from = _continues(rng, len(model.classes), len(classes))
            pool_from = list(range(len(pools)))  # pools continue (their slots must too)
            before = model.snapshot()
            rejected = sched.reconfigure(
                [sp.as_tuple() for sp in schools], [c.as_tuple() for c in classes], pools,
                school_from=school_from, class_from=class_from, pool_from=pool_from,
                aging=model.aging, now=now)
            for k, c in enumerate(classes):
                sched.set_share(k, c.share)
            model.reloaded(before, rejected, schools, classes, pools, school_from,
                           class_from, pool_from)
            admitted, expired = sched.poll(now)  # what the controller does next
            model.admitted(admitted)
            held += admitted
            log.append(("reload", [x.seq for x in rejected], [x.seq for x in admitted],
                        [x.seq for x in expired]))
        elif op == "allot":
            i = a % len(model.schools)
            limits = allot_values(b, pick)
            pooled = model.schools[i].pool is not None
            expected = None if pooled else model.expected_admissions_after(i, **limits)
            queued = [t for t in model.tickets if t.state == QUEUED]
            assert sched.set_allotment(i, now, **limits) is None
            model.allot(i, **limits)
            admitted, expired = _taken_at_once(sched, model, queued, now)
            if expected is not None and check_next:
                assert admitted == expected  # queue order, FCFS within a class
            held += admitted
            log.append(("allot", i, sorted(limits.items(), key=str),
                        [x.seq for x in admitted], [x.seq for x in expired]))
        elif op == "pallot" and model.pools:
            queued = [t for t in model.tickets if t.state == QUEUED]
            sched.set_pool_allotment(0, now, pick % 7)
            model.allot_pool(0, pick % 7)
            admitted, expired = _taken_at_once(sched, model, queued, now)
            held += admitted
            log.append(("pallot", pick % 7, [x.seq for x in admitted],
                        [x.seq for x in expired]))
        elif op == "req":
            t = sched.request(a % len(model.schools), b % len(model.classes), None, now)
            model.issued(t)
            if t.state == ADMITTED:
                held.append(t)
            log.append(("req", t.seq, t.state))
        elif op == "rel" and held:
            t = held.pop(pick % len(held))
            orphan_pool = model.orphans.get(t.seq)
            model.released(t)
            if t.school >= 0:
                expected = model.expected_next(t.school)
                pooled = model.schools[t.school].pool is not None
            else:  # its school was removed: only its pool (if any) gains a slot
                expected, pooled = None, orphan_pool is not None
            out = sched.release(t, now)
            if check_next and not pooled:
                assert out == ([expected] if expected is not None else [])
            model.admitted(out)
            held += out
            log.append(("rel", t.seq, [x.seq for x in out]))
        elif op == "cancel":
            queued = [t for t in model.tickets if t.state == QUEUED]
            if queued:
                t = queued[pick % len(queued)]
                assert sched.cancel(t, now)
                log.append(("cancel", t.seq))
        elif op == "poll":
            now += pick % 12
            admitted, expired = sched.poll(now)
            model.admitted(admitted)
            held += admitted
            assert all(t.state == REJECTED and t.deadline <= now for t in expired)
            log.append(("poll", [x.seq for x in admitted], [x.seq for x in expired]))
        model.check_limits()
        model.check_work_conserving()
    # Drain: every ticket ends admitted, rejected or cancelled.
    while held:
        out = sched.release(held.pop(), now)
        model.admitted(out)
        held += out
    now += 1000.0
    model.admitted(sched.poll(now)[0])
    assert all(t.state in (ADMITTED, REJECTED, CANCELLED) for t in model.tickets)
    return log


def allot_values(b: int, pick: int) -> dict:
    """An allotment change: 0..4 slots or None (no limit), a queue bound of
    0..8, or slots with the queue bound lifted."""
    slots = None if pick % 6 == 5 else pick % 6
    if b % 3 == 0:
        return {"max_inflight": slots}
    if b % 3 == 1:
        return {"max_queue": pick % 9}
    return {"max_inflight": slots, "max_queue": None}


def _taken_at_once(sched, model: Model, queued: list, now: float) -> list:
    """After an allotment call: the tickets it admitted (ADMITTED already,
    before any poll), which the next poll at the same instant hands out,
    in the order admitted, and nothing else."""
    at_once = {t.seq for t in queued if t.state == ADMITTED}
    if at_once:
        assert sched.next_deadline() == now
    admitted, expired = sched.poll(now)  # what the shell does at next_deadline
    assert {t.seq for t in admitted} == at_once
    model.admitted(admitted)
    return admitted, expired


def _continues(rng: random.Random, n_old: int, n_new: int) -> list[int]:
    """For each of n_new entries, the old index it continues or -1 (new)."""
    pool = list(range(n_old)) + [-1] * n_new
    rng.shuffle(pool)
    return pool[:n_new]


schools_st = st.lists(st.builds(SchoolSpec, max_inflight=st.integers(1, 4),
                                max_queue=st.integers(1, 8)), min_size=1, max_size=3)
classes_st = st.lists(st.builds(ClassSpec, priority=st.integers(0, 3),
                                max_wait=st.sampled_from([0.0, 2.0, 10.0]),
                                share=st.sampled_from([None, None, 0.3, 0.6])),
                      min_size=3, max_size=3)
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(schools_st, classes_st, ops)
def test_property_native_follows_the_rules_and_matches_reference(schools, classes, script):
    # Without aging (huge step) the freed slot must go to the strictly most
    # urgent eligible ticket, FCFS within a class: expected_next checks it.
    logs = [drive(impl, Model(schools, classes, aging=1e9), script)
            for impl in (Scheduler, reference.Scheduler)]
    assert logs[0] == logs[1]


@FAST
@given(st.lists(st.builds(SchoolSpec, max_inflight=st.sampled_from([0, 0, 3]), pool=st.just(0),
                          max_queue=st.integers(1, 8)), min_size=2, max_size=3),
       classes_st, st.integers(1, 6), ops)
def test_property_pool_limit_and_rules(schools, classes, pool_size, script):
    drive(Scheduler, Model(schools, classes, pools=[pool_size]), script)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([1.0, 2.0, 3.0]), min_size=2, max_size=4),
       st.integers(0, 10_000))
def test_property_contended_pool_shares_follow_weights(weights, seed):
    import random

    rng = random.Random(seed)
    n = len(weights)
    sched = Scheduler([school(pool=0, weight=w, max_queue=10_000) for w in weights],
                      [(0, 1e9, 503)], [40])
    held = []
    # Every school keeps a deep backlog; requests finish in random order.
    for i in range(n):
        for _ in range(200):
            t = sched.request(i, 0, None, 0.0)
            if t.state == ADMITTED:
                held.append(t)
    slot_time = [0.0] * n
    for step in range(2000):
        for t in held:
            slot_time[t.school] += 1
        t = held.pop(rng.randrange(len(held)))
        held += sched.release(t, step * 0.01)
        sched.request(t.school, 0, None, step * 0.01)
    total = sum(slot_time)
    for i, w in enumerate(weights):
        assert abs(slot_time[i] / total - w / sum(weights)) < 0.1


# -- reconfigure (a config reload) --------------------------------------------------

def slots(s, i):
    """(inflight, per-class inflight, pool inflight) of school i, from the
    native stats or the reference's fields (it has no stats())."""
    if isinstance(s, Scheduler):
        st = s.stats(i, 0.0)
        return st["inflight"], st["inflight_by_class"], st["pool_inflight"]
    sc = s.schools[i]
    return sc.inflight, list(sc.class_inflight), None if sc.pool is None else sc.pool.inflight


def same(s, schools, classes=CLASSES, pools=(), **kw):
    """reconfigure with every school, class and pool continuing in place."""
    return s.reconfigure(schools, classes, pools, school_from=range(len(schools)),
                         class_from=range(len(classes)), pool_from=range(len(pools)), **kw)


@IMPLS
def test_reload_keeps_slots_held_so_the_limit_still_holds(impl):
    # The example: max_inflight 2, two in flight; a reload that
    # changes nothing about the limit must not hand out two more slots.
    s = impl([school(2)], CLASSES)
    held = [s.request(0, INTERACTIVE, None, 0.0) for _ in range(2)]
    waiting = s.request(0, INTERACTIVE, None, 0.5)
    assert same(s, [school(2)], now=1.0) == []
    assert s.poll(1.0) == ([], [])
    late = s.request(0, INTERACTIVE, None, 1.5)
    assert (waiting.state, late.state) == (QUEUED, QUEUED)
    assert slots(s, 0)[0] == 2
    # Slots taken before the reload are given back into the new state.
    assert s.release(held[0], 2.0) == [waiting]
    assert s.release(held[1], 2.0) == [late]
    assert slots(s, 0)[0] == 2


@IMPLS
def test_lowered_limit_admits_nothing_until_the_count_is_below_it(impl):
    s = impl([school(3)], CLASSES)
    held = [s.request(0, INTERACTIVE, None, 0.0) for _ in range(3)]
    waiting = s.request(0, INTERACTIVE, None, 0.0)
    same(s, [school(1)], now=1.0)
    assert s.poll(1.0) == ([], [])
    assert s.release(held[0], 2.0) == []
    assert s.release(held[1], 2.0) == []
    assert slots(s, 0)[0] == 1
    assert s.release(held[2], 3.0) == [waiting]
    assert s.request(0, INTERACTIVE, None, 3.0).state == QUEUED


@IMPLS
def test_raised_limit_admits_queued_tickets_at_the_next_poll(impl):
    s = impl([school(1)], CLASSES)
    s.request(0, INTERACTIVE, None, 0.0)
    waiting = [s.request(0, INTERACTIVE, None, 0.1 * i) for i in range(3)]
    same(s, [school(3)], now=1.0)
    assert s.poll(1.0) == (waiting[:2], [])
    assert waiting[2].state == QUEUED and s.position(waiting[2]) == 1


@IMPLS
def test_schools_continue_by_mapping_and_tickets_are_renumbered(impl):
    s = impl([school(1), school(1)], CLASSES)
    a = s.request(0, INTERACTIVE, None, 0.0)
    b = s.request(1, INTERACTIVE, None, 0.0)
    b_waiting = s.request(1, BULK, None, 0.5)
    # New order: a new school first, then the old 1, then the old 0.
    s.reconfigure([school(1), school(1), school(1)], CLASSES,
                  school_from=[-1, 1, 0], class_from=[0, 1, 2], now=1.0)
    assert (a.school, b.school, b_waiting.school) == (2, 1, 1)
    assert s.request(0, INTERACTIVE, None, 1.0).state == ADMITTED  # the new school is free
    assert s.request(2, INTERACTIVE, None, 1.0).state == QUEUED   # old 0 is still full
    assert s.position(b_waiting) == 1
    assert s.release(b, 2.0) == [b_waiting]
    assert [slots(s, i)[0] for i in range(3)] == [1, 1, 1]


@IMPLS
def test_removed_school_lets_in_flight_finish_and_rejects_its_queue(impl):
    s = impl([school(1), school(1)], CLASSES)
    gone_held = s.request(0, INTERACTIVE, None, 0.0)
    gone_queued = [s.request(0, INTERACTIVE, None, 0.5), s.request(0, BULK, None, 0.2)]
    kept = s.request(1, INTERACTIVE, None, 0.0)
    rejected = s.reconfigure([school(1)], CLASSES, school_from=[1], class_from=[0, 1, 2],
                             min_retry=3, now=1.0)
    assert rejected == gone_queued  # in request order
    assert [(t.state, t.reason, t.reject_status, t.retry_after) for t in rejected] == [
        (REJECTED, "removed", 503, 3)] * 2
    assert (gone_held.state, gone_held.school, kept.school) == (ADMITTED, -1, 0)
    assert s.next_deadline() is None  # nothing of the old queue is left to time out
    assert s.release(gone_held, 2.0) == []  # its slot is given back, nowhere negative
    with pytest.raises(ValueError):
        s.release(gone_held, 2.0)
    assert slots(s, 0)[0] == 1
    assert s.release(kept, 2.0) == []
    assert slots(s, 0)[0] == 0


@IMPLS
def test_removed_class_rejects_its_queue_and_keeps_the_school_slot(impl):
    s = impl([school(2)], CLASSES)
    s.set_share(BULK, 0.5)  # bulk: one slot of two
    bulk = s.request(0, BULK, None, 0.0)
    bulk_queued = s.request(0, BULK, None, 0.1)
    inter = s.request(0, INTERACTIVE, None, 0.2)
    inter_queued = s.request(0, INTERACTIVE, None, 0.3)
    # Bulk disappears; interactive and submit swap places.
    rejected = s.reconfigure([school(2)], [CLASSES[SUBMIT], CLASSES[INTERACTIVE]],
                             school_from=[0], class_from=[SUBMIT, INTERACTIVE], now=1.0)
    assert rejected == [bulk_queued] and bulk_queued.reason == "removed"
    assert (bulk.klass, inter.klass, inter_queued.klass) == (-1, 1, 1)
    assert s.poll(1.0) == ([], [])  # the bulk slot still counts against the school
    assert s.release(bulk, 2.0) == [inter_queued]
    assert slots(s, 0)[1] == [0, 2]


@IMPLS
def test_removed_school_keeps_its_slots_in_a_pool_that_continues(impl):
    s = impl([school(pool=0), school(pool=0)], CLASSES, [2])
    gone = [s.request(0, INTERACTIVE, None, 0.0) for _ in range(2)]
    waiting = s.request(1, INTERACTIVE, None, 0.5)
    assert waiting.state == QUEUED
    s.reconfigure([school(pool=0)], CLASSES, [2], school_from=[1], class_from=[0, 1, 2],
                  pool_from=[0], now=1.0)
    # Its requests are still at the shared servers: the pool stays full.
    assert s.poll(1.0) == ([], [])
    assert slots(s, 0)[2] == 2
    assert s.release(gone[0], 2.0) == [waiting]
    assert s.release(gone[1], 2.0) == []
    assert slots(s, 0)[2] == 1


@IMPLS
def test_school_moved_to_another_pool_counts_there(impl):
    s = impl([school(pool=0)], CLASSES, [1, 5])
    held = s.request(0, INTERACTIVE, None, 0.0)
    s.reconfigure([school(pool=1), school(pool=0)], CLASSES, [1, 1],
                  school_from=[0, -1], class_from=[0, 1, 2], pool_from=[0, 1], now=1.0)
    # Pool 0 is free for the newcomer; pool 1 (now 1 slot) holds the mover's.
    assert s.request(1, INTERACTIVE, None, 1.0).state == ADMITTED
    assert s.request(0, INTERACTIVE, None, 1.0).state == QUEUED
    assert s.release(held, 2.0)[0].school == 0


@IMPLS
def test_tokens_connections_and_shares_carry_over(impl):
    s = impl([school(10, rate=1.0, burst=2, max_connections=1)], CLASSES)
    s.set_share(BULK, 0.1)
    assert s.connection_open(0)
    assert [s.request(0, BULK, None, 0.0).state for _ in range(2)] == [ADMITTED, QUEUED]
    assert s.request(0, INTERACTIVE, None, 0.0).state == ADMITTED  # the last token
    # A reload that lowers the burst does not refill the bucket.
    same(s, [school(10, rate=1.0, burst=1, max_connections=1)], now=0.0)
    assert s.poll(0.0) == ([], [])
    assert s.request(0, INTERACTIVE, None, 0.0).state == QUEUED
    assert not s.connection_open(0)
    s.connection_close(0)
    assert s.connection_open(0)
    assert slots(s, 0)[1][BULK] == 1


@IMPLS
def test_queued_ticket_keeps_its_deadline_and_takes_the_new_priority(impl):
    s = impl([school(1)], CLASSES, aging=1e9)
    s.request(0, SUBMIT, None, 0.0)
    bulk = s.request(0, BULK, None, 1.0)
    inter = s.request(0, INTERACTIVE, None, 2.0)
    assert s.position(inter) == 1
    # Bulk becomes the most urgent class.
    s.reconfigure([school(1)], [(30, 30.0, 429), CLASSES[1], CLASSES[2]],
                  school_from=[0], class_from=[0, 1, 2], aging=1e9, now=3.0)
    assert (s.position(bulk), s.position(inter)) == (1, 2)
    assert (bulk.deadline, inter.deadline) == (31.0, 22.0)
    assert s.poll(22.0) == ([], [inter])


@IMPLS
def test_bad_reconfigure_changes_nothing(impl):
    s = impl([school(1)], CLASSES)
    held = s.request(0, INTERACTIVE, None, 0.0)
    bad = [
        dict(school_from=[0, 0], class_from=[0, 1, 2]),      # one school continued twice
        dict(school_from=[0], class_from=[0, 1]),            # wrong length
        dict(school_from=[5], class_from=[0, 1, 2]),         # no such school
    ]
    for kw in bad:
        n = len(kw["school_from"])
        with pytest.raises(ValueError):
            s.reconfigure([school(9)] * n, CLASSES, now=1.0, **kw)
    with pytest.raises(ValueError):
        s.reconfigure([school(9, weight=0.0)], CLASSES, school_from=[0], class_from=[0, 1, 2])
    assert s.request(0, INTERACTIVE, None, 1.0).state == QUEUED
    assert held.school == 0 and s.release(held, 2.0)[0].state == ADMITTED


reload_ops = st.lists(st.tuples(st.sampled_from(["req", "req", "req", "rel", "cancel", "poll",
                                                 "reload"]),
                                st.integers(0, 2), st.integers(0, 2), st.integers(0, 30)),
                      max_size=120)
reload_classes_st = st.lists(st.builds(ClassSpec, priority=st.integers(0, 3),
                                       max_wait=st.sampled_from([0.0, 2.0, 10.0]),
                                       share=st.sampled_from([None, None, 0.3, 0.6])),
                             min_size=1, max_size=3)


@FAST
@given(schools_st, classes_st, reload_ops,
       st.lists(st.tuples(schools_st, reload_classes_st, st.just([]), st.integers(0, 2**32)),
                max_size=4))
def test_property_reloads_keep_the_rules_and_match_reference(schools, classes, script, reloads):
    # Reloads renumber, drop and add schools and classes and change every
    # limit; counts carry over, so the rules hold throughout, with slots from
    # before a reload allowed above a limit it lowered (but never added to).
    logs = [drive(impl, Model(schools, classes, aging=1e9), script, reloads=reloads)
            for impl in (Scheduler, reference.Scheduler)]
    assert logs[0] == logs[1]


@FAST
@given(st.lists(st.builds(SchoolSpec, max_inflight=st.sampled_from([0, 0, 3]), pool=st.just(0),
                          max_queue=st.integers(1, 8)), min_size=2, max_size=3),
       classes_st, st.integers(1, 6), reload_ops,
       st.lists(st.tuples(st.lists(st.builds(SchoolSpec, max_inflight=st.sampled_from([0, 0, 3]),
                                             pool=st.just(0), max_queue=st.integers(1, 8)),
                                   min_size=1, max_size=3),
                          reload_classes_st, st.integers(1, 6).map(lambda n: [n]),
                          st.integers(0, 2**32)),
                max_size=4))
def test_property_reloads_in_a_pool(schools, classes, pool_size, script, reloads):
    # Schools a reload removes keep their pool slots until released.
    logs = [drive(impl, Model(schools, classes, pools=[pool_size]), script, reloads=reloads)
            for impl in (Scheduler, reference.Scheduler)]
    assert logs[0] == logs[1]
