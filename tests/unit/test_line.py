"""The waiting line (gateway/waiting/line.py) with a fake clock, and its
local and shared-memory stores (one line seen by several worker processes)."""

from __future__ import annotations

import os
import random

import pytest

from gateway.shared.region import Region, Segment
from gateway.waiting.line import GO_GRACE, GRACE, STALE, WINDOW, Line, Rules, apply
from gateway.waiting.line_store import LocalLineStore, ShmLineStore
from gateway.waiting.line_view import LineView

T0 = 1_700_000_000.0


def line_segment(size: int) -> Segment:
    """The "line" segment of a new shared memory region (as the supervisor
    makes it before forking the workers)."""
    return Region.create({"line": size}).segment("line")


def vid(i: int) -> bytes:
    return b"v%03d" % i


def test_numbers_are_drawn_in_order_and_a_visitor_keeps_theirs():
    line = Line()
    assert [line.draw(vid(i), 10, T0 + i) for i in range(3)] == [1, 2, 3]
    # Drawing again (a reload turned away again) keeps the number.
    assert line.draw(vid(0), 10, T0 + 5) == 1
    assert line.last == 3
    assert [line.ahead(vid(i)) + 1 for i in range(3)] == [1, 2, 3]
    assert line.ahead(b"stranger") == -1


def test_position_counts_only_tickets_still_waiting():
    line = Line()
    for i in range(4):
        line.draw(vid(i), 10, T0)
    assert line.call(vid(0), T0 + 1)
    assert line.serving == 1
    # The called ticket's reload is on its way: no longer ahead of anyone.
    assert line.ahead(vid(3)) == 2
    assert line.called() == 1
    line.leave(vid(1))
    assert line.ahead(vid(3)) == 1
    assert line.waiting() == {10.0: 2}


def test_a_visitor_who_stops_polling_is_dropped_after_the_grace_period():
    line = Line()
    line.draw(vid(0), 10, T0)
    line.draw(vid(1), 10, T0)
    line.draw(vid(2), 10, T0)
    line.call(vid(2), T0 + GRACE - 10)
    # vid(1) polls; vid(0) went away.
    line.seen(vid(1), T0 + GRACE - 1)
    assert line.sweep(T0 + GRACE - 0.5) == 0
    assert line.sweep(T0 + GRACE + 0.5) == 1
    assert line.entry(vid(0)) is None
    assert line.ahead(vid(1)) == 0
    # A called visitor whose reload never came is dropped after GO_GRACE.
    assert line.sweep(T0 + GRACE - 10 + GO_GRACE + 0.5) == 1
    assert line.entry(vid(2)) is None and line.entry(vid(1)) is not None


def test_a_called_visitor_turned_away_again_stays_called_and_ahead_of_nobody():
    line = Line()
    line.draw(vid(0), 10, T0)
    line.draw(vid(1), 10, T0)
    line.call(vid(0), T0 + 1)
    assert line.ahead(vid(1)) == 0
    line.draw(vid(0), 10, T0 + 2)  # its reload found no room
    assert line.entry(vid(0)).called_at == T0 + 2  # its grace starts again
    assert line.ahead(vid(1)) == 0


def test_a_more_urgent_class_stands_ahead_and_only_it_moves_a_position_up():
    line = Line()
    for i in range(3):
        line.draw(vid(i), 10, T0)
    assert line.report(vid(2), line.ahead(vid(2)) + 1) == 3
    line.draw(b"urgent", 20, T0 + 1)
    assert line.ahead(vid(2)) == 3
    assert line.report(vid(2), line.ahead(vid(2)) + 1) == 4
    # A less urgent arrival stands behind everyone.
    line.draw(b"bulk", 0, T0 + 2)
    assert line.ahead(b"bulk") == 4
    assert line.report(vid(2), line.ahead(vid(2)) + 1) == 4


def test_report_never_shows_a_larger_position_without_urgent_arrivals():
    # What another worker adds (its queue) may make the computed number
    # larger; what the visitor saw last is kept.
    line = Line()
    line.draw(vid(0), 10, T0)
    line.draw(vid(1), 10, T0)
    assert line.report(vid(1), 2) == 2
    assert line.report(vid(1), 7) == 2
    assert line.report(vid(1), 1) == 1
    assert line.report(vid(1), 2) == 1


def test_positions_never_go_up_under_random_traffic_of_one_class():
    rng = random.Random(9)
    line = Line()
    now = T0
    shown: dict[bytes, int] = {}
    for step in range(2000):
        now += rng.random() * 0.5
        r = rng.random()
        if r < 0.35:
            line.draw(b"n%d" % step, 10, now)
        elif r < 0.55 and line.by_vid:
            line.call(rng.choice(list(line.by_vid)), now)
        elif r < 0.7 and line.by_vid:
            line.leave(rng.choice(list(line.by_vid)))
        line.sweep(now)
        for v, e in list(line.by_vid.items()):
            if rng.random() < 0.8:
                line.seen(v, now)
            if e.called_at:
                continue
            pos = line.report(v, line.ahead(v) + 1)
            assert pos <= shown.get(v, pos), (step, v, pos, shown[v])
            # Reported positions are honest: never below the truth.
            assert pos == line.ahead(v) + 1
            shown[v] = pos


def test_a_flood_of_tickets_that_never_poll_counts_ahead_of_nobody_after_stale():
    """Issue 9: a client drawing thousands of tickets (a new visitor each
    time) and never polling used to count in every position for the whole
    grace: a real visitor after a flood of 5,000 was shown 5001, and an
    estimate to match. Past STALE the flood is set aside (positions and the
    estimate count real waiters); it is dropped at the grace as before."""
    line = Line()
    for i in range(5000):
        line.draw(b"flood%d" % i, 10, T0 + i * 0.0001)
    # Admissions measured: 5 a second for the whole window.
    for s in range(int(WINDOW) + 1):
        line.set_queue("w", {10.0: 1}, T0 - WINDOW + s)
        line.record(5, T0 - WINDOW + s + 0.5)
    # Within STALE the flood may still be real visitors whose first poll is
    # on its way: a visitor arriving now stands behind them.
    line.draw(b"early", 10, T0 + 6)
    assert line.ahead(b"early") == 5000
    line.sweep(T0 + 6)
    assert line.report(b"early", line.ahead(b"early") + 1) == 5001
    # A real visitor arriving after the flood, polling as its page does.
    now = T0 + STALE + 1.5
    line.sweep(now)
    assert line.waiting() == {10.0: 1}
    line.draw(b"real", 10, now)
    line.seen(b"early", now)
    assert line.ahead(b"early") == 0
    assert line.report(b"early", line.ahead(b"early") + 1) == 1
    assert line.ahead(b"real") == 1
    assert line.report(b"real", line.ahead(b"real") + 1) == 2
    # The estimate counts the real waiters: 2 ahead at 5/s, not 5001.
    assert line.eta(2, now) == pytest.approx(2 / 5.0, rel=0.2)
    # Nobody of the flood is called; the real visitors are, in order.
    line.seen(b"real", now + 1)
    assert line.call_next(1, now + 1) == 1 and line.entry(b"early").called_at
    assert line.call_next(2, now + 1) == 1 and line.entry(b"real").called_at
    # They get in; the grace drops the flood as before.
    assert line.leave(b"early") and line.leave(b"real")
    assert line.sweep(T0 + GRACE + 1) == 5000
    assert len(line) == 0


def test_a_ticket_set_aside_that_comes_back_rejoins_at_the_end():
    """A set-aside ticket that polls (or loads a page) again gets a new
    number at the end of its urgency: taking its old place back would raise
    the position of every visitor behind it. Its own position goes up (it
    was not waiting); nobody else's does. A more urgent one coming back is
    a more urgent arrival for the less urgent visitors behind it."""
    line = Line()
    line.draw(b"ghost", 10, T0)  # never polls
    line.draw(b"urgent-ghost", 20, T0)
    line.draw(b"a", 10, T0 + 1)
    line.draw(b"b", 10, T0 + 2)
    for v in (b"a", b"b"):
        line.seen(v, T0 + 3)
    assert line.report(b"a", line.ahead(b"a") + 1) == 3
    assert line.report(b"b", line.ahead(b"b") + 1) == 4
    now = T0 + STALE + 0.5
    line.sweep(now)
    assert line.entry(b"ghost").aside and line.entry(b"urgent-ghost").aside
    for v in (b"a", b"b"):
        line.seen(v, now)
    assert line.report(b"a", line.ahead(b"a") + 1) == 1
    assert line.report(b"b", line.ahead(b"b") + 1) == 2
    # Set aside, it stands nowhere: asked, it is where it would rejoin.
    assert line.ahead(b"ghost") == 2
    # It comes back with a poll: a new number, behind a and b.
    assert line.seen(b"ghost", now + 1)
    ghost = line.entry(b"ghost")
    assert not ghost.aside and ghost.number == 5 and line.last == 5
    assert line.ahead(b"ghost") == 2
    assert [line.report(v, line.ahead(v) + 1) for v in (b"a", b"b", b"ghost")] == [1, 2, 3]
    # A page again (no poll) brings the urgent one back, at the end of its
    # urgency: ahead of the less urgent, as any more urgent arrival is.
    assert line.draw(b"urgent-ghost", 20, now + 2) == 6
    assert line.ahead(b"a") == 1
    assert line.report(b"a", line.ahead(b"a") + 1) == 2
    # It is called in its new place, and the line still dumps and loads.
    copy = Line.load(line.dump())
    assert [copy.ahead(v) for v in (b"a", b"b", b"ghost")] == [1, 2, 3]
    line.seen(b"urgent-ghost", now + 3)
    assert line.call_next(2, now + 3) == 2
    assert line.entry(b"urgent-ghost").called_at and line.entry(b"a").called_at
    assert line.ahead(b"ghost") == 1


def test_a_ticket_set_aside_stays_aside_through_dump_and_load():
    line = Line()
    line.draw(b"ghost", 10, T0)
    line.draw(b"a", 10, T0 + 10)
    line.seen(b"a", T0 + 11)
    line.sweep(T0 + STALE + 1)
    copy = Line.load(line.dump())
    assert copy.entry(b"ghost").aside and copy.ahead(b"a") == 0
    assert copy.waiting() == line.waiting() == {10.0: 1}
    # A ticket drawn before the copy was made is set aside by the copy too.
    line.draw(b"late-ghost", 10, T0 + STALE + 1)
    copy = Line.load(line.dump())
    for x in (line, copy):
        x.sweep(T0 + 2 * STALE + 2)
        assert x.entry(b"late-ghost").aside and x.waiting() == {10.0: 1}
    assert copy.dump() == line.dump()


def test_positions_never_go_up_with_tickets_that_never_poll_and_come_back():
    """One class; real visitors poll every POLL_MIN..POLL_MAX seconds, a
    client draws tickets it never polls and brings some back later: a real
    visitor's reported position never goes up and is the truth."""
    from gateway.waiting.line import POLL_MAX, POLL_MIN

    rng = random.Random(17)
    line = Line()
    now = T0
    shown: dict[bytes, int] = {}
    next_poll: dict[bytes, float] = {}
    ghosts: list[bytes] = []
    for step in range(3000):
        now += rng.random() * 0.3
        r = rng.random()
        if r < 0.3:
            v = b"g%d" % step
            ghosts.append(v)
            line.draw(v, 10, now)
        elif r < 0.4:
            v = b"r%d" % step
            line.draw(v, 10, now)
            next_poll[v] = now + rng.uniform(POLL_MIN, POLL_MAX)
        elif r < 0.43 and ghosts:
            v = rng.choice(ghosts)  # a ghost comes back
            if line.seen(v, now) and not line.entry(v).called_at:
                next_poll[v] = now + POLL_MAX
                shown.pop(v, None)  # rejoined at the end: a new place
        elif r < 0.5:
            line.call_next(rng.randint(0, 3), now)
        line.sweep(now)
        for v, at in list(next_poll.items()):
            e = line.entry(v)
            if e is None or e.called_at:
                del next_poll[v]
                continue
            if at <= now:
                line.seen(v, now)
                next_poll[v] = now + rng.uniform(POLL_MIN, POLL_MAX)
                pos = line.report(v, line.ahead(v) + 1)
                assert pos <= shown.get(v, pos), (step, v, pos, shown[v])
                assert pos == line.ahead(v) + 1, (step, v)
                shown[v] = pos


def test_rate_is_the_fleets_admissions_over_the_window():
    line = Line()
    assert line.rate(T0) == 0.0 and line.eta(5, T0) is None
    now = T0
    # Two workers, each admitting 3 per second, for 30 s.
    for _ in range(30):
        now += 1.0
        line.record(3, now)
        line.record(3, now)
    assert line.rate(now) == pytest.approx(6.0, rel=0.1)
    assert line.eta(12, now) == pytest.approx(2.0, rel=0.1)
    # Early on, the span is the time measured so far, not the whole window.
    young = Line()
    young.record(0, T0)
    young.record(8, T0 + 2)
    assert young.rate(T0 + 2) == pytest.approx(4.0)
    # Nothing admitted for a window: no rate.
    assert line.rate(now + WINDOW + 2) == 0.0


def test_queue_reports_count_until_they_go_stale():
    line = Line()
    line.set_queue("w1", {10.0: 3, 0.0: 5}, T0)
    line.set_queue("w2", {20.0: 1}, T0)
    assert line.queued_ahead(10, T0 + 1) == 4
    assert line.queued_ahead(10, T0 + 1, exclude="w2") == 3
    assert line.queued_ahead(0, T0 + 1) == 9
    assert line.queued_ahead(0, T0 + 60) == 0


def test_dump_and_load_keep_the_line():
    line = Line()
    for i in range(5):
        line.draw(vid(i), 10 if i != 3 else 20, T0 + i)
    line.call(vid(1), T0 + 6)
    line.report(vid(4), 4)
    line.record(7, T0 + 6)
    line.set_queue("w", {10.0: 2}, T0 + 6)
    copy = Line.load(line.dump())
    assert copy.dump() == line.dump()
    assert [copy.ahead(vid(i)) for i in range(5)] == [line.ahead(vid(i)) for i in range(5)]
    assert copy.rate(T0 + 7) == line.rate(T0 + 7)


def test_apply_runs_a_batch_and_refuses_unknown_ops():
    line = Line()
    assert apply(line, [("draw", b"a", 10), ("draw", b"b", 10), ("call", b"a"),
                        ("record", 2), ("leave", b"a")], T0) == [1, 2, True, None, True]
    with pytest.raises(ValueError):
        apply(line, [("steal", b"a")], T0)


def test_a_full_line_hands_out_no_number():
    line = Line(capacity=2)
    assert line.draw(b"a", 1, T0) and line.draw(b"b", 1, T0)
    assert line.draw(b"c", 1, T0) == 0
    line.leave(b"a")
    assert line.draw(b"c", 1, T0) == 3


# -- stores ----------------------------------------------------------------------------------


def test_two_workers_on_one_region_see_one_line():
    region = line_segment(1 << 20)
    a, b = ShmLineStore(region), ShmLineStore(region)
    assert a.exchange({"s": [("draw", b"x", 10)]}, T0)["s"].entry(b"x").number == 1
    line = b.exchange({"s": [("draw", b"y", 10)]}, T0 + 1)["s"]
    assert line.entry(b"y").number == 2 and line.ahead(b"y") == 1
    line = a.exchange({"s": [("call", b"x")]}, T0 + 2)["s"]
    assert line.ahead(b"y") == 0 and line.serving == 1


def test_forked_workers_draw_distinct_numbers_in_one_sequence():
    region = line_segment(1 << 20)
    pids = []
    for w in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                store = ShmLineStore(region)
                for i in range(25):
                    store.exchange({"s": [("draw", b"w%d-%d" % (w, i), 10)]}, T0 + i)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    line = ShmLineStore(region).exchange({"s": []}, T0 + 30)["s"]
    numbers = sorted(e.number for e in line.by_vid.values())
    assert numbers == list(range(1, 101))
    # Each worker's own draws are in its order.
    for w in range(4):
        mine = [line.entry(b"w%d-%d" % (w, i)).number for i in range(25)]
        assert mine == sorted(mine)


def test_a_worker_killed_while_writing_a_snapshot_leaves_the_published_one_whole():
    """A snapshot used to be written over the published one before the
    header named the new one: a worker SIGKILLed in between left a torn
    snapshot that every worker started later (the supervisor respawns the
    killed one) failed to decode at each exchange, its line changes
    raising in the request path until the ring filled again."""
    import signal

    region = line_segment(64 << 10)
    a = ShmLineStore(region)
    n = 0
    while not a._head()[8] or n < 400:  # until a snapshot is published
        a.exchange({"s": [("draw", b"v%d" % n, 10)]}, T0)
        n += 1
    pid = os.fork()
    if pid == 0:
        # Killed holding the lock, a new snapshot written but not yet
        # named by the header.
        store = ShmLineStore(region)
        region.locked().__enter__()
        head = store._head()
        store._published = head[9]
        store._catch_up(head)
        store.lines["s"].draw(b"never-published", 10, T0)
        store._snapshot(head)
        os.kill(os.getpid(), signal.SIGKILL)
    assert os.waitpid(pid, 0)[1] & 0x7F == signal.SIGKILL
    fresh = ShmLineStore(region)  # the respawned worker
    line = fresh.exchange({"s": [("draw", b"late", 10)]}, T0 + 1)["s"]
    assert set(line.by_vid) == {b"v%d" % i for i in range(n)} | {b"late"}
    assert line.entry(b"late").number == n + 1
    assert set(a.exchange({"s": []}, T0 + 1)["s"].by_vid) == set(line.by_vid)


def test_a_region_too_small_keeps_the_line_as_it_was():
    store = ShmLineStore(line_segment(4096))
    store.exchange({"s": [("draw", b"a", 10)]}, T0)
    store.exchange({"s": [("draw", b"%d" % i, 10) for i in range(500)]}, T0)
    assert store.full
    line = store.exchange({"s": []}, T0)["s"]
    assert len(line) == 1 and store.full is False


def test_view_over_a_local_store_changes_in_place():
    clock = [T0]
    view = LineView(LocalLineStore(), "w", dict, clock=lambda: clock[0])
    assert view.change("s", ("draw", b"a", 10)) == 1
    assert view.change("s", ("draw", b"b", 10)) == 2
    assert view.line("s").ahead(b"b") == 1
    assert view.change("s", ("seen", b"a")) is True
    clock[0] += GRACE + 5
    # A stranger's poll sweeps the line: both left.
    assert view.change("s", ("seen", b"c")) is False
    assert len(view.line("s")) == 0


def test_view_over_shared_memory_applies_at_once_and_syncs_with_the_others():
    region = line_segment(1 << 20)
    admitted = {"s": (3, {10.0: 1})}
    one = LineView(ShmLineStore(region), "one", lambda: admitted, clock=lambda: T0)
    two = LineView(ShmLineStore(region), "two", dict, clock=lambda: T0)
    # Every change is exchanged when made: two's draw is numbered after one's.
    assert one.change("s", ("draw", b"a", 10)) == 1
    assert two.change("s", ("draw", b"b", 10)) == 2
    assert one.line("s").entry(b"b") is None  # one learns of it at its next exchange
    one.sync()
    assert one.line("s").ahead(b"b") == 1
    two.sync()
    line = two.line("s")
    assert line.ahead(b"b") == 1
    # one's measurements arrived with its sync.
    assert line.rate(T0) > 0 and line.queued_ahead(10, T0, exclude="two") == 1


# -- spent tickets -----------------------------------------------------------------------------


def test_a_ticket_is_spent_once_until_every_copy_has_lapsed():
    line = Line(capacity=2)
    assert line.spend(b"a", T0, keep=60) is True
    assert line.spend(b"a", T0 + 1, keep=60) is False  # a replay
    assert line.is_spent(b"a", T0 + 59, keep=60)
    # Past `keep` every copy of the cookie has lapsed: the id is forgotten.
    assert not line.is_spent(b"a", T0 + 60, keep=60)
    assert line.spend(b"a", T0 + 60, keep=60) is True
    # Taken back (its request never got in): worth its place again.
    assert line.unspend(b"a") and not line.is_spent(b"a", T0 + 61, keep=60)
    # A full record forgets its oldest spend to make room (it used to
    # refuse every ticket: test_a_full_spent_record_evicts_the_oldest).
    line.spend(b"b", T0 + 61, keep=60)
    line.spend(b"c", T0 + 61.5, keep=60)
    assert line.spend(b"d", T0 + 62, keep=60) is True
    assert list(line.spent) == [b"c", b"d"]
    copy = Line.load(line.dump())
    assert copy.spent == line.spent


def test_a_full_spent_record_evicts_the_oldest_instead_of_refusing_every_ticket():
    """Issue 9: the record (capacity entries kept `keep` seconds) once full
    used to refuse every ticket, so every visitor holding one lost its
    place (about capacity / keep ticket admissions a second fill it). Now
    the oldest spends are forgotten early to make room; the bound: a replay
    of an evicted ticket gets in once, after `capacity` other spends."""
    capacity, keep = 100, 601.0
    line = Line(capacity=capacity)
    now = T0
    # 2.5 * capacity tickets spent within keep (a sustained rate above
    # capacity / keep): every one is honoured.
    spent = [b"t%d" % i for i in range(capacity * 5 // 2)]
    for i, v in enumerate(spent):
        now = T0 + i * 0.5
        assert line.spend(v, now, keep) is True, i
        assert line.spend(v, now, keep) is False, i  # a replay at once: refused
    assert len(line.spent) == capacity
    # The newest `capacity` are remembered; the older ones were evicted.
    assert list(line.spent) == spent[-capacity:]
    assert all(line.is_spent(v, now, keep) for v in spent[-capacity:])
    # A replay of an evicted ticket gets in once, then it is spent again.
    assert line.spend(spent[0], now, keep) is True
    assert line.spend(spent[0], now, keep) is False
    assert len(line.spent) == capacity and spent[-capacity] not in line.spent
    # Spends past `keep` are forgotten as before (the oldest kept first),
    # and a record with room evicts nothing.
    (first, oldest), (second, _) = list(line.spent.items())[:2]
    line.sweep(oldest + keep - 1.0, keep=keep)  # (a sweep a second at most)
    assert len(line.spent) == capacity
    line.sweep(oldest + keep + 0.1, keep=keep)
    assert len(line.spent) == capacity - 1 and first not in line.spent
    assert line.spend(b"new", oldest + keep + 0.2, keep) is True
    assert len(line.spent) == capacity and second in line.spent
    # dump/load keeps the order spent (the next eviction is the same).
    copy = Line.load(line.dump(), capacity)
    assert list(copy.spent.items()) == list(line.spent.items())


def test_stores_evict_spends_alike():
    # Every copy replays the same evictions (the shared memory store's
    # snapshots keep the order spent): a small record, many spends.
    segment = line_segment(64 << 10)
    a, b = ShmLineStore(segment, capacity=20), ShmLineStore(segment, capacity=20)
    local = LocalLineStore(capacity=20)
    for i in range(200):
        ops = [("spend", b"s%d" % i), ("spend", b"s%d" % (i // 2))]
        got, want = {}, {}
        (a if i % 3 else b).exchange({"s": ops}, T0 + i * 0.1, got)
        local.exchange({"s": ops}, T0 + i * 0.1, want)
        assert got == want, i
    for store in (a, b, ShmLineStore(segment, capacity=20)):
        line = store.exchange({}, T0 + 30)["s"] if store is not a else \
            store.exchange({"s": []}, T0 + 30)["s"]
        assert list(line.spent.items()) == list(local.lines["s"].spent.items())


def test_apply_spends_by_the_rules_keep_and_sweeps_old_spends():
    rules = Rules(keep=10.0)
    line = Line()
    assert apply(line, [("spend", b"a"), ("spend", b"a")], T0, rules) == [True, False]
    apply(line, [], T0 + 11, rules)
    assert line.spent == {}
    assert apply(line, [("spend", b"a"), ("unspend", b"a"), ("spend", b"a")], T0 + 12,
                 rules) == [True, True, True]


def test_forked_workers_spend_a_ticket_once_between_them():
    # Eight worker processes each try to spend the same three tickets: each
    # ticket is spent by exactly one of them (the region's lock).
    region = line_segment(1 << 20)
    pids, reads = [], []
    for _ in range(8):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                view = LineView(ShmLineStore(region), "w", dict, clock=lambda: T0)
                won = [bool(view.change("s", ("spend", v))) for v in (b"x", b"y", b"z")]
                os.write(w, bytes(won))
            finally:
                os._exit(0)
        os.close(w)
        pids.append(pid)
        reads.append(r)
    wins = [0, 0, 0]
    for pid, r in zip(pids, reads, strict=True):
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        got = os.read(r, 3)
        os.close(r)
        wins = [a + b for a, b in zip(wins, got, strict=True)]
    assert wins == [1, 1, 1]


# -- the indexed line against the plain model ---------------------------------------------------


@pytest.mark.parametrize(("seed", "capacity", "keep"),
                         [(s, 300, 50.0) for s in range(6)] + [(6, 12, 400.0), (7, 25, 400.0)])
def test_the_indexed_line_answers_as_the_plain_model_under_random_traffic(seed, capacity, keep):
    """Every change and question of gateway.waiting.line.Line (Fenwick trees,
    heaps, time-ordered sweeps) against tests/unit/line_model.py (scans), on
    random traffic of three urgencies, with polls, calls, leaves, sweeps,
    spends and a dump/load now and then; tickets that never poll are set
    aside and some come back; a small capacity fills the spent record (its
    evictions) and the line."""
    from tests.unit.line_model import Line as Model

    rng = random.Random(seed)
    line, model = Line(capacity=capacity), Model(capacity=capacity)
    now = T0
    vids: list[bytes] = []
    for step in range(3000):
        now += rng.random() * 0.8
        r = rng.random()
        if r < 0.3 or not vids:
            v = b"n%d" % step
            vids.append(v)
            u = rng.choice([0.0, 10.0, 20.0])
            assert line.draw(v, u, now) == model.draw(v, u, now), step
        elif r < 0.4:
            v = rng.choice(vids)  # a page again: keeps its number
            assert line.draw(v, 10.0, now) == model.draw(v, 10.0, now), step
        elif r < 0.6:
            v = rng.choice(vids)
            assert line.seen(v, now) == model.seen(v, now), step
        elif r < 0.65:
            v = rng.choice(vids)
            assert line.call(v, now) == model.call(v, now), step
        elif r < 0.72:
            t = rng.randint(0, 12)
            assert line.call_next(t, now) == model.call_next(t, now), step
        elif r < 0.8:
            v = rng.choice(vids)
            assert line.leave(v) == model.leave(v), step
        elif r < 0.85:
            v = rng.choice(vids)
            assert line.spend(v, now, keep) == model.spend(v, now, keep), step
        elif r < 0.87:
            v = rng.choice(vids)
            assert line.unspend(v) == model.unspend(v), step
        elif r < 0.9:
            v, computed = rng.choice(vids), rng.randint(1, 40)
            assert line.report(v, computed) == model.report(v, computed), step
        elif r < 0.91:
            line = Line.load(line.dump(), capacity)
        assert line.sweep(now, 20.0, 8.0, keep) == model.sweep(now, 20.0, 8.0, keep), step
        assert len(line) == len(model), step
        assert (line.last, line.serving, line.called(), line.head_urgency()) == \
            (model.last, model.serving, model.called(), model.head_urgency()), step
        assert line.waiting() == model.waiting(), step
        for v in rng.sample(vids, min(5, len(vids))):
            assert line.ahead(v) == model.ahead(v), (step, v)
            assert line.is_spent(v, now, keep) == model.is_spent(v, now, keep), (step, v)
            e, m = line.entry(v), model.entry(v)
            assert (e is None) == (m is None), (step, v)
            if e is not None:
                assert (e.number, e.urgency, e.called_at, e.polled, e.aside) == \
                    (m.number, m.urgency, m.called_at, m.polled, m.aside), (step, v)
                assert line.urgent_ahead(e) == model.urgent_ahead(m), (step, v)
                computed = rng.randint(1, 40)
                assert line.report(v, computed) == model.report(v, computed), (step, v)
    assert sorted(line.by_vid) == sorted(model.by_vid)
    assert list(line.spent.items()) == list(model.spent.items())


def _same_line(got: Line, want: Line) -> None:
    assert (got.last, got.serving, got.called(), got.waiting()) == \
        (want.last, want.serving, want.called(), want.waiting())
    assert {v: (e.number, e.called_at, e.last_seen, e.polled, e.shown)
            for v, e in got.by_vid.items()} == \
        {v: (e.number, e.called_at, e.last_seen, e.polled, e.shown)
         for v, e in want.by_vid.items()}
    assert {v: got.ahead(v) for v in got.by_vid} == {v: want.ahead(v) for v in want.by_vid}
    assert got.spent == want.spent and got.admissions == want.admissions


def test_workers_replaying_the_log_keep_one_line_through_wraps_and_snapshots():
    # A small segment: the ring wraps many times and snapshots are stored;
    # a worker that stays away for long, and one that starts late, catch up
    # from the snapshot. Every copy is the line one store applying every
    # batch in the same order has.
    segment = line_segment(128 << 10)
    stores = [ShmLineStore(segment) for _ in range(3)]
    model = LocalLineStore()
    rng = random.Random(5)
    now = T0
    for step in range(4000):
        now += rng.random() * 0.05
        # Store 2 sleeps through steps 1000..3000 (falls behind the ring).
        who = rng.choice([0, 1] if 1000 <= step < 3000 else [0, 1, 2])
        ops: list[tuple] = []
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            v = b"v%d" % rng.randint(0, 400)
            if r < 0.4:
                ops.append(("draw", v, rng.choice([0, 10])))
            elif r < 0.6:
                ops.append(("seen", v))
            elif r < 0.7:
                ops.append(("call_next", rng.randint(0, 5)))
            elif r < 0.8:
                ops.append(("leave", v))
            elif r < 0.9:
                ops.append(("spend", v))
            else:
                ops.append(("queue", f"w{who}", {10.0: rng.randint(0, 3)}, 2))
        school = rng.choice(["a", "b"])
        got: dict[str, list] = {}
        want: dict[str, list] = {}
        stores[who].exchange({school: ops}, now, got)
        model.exchange({school: ops}, now, want)
        assert got == want, step
    head = stores[0]._head()
    assert head[3] > 0 and head[8] == 1  # the ring wrapped; a snapshot was stored
    late = ShmLineStore(segment)
    for store in [*stores, late]:
        lines = store.exchange({}, now)
        for school in ("a", "b"):
            _same_line(lines[school], model.lines[school])


def test_wait_answer_is_the_shared_lines_figure_or_unknown():
    """Admission._wait_answer: the estimate is the line's own (position plus
    called, over the fleet's rate), the same at any worker holding a copy of
    the line; with no rate measured it is None (not known), never a guess."""
    from gateway.proxy.admission import Admission

    line = Line()
    line.draw(b"v", 0.0, 100.0)
    assert Admission._wait_answer(line, 3, 100.5) == ("wait", 3, None, 2)
    # A busy second (a worker reported a queue) with 8 admissions in it.
    line.set_queue("w", {0.0: 1}, 101.2)
    line.record(8, 101.3)
    rate = line.rate(102.5)
    assert rate > 0
    state, position, eta, poll = Admission._wait_answer(line, 3, 102.5)
    assert (state, position) == ("wait", 3)
    assert eta == max(float(poll), 3 / rate + poll / 2)
    copy = Line.load(line.dump())
    assert Admission._wait_answer(copy, 3, 102.5) == (state, position, eta, poll)


def test_a_shared_memory_fault_answers_from_a_local_line_then_goes_back():
    # Whatever the shared memory raises never reaches the request: the
    # change is answered from a local line, and the worker rejoins the
    # shared line (with the visitors who drew meanwhile) when it works again.
    import asyncio

    region = line_segment(1 << 20)
    store = ShmLineStore(region)
    view = LineView(store, "one", dict, clock=lambda: T0)
    other = LineView(ShmLineStore(region), "two", dict, clock=lambda: T0)
    working = store.exchange

    def broken(*args, **kwargs):
        raise OSError("simulated fault")

    store.exchange = broken  # type: ignore[method-assign]
    assert view.change("s", ("draw", b"a", 10)) == 1
    assert view.degraded and not view.shared
    store.exchange = working  # type: ignore[method-assign]
    asyncio.run(view._try_again())
    assert not view.degraded
    # a's place reached the shared line: the next visitor comes after it.
    assert other.change("s", ("draw", b"b", 10)) == 2
