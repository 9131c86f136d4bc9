"""The telemetry pieces without sockets: the native Stats arrays, the
admin side's sum over workers (a gone worker's counts stay), the Prometheus
collector's output read back with prometheus_client's parser, and the
admin listener's config keys."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway._native.stats import (
    DURATION_BUCKETS,
    MAX_CODES,
    PAGE_429,
    PAGE_WAITING,
    WAIT_BUCKETS,
    Stats,
)
from gateway.config import ConfigError, parse_config
from gateway.server.telemetry import (
    Aggregate,
    GatewayCollector,
    LineState,
    PoolState,
    SchoolState,
    SharedState,
    Snapshot,
    UpstreamState,
    WaitingPageRate,
    school_status,
)

SCHOOL = """
[[schools]]
name = "a"
hosts = ["a.example.org"]
upstreams = ["127.0.0.1:9000"]
"""


def test_stats_count_by_name_across_a_renumbering_reload():
    st = Stats(["a", "b"], ["interactive", "bulk"])
    st.add(0, 0, 200, 0.003)
    st.add(1, 1, 429, 0.2, 1.5)
    st.add(-1, -1, 421, 0.0)
    st.count_page(1, 1, PAGE_429)
    # A reload: "b" first, "a" removed, a new class before the old ones.
    st.set_layout(["b", "c"], ["submit", "interactive", "bulk"])
    st.add(0, 2, 429, 0.2)
    st.add(1, 0, 200, 20.0)
    st.count_page(0, 1, PAGE_WAITING)
    out = st.export()
    assert sorted(out["requests"]) == [("", "", 421, 1), ("a", "interactive", 200, 1),
                                       ("b", "bulk", 429, 2), ("c", "submit", 200, 1)]
    duration = {(s, c): (b, total) for s, c, b, total in out["duration"]}
    assert len(duration[("b", "bulk")][0]) == len(DURATION_BUCKETS) + 1
    # 0.2 s twice: both in the 0.25 bucket; 20 s in the 30 bucket.
    assert duration[("b", "bulk")][0][DURATION_BUCKETS.index(0.25)] == 2
    assert duration[("b", "bulk")][1] == pytest.approx(0.4)
    assert duration[("c", "submit")][0][DURATION_BUCKETS.index(30.0)] == 1
    # Only the request that waited for a slot is in the wait histogram.
    assert [(s, c, b[WAIT_BUCKETS.index(2.5)], w) for s, c, b, w in out["wait"]] == \
        [("b", "bulk", 1, 1.5)]
    assert sorted(out["pages"]) == [("b", "bulk", PAGE_429, 1),
                                    ("b", "interactive", PAGE_WAITING, 1)]
    with pytest.raises(ValueError):
        st.count_page(0, 0, 7)


def test_stats_count_codes_beyond_the_limit_as_other():
    st = Stats(["a"], ["k"])
    for code in range(200, 200 + MAX_CODES + 5):
        st.add(0, 0, code, 0.0)
    st.add(0, 0, 999, 0.0)
    codes = {code: n for _, _, code, n in st.export()["requests"]}
    assert sum(codes.values()) == MAX_CODES + 6
    assert len(codes) == MAX_CODES
    assert codes[0] == 7  # six codes past the limit and the out-of-range one


def snap(pid: int, requests: int, inflight: int, up: bool = True) -> Snapshot:
    return Snapshot(
        worker=0, pid=pid, answers=0, admission=True, connections_total=requests,
        connections_open=inflight,
        local_responses={503: 1}, requests=[("a", "interactive", 200, requests)],
        duration=[("a", "interactive", [requests] + [0] * len(DURATION_BUCKETS), 0.5)],
        wait=[], pages=[("a", "interactive", PAGE_WAITING, 1)],
        schools=[SchoolState(name="a", inflight=inflight, max_inflight=4, connections=1,
                             max_connections=None, max_queue=10, queued={"interactive": 2},
                             admitted={"interactive": requests}, rejected={"interactive": 1},
                             cancelled=0, admission_rate=1.5, estimated_wait=3.0)],
        upstreams=[UpstreamState(addr="127.0.0.1:9000", up=up, inflight=inflight,
                                 connect_failures=1, retries=0, timeouts=0)],
        spools=[0, 0, 0, 0, 0, 0])


def samples(agg: Aggregate) -> dict[tuple[str, frozenset], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(agg))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(found, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls)


def test_the_sum_keeps_a_gone_workers_counts_and_drops_its_gauges():
    agg = Aggregate()
    agg.update(1, snap(100, 5, 1))
    agg.update(2, snap(101, 7, 2, up=False))
    s = samples(agg)
    assert value(s, "schoolgate_requests_total", school="a", code="200") == 12
    assert value(s, "schoolgate_request_duration_seconds_count", school="a") == 12
    assert value(s, "schoolgate_request_duration_seconds_bucket", school="a", le="+Inf") == 12
    assert value(s, "schoolgate_request_duration_seconds_sum", school="a") == 1.0
    assert value(s, "schoolgate_school_inflight", school="a") == 3
    # The workers' allotments add up; the configured limit is not theirs
    # to say (test_the_limit_shown_is_the_configured_one_not_the_lease).
    assert value(s, "schoolgate_school_inflight_allotment", school="a") == 8
    assert value(s, "schoolgate_school_queued", school="a", **{"class": "interactive"}) == 4
    assert value(s, "schoolgate_school_estimated_wait_seconds", school="a") == 3.0
    assert value(s, "schoolgate_upstream_up", upstream="127.0.0.1:9000") == 0
    assert value(s, "schoolgate_upstream_connect_failures_total",
                 upstream="127.0.0.1:9000") == 2
    assert value(s, "schoolgate_waiting_pages_total", school="a") == 2
    assert value(s, "schoolgate_local_responses_total", status="503") == 2
    agg.gone(2)  # worker 101 exited: its counts stay, its gauges go
    agg.update(3, snap(102, 1, 0))  # its replacement starts from zero
    s = samples(agg)
    assert value(s, "schoolgate_requests_total", school="a") == 13
    assert value(s, "schoolgate_school_admitted_total", school="a") == 13
    assert value(s, "schoolgate_school_inflight", school="a") == 1
    assert value(s, "schoolgate_upstream_up", upstream="127.0.0.1:9000") == 1
    assert value(s, "schoolgate_worker_exits_total") == 1
    assert value(s, "schoolgate_workers") == 2


LIMITS = """
[admission]
max_queue = 1000

[[pools]]
name = "p"
max_inflight = 6

[[schools]]
name = "a"
hosts = ["a.example.org"]
upstreams = ["127.0.0.1:9000"]
max_inflight = 4
max_connections = 50
pool = "p"
"""


def leased(pid: int, inflight: int, allot: int, queue: int, fallback: bool = False,
           store: str = "redis") -> Snapshot:
    s = snap(pid, 1, inflight)
    st = s.schools[0]
    st.max_inflight, st.max_connections, st.max_queue = allot, 10, queue
    s.pools = [PoolState(name="p", inflight=inflight, allotment=allot + 1)]
    s.shared = SharedState(store=store, fallback=fallback, fallbacks=2 if fallback else 1,
                           errors=7 if fallback else 0, participants=4)
    return s


def test_the_limit_shown_is_the_configured_one_not_the_lease():
    # The newcomer's two instances of two workers sharing max_inflight = 4
    # through Redis: A (full) holds all four slots, 2 per worker; B holds
    # none. Both show the limit 4 (B showed "0 / 0", A "4 / 2", and
    # max_queue about 500 of 1000), and each its own lease apart.
    cfg = parse_config(LIMITS.encode(), "gateway.toml")
    a, b = Aggregate(cfg), Aggregate(cfg)
    a.update(1, leased(100, 2, 2, 250))
    a.update(2, leased(101, 2, 2, 250))
    b.update(1, leased(200, 0, 0, 250, fallback=True))
    b.update(2, leased(201, 0, 0, 250))
    for agg, allot, inflight in ((a, 4, 4), (b, 0, 0)):
        s = samples(agg)
        assert value(s, "schoolgate_school_max_inflight", school="a") == 4
        assert value(s, "schoolgate_school_inflight_allotment", school="a") == allot
        assert value(s, "schoolgate_school_inflight", school="a") == inflight
        assert value(s, "schoolgate_school_max_connections", school="a") == 50
        assert value(s, "schoolgate_school_connections_allotment", school="a") == 20
        assert value(s, "schoolgate_school_max_queue", school="a") == 1000
        assert value(s, "schoolgate_school_queue_allotment", school="a") == 500
        assert value(s, "schoolgate_pool_max_inflight", pool="p") == 6
        assert value(s, "schoolgate_pool_inflight_allotment", pool="p") == allot + 2
        assert value(s, "schoolgate_shared_limits", store="redis") == 1
        assert value(s, "schoolgate_shared_limits_participants") == 4
        status = school_status(cfg, agg, WaitingPageRate())
        sa = status["schools"][0]
        assert (sa["inflight"], sa["max_inflight"], sa["inflight_allotment"]) == \
            (inflight, 4, allot)
        assert (sa["max_queue"], sa["queue_allotment"]) == (1000, 500)
        assert status["pools"] == [{"name": "p", "inflight": inflight, "max_inflight": 6,
                                    "allotment": allot + 2}]
        assert status["shared"]["store"] == "redis"
    # B's first worker is failing static: said as a gauge, counted.
    s = samples(b)
    assert value(s, "schoolgate_shared_limits_fallback") == 1
    assert value(s, "schoolgate_shared_limits_fallbacks_total") == 3
    assert value(s, "schoolgate_shared_limits_errors_total") == 7
    assert school_status(cfg, b, WaitingPageRate())["shared"]["fallback"] == 1
    assert value(samples(a), "schoolgate_shared_limits_fallback") == 0
    # A worker that exits keeps its counts in the totals.
    b.gone(1)
    s = samples(b)
    assert value(s, "schoolgate_shared_limits_fallbacks_total") == 3
    assert value(s, "schoolgate_shared_limits_fallback") == 0
    # A reload that changes the limit shows the new one at once.
    b.cfg = parse_config(LIMITS.replace("max_inflight = 4", "max_inflight = 9").encode(),
                         "gateway.toml")
    assert value(samples(b), "schoolgate_school_max_inflight", school="a") == 9


def test_without_shared_limits_nothing_says_shared():
    cfg = parse_config(LIMITS.encode(), "gateway.toml")
    agg = Aggregate(cfg)
    agg.update(1, snap(100, 1, 1))
    s = samples(agg)
    assert not [k for k in s if k[0] == "schoolgate_shared_limits"]
    assert value(s, "schoolgate_shared_limits_fallback") == 0
    assert school_status(cfg, agg, WaitingPageRate())["shared"] is None


def test_the_shared_line_is_taken_once_from_the_freshest_worker_never_summed():
    # Two workers' copies of one shared line: the later one stands for it
    # (a sum would count every waiting visitor twice).
    def with_line(pid: int, synced_at: float, waiting: int, called: int) -> Snapshot:
        s = snap(pid, 1, 0)
        s.schools[0].queued = {"interactive": 0}
        s.schools[0].estimated_wait = 0.0
        s.schools[0].line = LineState(
            synced_at=synced_at, waiting={"interactive": waiting}, called=called,
            now_serving=40 + called, last_ticket=40 + called + waiting,
            estimated_wait=waiting / 2.0, admission_rate=2.0, shared=True)
        return s

    agg = Aggregate()
    agg.update(1, with_line(100, 1000.5, 7, 2))
    agg.update(2, with_line(101, 1000.0, 9, 1))  # an older copy
    s = samples(agg)
    assert value(s, "schoolgate_school_waiting", school="a", **{"class": "interactive"}) == 7
    assert value(s, "schoolgate_school_called", school="a") == 2
    assert value(s, "schoolgate_school_now_serving", school="a") == 42
    assert value(s, "schoolgate_school_last_ticket", school="a") == 49
    assert value(s, "schoolgate_school_line_wait_seconds", school="a") == 3.5
    # The workers' own queues are empty; a newcomer still waits the line.
    assert value(s, "schoolgate_school_queued", school="a") == 0
    assert value(s, "schoolgate_school_estimated_wait_seconds", school="a") == 3.5
    cfg = parse_config(SCHOOL.encode(), "gateway.toml")
    status = school_status(cfg, agg, WaitingPageRate())["schools"][0]
    assert (status["waiting"], status["called"], status["now_serving"],
            status["last_ticket"], status["estimated_wait"]) == \
        ({"interactive": 7}, 2, 42, 49, 3.5)
    # The fresher worker gone: the other's copy is the line now.
    agg.gone(1)
    s = samples(agg)
    assert value(s, "schoolgate_school_waiting", school="a") == 9
    # A snapshot without a line (admission off) adds nobody waiting.
    agg = Aggregate()
    agg.update(1, snap(100, 1, 0))
    s = samples(agg)
    assert value(s, "schoolgate_school_waiting", school="a") == 0
    assert value(s, "schoolgate_school_called", school="a") == 0


def test_waiting_pages_per_minute_from_the_last_minute():
    rate = WaitingPageRate()
    key = ("pages", "a", "interactive", str(PAGE_WAITING))
    rate.sample(0.0, {key: 10})
    assert rate.per_minute("a") == 0.0
    rate.sample(30.0, {key: 40})
    assert rate.per_minute("a") == 60.0
    rate.sample(120.0, {key: 40})
    # The samples older than a minute are dropped but one (the rate's start).
    assert rate.per_minute("a") == pytest.approx(0.0)


def parse(server: str):
    return parse_config(f"[server]\nlisten = \"127.0.0.1:8080\"\n{server}\n{SCHOOL}".encode(),
                        "gw.toml")


def test_admin_listen_port_alone_means_loopback():
    assert parse('admin_listen = "9100"').server.admin_listen == "127.0.0.1:9100"
    assert parse('admin_listen = ":9100"').server.admin_listen == "127.0.0.1:9100"
    assert parse('admin_listen = "[::1]:9100"').server.admin_listen == "[::1]:9100"


def test_a_non_loopback_admin_listen_needs_a_token():
    with pytest.raises(ConfigError, match=r"server\.admin_token.*not a loopback"):
        parse('admin_listen = "0.0.0.0:9100"')
    with pytest.raises(ConfigError, match=r"server\.admin_token.*at least 16 bytes"):
        parse('admin_listen = "0.0.0.0:9100"\nadmin_token = "short"')
    cfg = parse('admin_listen = "0.0.0.0:9100"\nadmin_token = "0123456789abcdef"')
    assert cfg.server.admin_token == "0123456789abcdef"
