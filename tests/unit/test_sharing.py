"""The shared-limits core (gateway.admission.sharing) with a fake clock:
the ledger's steps (claim, gcra), the fair division, and SharedAllotment
driving real AdmissionControllers through a LocalLedger in shared memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.admission import ADMITTED, QUEUED, AdmissionController
from gateway.admission.sharing import (
    SharedAllotment,
    apportion,
    claim,
    fair_share,
    gcra,
    presence,
    sweep_presence,
    targets,
    water_fill,
)
from gateway.config.schema import Admission, Config, Pool, Redis, School, Server, TrafficClass
from gateway.shared.ledger import LocalLedger
from gateway.shared.region import Region

NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def school(name: str, **kw) -> School:
    return School(name=name, hosts=[f"{name}.example"], upstreams=["127.0.0.1:1"], **kw)


def config(schools, pools=(), workers=2) -> Config:
    return Config(server=Server(workers=workers), schools=list(schools), pools=list(pools),
                  classes=[TrafficClass(name="web", max_wait=60.0)],
                  admission=Admission(max_queue=100), redis=Redis(sync_interval=0.1))


# -- the fair division -----------------------------------------------------------


def test_water_fill_gives_demand_under_the_limit_and_max_min_over_it():
    assert water_fill(10, [2, 3]) == [4.5, 5.5]  # the spare 5 split evenly
    assert water_fill(10, [1, 20, 20]) == [1, 4.5, 4.5]
    assert water_fill(12, [20, 20], [3, 1]) == [9, 3]  # by weight
    assert water_fill(12, [2, 20], [3, 1]) == [2, 10]  # a small demand is met


@given(st.integers(0, 50), st.lists(st.floats(0, 100), min_size=1, max_size=8))
def test_apportion_adds_up_exactly(total, parts):
    whole = apportion(total, parts)
    assert sum(whole) == total and min(whole) >= 0


def test_fair_share_parts_add_up_to_the_limit():
    for limit in range(0, 12):
        for n in range(1, 6):
            assert sum(fair_share(limit, r, n) for r in range(n)) == limit


def test_targets_follow_demand_and_weight():
    assert targets(10, "a", {"": 8}, {"b": {"": 0}})[0] == 9  # 8 + half of the spare 2
    assert targets(10, "b", {"": 0}, {"a": {"": 8}})[0] == 1
    # A pool of 20 with a weight-3 school and a weight-1 school, both busy.
    whole, parts = targets(20, "a", {"heavy": 50, "light": 50}, {"b": {"light": 50}},
                           {"heavy": 3.0, "light": 1.0})
    assert parts["heavy"] == 12  # 3/5 of 20
    assert whole == 16  # heavy 12 + half of light's 8


# -- the ledger's steps ------------------------------------------------------------


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 30), st.integers(0, 30),
                          st.integers(0, 12)), max_size=40),
       st.integers(1, 20))
def test_recorded_leases_never_add_up_to_more_than_the_limit(rounds, limit):
    table: dict[str, str] = {}
    enforced = {}
    now = 0.0
    for who, want, demand, step in rounds:
        now += step * 0.1
        # A participant enforces at most its last grant (lowered at will).
        allot = min(enforced.get(who, 0), want)
        inuse = min(allot, demand)
        grant, _, _ = claim(table, who, now, limit=limit, want=want, allot=allot, inuse=inuse,
                            cap=limit, spec=str(demand), ttl=5.0, grace=0.0)
        enforced[who] = grant
        live = [who_ for who_ in enforced
                if who_ in table and float(table[who_].split("|")[2]) > now]
        assert sum(enforced[w] for w in live) <= limit


def test_an_expired_lease_frees_its_slots():
    table: dict[str, str] = {}
    assert claim(table, "a", 0.0, limit=10, want=10, allot=0, inuse=0, cap=10, spec="",
                 ttl=5.0, grace=0.0)[0] == 10
    assert claim(table, "b", 1.0, limit=10, want=10, allot=0, inuse=0, cap=10, spec="",
                 ttl=5.0, grace=0.0)[0] == 0
    # a stops renewing: its lease runs out at 5.0.
    assert claim(table, "b", 5.0, limit=10, want=10, allot=0, inuse=0, cap=10, spec="",
                 ttl=5.0, grace=0.0)[0] == 10
    assert "a" not in table


def test_a_new_table_grants_no_more_than_the_cap_during_grace():
    table: dict[str, str] = {}
    args = dict(limit=10, want=10, allot=3, inuse=3, spec="", ttl=5.0, grace=1.0)
    assert claim(table, "a", 0.0, cap=5, **args)[0] == 5
    assert claim(table, "a", 1.0, cap=5, **args)[0] == 10


def test_gcra_mints_rate_and_burst_and_takes_back():
    tat, got = gcra(None, 0.0, rate=10.0, burst=5.0, take=100, give=0.0)
    assert got == 5  # the burst
    tat, got = gcra(tat, 1.0, rate=10.0, burst=5.0, take=100, give=0.0)
    assert got == 5  # a second of rate, capped at the burst
    tat, got = gcra(tat, 1.2, rate=10.0, burst=5.0, take=1, give=0.0)
    assert got == 1  # two emitted, one taken
    tat, got = gcra(tat, 1.2, rate=10.0, burst=5.0, take=10, give=3.0)
    assert got == 4  # the one left plus three given back
    total = 0
    t = 0.0
    tat = None
    while t < 10.0:
        tat, got = gcra(tat, t, rate=7.0, burst=3.0, take=2, give=0.0)
        total += got
        t += 0.05
    assert 3 + 7 * 9.95 - 1 <= total <= 3 + 7 * 10.0


# -- SharedAllotment on controllers ------------------------------------------------


class Fleet:
    """Participants sharing one LocalLedger segment, on one fake clock."""

    def __init__(self, cfg: Config, n: int, **kw) -> None:
        self.clock = Clock()
        self.region = Region.create({"ledger": 1 << 16})
        self.now = NOW
        self.tasks = []
        self.controllers = []
        for i in range(n):
            task = SharedAllotment(LocalLedger(self.region.segment("ledger"), self.clock),
                                   str(i), peers=n, **kw)
            self.tasks.append(task)
            self.controllers.append(AdmissionController(cfg, self.now, task))

    def run(self, seconds: float, alive=None) -> list:
        """Poll the live controllers every 0.05 s; the admitted tickets."""
        admitted = []
        end = self.now + seconds
        while self.now < end:
            self.now += 0.05
            self.clock.t += 0.05
            for i, c in enumerate(self.controllers):
                if alive is None or i in alive:
                    admitted += c.poll(self.now)[0]
            self.check()
        return admitted

    def check(self) -> None:
        cfg = self.controllers[0].cfg
        for k, s in enumerate(cfg.schools):
            if s.max_inflight:
                assert sum(c.usage(k, self.now)["inflight"]
                           for c in self.controllers) <= s.max_inflight
        for p, pool in enumerate(cfg.pools):
            assert sum(c.pool_usage(p, self.now)["inflight"]
                       for c in self.controllers) <= pool.max_inflight

    def close(self) -> None:
        self.region.close()


def test_slots_go_where_the_queue_is_and_the_total_holds():
    fleet = Fleet(config([school("a", max_inflight=10)]), 2)
    fleet.run(0.5)
    c0, c1 = fleet.controllers
    # All demand at participant 0: it gets (nearly) every slot.
    tickets = [c0.request(0, 0, None, fleet.now) for _ in range(30)]
    fleet.check()
    fleet.run(2.0)
    assert sum(t.state == ADMITTED for t in tickets) == 10
    assert c0.usage(0, fleet.now)["inflight"] == 10
    # Demand moves to participant 1: participant 0's slots come back only as
    # its requests finish, and the total never exceeds 10.
    more = [c1.request(0, 0, None, fleet.now) for _ in range(30)]
    fleet.run(1.0)
    assert sum(t.state == ADMITTED for t in more) == 0  # nothing freed yet
    done = [t for t in tickets if t.state == ADMITTED][:6]
    for t in done:
        c0.release(t, fleet.now)
    fleet.check()
    fleet.run(2.0)
    # Both queues are busy: the 10 slots split about evenly.
    assert c0.usage(0, fleet.now)["inflight"] + c1.usage(0, fleet.now)["inflight"] == 10
    assert c1.usage(0, fleet.now)["inflight"] >= 4
    fleet.close()


def test_a_dead_participants_slots_return_after_the_ttl():
    fleet = Fleet(config([school("a", max_inflight=6)]), 2, ttl=2.0)
    c0, c1 = fleet.controllers
    fleet.run(0.5)
    held = [c0.request(0, 0, None, fleet.now) for _ in range(6)]
    fleet.run(1.0)
    assert sum(t.state == ADMITTED for t in held) == 6
    # Participant 0 dies with its six requests (never released, never polled).
    waiting = [c1.request(0, 0, None, fleet.now) for _ in range(6)]
    fleet.run(1.0, alive={1})
    assert sum(t.state == ADMITTED for t in waiting) == 0
    fleet.controllers = [c1]  # its counts die with it
    fleet.run(2.0)
    assert sum(t.state == ADMITTED for t in waiting) == 6
    fleet.close()


def test_weights_show_across_participants_in_a_small_pool():
    # Six schools in a pool of 8 across 4 participants: each one's part of
    # the pool (2) is smaller than the number of schools, yet the weight-3
    # school gets its weighted share (3/8) of what the pool admits.
    schools = [school("heavy", pool="p", weight=3.0)] + [
        school(f"light{i}", pool="p") for i in range(5)]
    fleet = Fleet(config(schools, [Pool(name="p", max_inflight=8)], workers=4), 4)
    fleet.run(0.5)
    admitted = [0] * len(schools)
    serving: list = []  # (finish time, controller, ticket)
    for c in fleet.controllers:
        for k in range(len(schools)):
            for _ in range(200):
                t = c.request(k, 0, None, fleet.now)
                if t.state == ADMITTED:
                    serving.append((fleet.now + 0.2, c, t))
    for step in range(80):
        for c in fleet.controllers:
            for t in c.poll(fleet.now)[0]:
                serving.append((fleet.now + 0.2, c, t))
                if step >= 20:  # once the leases have settled
                    admitted[t.school] += 1
        for item in [x for x in serving if x[0] <= fleet.now]:
            serving.remove(item)
            for t in item[1].release(item[2], fleet.now):
                serving.append((fleet.now + 0.2, item[1], t))
                if step >= 20:
                    admitted[t.school] += 1
        fleet.check()
        fleet.now += 0.05
        fleet.clock.t += 0.05
    share = admitted[0] / sum(admitted)
    assert 0.3 <= share <= 0.45, admitted  # 3/8 = 0.375; a static split gives ~1/6
    fleet.close()


def test_a_silent_ledger_means_fail_static_with_the_last_participant_count():
    class Silent:
        pending = False

        def post(self, report):
            self.pending = True

        def take_answer(self):
            return None

    cfg = config([school("a", max_inflight=9, rate=10.0, burst=4)], workers=3)
    task = SharedAllotment(Silent(), "x", peers=3, interval=0.1)
    c = AdmissionController(cfg, NOW, task)
    assert c.usage(0, NOW)["max_inflight"] == 0  # nothing granted yet
    t = c.request(0, 0, None, NOW)
    assert t.state == QUEUED
    c.poll(NOW + 0.2)
    assert not task.fallback
    admitted, _ = c.poll(NOW + 0.7)
    assert task.fallback and task.fallbacks == 1
    u = c.usage(0, NOW + 0.7)
    assert u["max_inflight"] == 3 and u["rate"] == pytest.approx(10.0 / 3)
    admitted += c.poll(NOW + 1.0)[0]
    assert t in admitted


def test_an_outage_is_logged_once_and_its_failed_rounds_counted(caplog):
    # A ledger whose every round fails at once (Redis refusing connections)
    # for 3 s, then answers again through a LocalLedger: one warning when
    # falling back, one when recovered; the 30 failed rounds in between are
    # only counted (the README's "logged once").
    region = Region.create({"ledger": 1 << 16})
    local = LocalLedger(region.segment("ledger"), Clock())

    class Flaky:
        down = True
        pending = False
        report = None

        def post(self, report):
            if self.down:
                self.report, self.pending = report, True
            else:
                local.post(report)
                self.pending = local.pending

        def take_answer(self):
            if self.down:
                report, self.report, self.pending = self.report, None, False
                return None if report is None else (report, ConnectionError("refused"))
            answer = local.take_answer()
            self.pending = local.pending
            return answer

    ledger = Flaky()
    cfg = config([school("a", max_inflight=8)], workers=2)
    task = SharedAllotment(ledger, "x", peers=2, interval=0.1)
    c = AdmissionController(cfg, NOW, task)
    caplog.set_level("DEBUG", logger="schoolgate.sharing")
    t = NOW
    for _ in range(30):
        t += 0.1
        c.poll(t)
    assert task.fallback and task.fallbacks == 1
    assert task.errors >= 30
    ledger.down = False
    for _ in range(5):
        t += 0.1
        c.poll(t)
    assert not task.fallback
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert "falls back" in warnings[0] and "refused" in warnings[0]
    assert "answers again" in warnings[1]
    region.close()


# -- class shares, client buckets, queue and connection bounds fleet-wide ---------


def classes_config(schools, pools=(), workers=2, **adm) -> Config:
    return Config(server=Server(workers=workers), schools=list(schools), pools=list(pools),
                  classes=[TrafficClass(name="web", max_wait=60.0),
                           TrafficClass(name="bulk", max_wait=60.0, max_share=0.25)],
                  admission=Admission(max_queue=100, **adm), redis=Redis(sync_interval=0.1))


def class_inflight(fleet: Fleet, k: int, klass: int) -> int:
    return sum(c.usage(k, fleet.now)["class_inflight"][klass] for c in fleet.controllers)


def test_a_class_share_of_a_school_holds_across_participants():
    # max_inflight 8, bulk's max_share 0.25: two bulk requests in flight in
    # the whole fleet, however many participants see bulk demand. Per
    # participant, a quarter of its own part would let each hold one (at
    # least one slot each), or leave the share unused.
    fleet = Fleet(classes_config([school("a", max_inflight=8)], workers=4), 4)
    fleet.run(0.5)
    for c in fleet.controllers:
        for _ in range(10):
            c.request(0, 1, None, fleet.now)
    for _ in range(40):
        fleet.run(0.05)
        assert class_inflight(fleet, 0, 1) <= 2
    assert class_inflight(fleet, 0, 1) == 2  # and the share is used
    # Web requests still get the rest of the school's slots.
    web = [fleet.controllers[0].request(0, 0, None, fleet.now) for _ in range(10)]
    fleet.run(1.0)
    assert sum(t.state == ADMITTED for t in web) == 6
    fleet.close()


def test_a_class_share_of_a_pool_holds_for_the_pool_as_a_whole():
    # Four schools in a pool of 8, no limits of their own: bulk may hold 2
    # pool slots in all (not 2 per school, not 2 per participant).
    schools = [school(f"s{i}", pool="p") for i in range(4)]
    fleet = Fleet(classes_config(schools, [Pool(name="p", max_inflight=8)]), 2)
    fleet.run(0.5)
    for c in fleet.controllers:
        for k in range(4):
            for _ in range(5):
                c.request(k, 1, None, fleet.now)
    for _ in range(40):
        fleet.run(0.05)
        assert sum(class_inflight(fleet, k, 1) for k in range(4)) <= 2
    assert sum(class_inflight(fleet, k, 1) for k in range(4)) == 2
    fleet.close()


def test_a_class_share_of_a_pool_holds_in_one_scheduler_too():
    schools = [school(f"s{i}", pool="p") for i in range(4)]
    c = AdmissionController(classes_config(schools, [Pool(name="p", max_inflight=8)],
                                           workers=1), NOW)
    tickets = [c.request(k, 1, None, NOW) for k in range(4) for _ in range(3)]
    assert sum(t.state == ADMITTED for t in tickets) == 2
    assert c.pool_usage(0, NOW)["class_inflight"] == [0, 2]
    web = [c.request(k, 0, None, NOW) for k in range(4) for _ in range(3)]
    assert sum(t.state == ADMITTED for t in web) == 6  # the other 6 pool slots


def test_a_client_seen_by_several_participants_gets_its_rate_once():
    # One client (one address) whose connections land on all three
    # participants: its bucket of 6 tokens at 2/s holds for the fleet.
    cfg = config([school("a", client_rate=2.0, client_burst=6)], workers=3)
    fleet = Fleet(cfg, 3)
    fleet.run(0.5)
    start = fleet.now
    admitted = 0
    for _ in range(60):  # 3 s
        for c in fleet.controllers:
            t = c.request(0, 0, b"10.0.0.7", fleet.now, max_wait=0.0)
            admitted += t.state == ADMITTED
        fleet.run(0.05)
    elapsed = fleet.now - start
    # Locally each would admit 6 + 2/s: 3 x (6 + 6) = 36 over 3 s.
    assert admitted <= 6 + 2.0 * elapsed + 3, admitted  # one token per participant rounding
    assert admitted >= 6 + 2.0 * elapsed - 4, admitted
    fleet.close()


def test_a_client_seen_by_one_participant_gets_its_whole_rate():
    cfg = config([school("a", client_rate=2.0, client_burst=6)], workers=3)
    fleet = Fleet(cfg, 3)
    fleet.run(0.5)
    c = fleet.controllers[0]
    first = [c.request(0, 0, b"10.0.0.8", fleet.now, max_wait=0.0)]
    fleet.run(0.3)  # the ledger says only this participant saw it
    more = [c.request(0, 0, b"10.0.0.8", fleet.now, max_wait=0.0) for _ in range(8)]
    got = sum(t.state == ADMITTED for t in first + more)
    assert 6 <= got <= 7, got  # its whole burst (plus what 0.3 s refilled)
    fleet.close()


def test_queue_and_connection_bounds_are_exact_and_leave_a_joiner_its_part():
    cfg = Config(server=Server(workers=3),
                 schools=[school("a", max_inflight=1, max_connections=9)],
                 classes=[TrafficClass(name="web", max_wait=60.0)],
                 admission=Admission(max_queue=12), redis=Redis(sync_interval=0.1))
    fleet = Fleet(cfg, 2)  # a third participant joins later
    fleet.run(1.0)

    def allotted(key: str) -> int:
        return sum(c.usage(0, fleet.now)[key] for c in fleet.controllers)

    assert allotted("max_queue") <= 12 and allotted("max_connections") <= 9
    # Demand at participant 0: its lease follows, the total never exceeds.
    c0 = fleet.controllers[0]
    opened = sum(c0.connection_open(0, fleet.now) for _ in range(20))
    queued = [c0.request(0, 0, None, fleet.now) for _ in range(30)]
    for _ in range(20):
        fleet.run(0.05)
        opened += sum(c0.connection_open(0, fleet.now) for _ in range(3))
        queued += [c0.request(0, 0, None, fleet.now) for _ in range(3)]
        assert allotted("max_queue") <= 12 and allotted("max_connections") <= 9
        assert sum(c.usage(0, fleet.now)["connections"] for c in fleet.controllers) <= 9
        assert sum(c.usage(0, fleet.now)["queued"] for c in fleet.controllers) <= 12
    assert opened >= 6  # most of the bound went where the demand was
    # A participant joining now gets a part of what is left at its first round.
    task = SharedAllotment(LocalLedger(fleet.region.segment("ledger"), fleet.clock), "2",
                           peers=3)
    fleet.tasks.append(task)
    fleet.controllers.append(AdmissionController(cfg, fleet.now, task))
    assert task.ready
    fleet.run(0.1)
    assert allotted("max_connections") <= 9
    fleet.close()


def test_presence_counts_the_participants_that_saw_a_client():
    table: dict[str, str] = {}
    assert presence(table, "a", 0.0, ["x", "y"], 5.0) == [1, 1]
    assert presence(table, "b", 1.0, ["x"], 5.0) == [2]
    assert presence(table, "a", 2.0, ["x"], 5.0) == [2]
    assert presence(table, "a", 6.5, ["x", "y"], 5.0) == [1, 1]  # b's sight expired
    sweep_presence(table, 20.0)
    assert table == {}


def test_an_orderly_stop_gives_its_leases_back_before_the_ttl():
    import asyncio

    from gateway.shared.ledger import give_back

    fleet = Fleet(config([school("a", max_inflight=6)]), 2, ttl=5.0)
    c0, c1 = fleet.controllers
    fleet.run(0.5)
    held = [c0.request(0, 0, None, fleet.now) for _ in range(6)]
    fleet.run(1.0)
    assert sum(t.state == ADMITTED for t in held) == 6
    for t in held:
        c0.release(t, fleet.now)
    waiting = [c1.request(0, 0, None, fleet.now) for _ in range(6)]
    # Participant 0 drained and stops: its last round gives everything back,
    # so participant 1 has all six slots well within the ttl.
    asyncio.run(give_back(fleet.tasks[0]))
    fleet.controllers = [c1]
    fleet.run(0.5)
    assert sum(t.state == ADMITTED for t in waiting) == 6
    fleet.close()
