"""Limits shared by the workers of one instance (shared memory) and by the
instances naming one Redis: real gateways, real redis-server processes on
free ports, a counting upstream that records the most requests it held at
once. Each test runs for a few seconds."""

from __future__ import annotations

import asyncio
import http.client
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.admission.sharing import Report, SlotOp, TokenOp, claim, gcra
from gateway.shared.ledger import RedisLedger
from tests.support.procs import Gateway, free_port, render_toml
from tests.support.redis_server import RedisServer

# Tests that need redis-server fail when it is missing (RedisServer.start):
# CI installs it, so a skip would hide a broken setup.
pytestmark = [pytest.mark.redis]


class Counting:
    """An upstream that answers after `delay` seconds and counts, per Host,
    the requests it holds at once (peak) and in all."""

    def __init__(self, delay: float = 0.05) -> None:
        self.lock = threading.Lock()
        self.inflight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.pool_inflight = 0
        self.pool_peak = 0
        # Per path (the class a request belongs to): held at once, peak.
        self.path_inflight: dict[str, int] = {}
        self.path_peak: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                host = self.headers.get("Host", "")
                path = self.path
                with outer.lock:
                    outer.path_inflight[path] = outer.path_inflight.get(path, 0) + 1
                    outer.path_peak[path] = max(outer.path_peak.get(path, 0),
                                                outer.path_inflight[path])
                    outer.inflight[host] = outer.inflight.get(host, 0) + 1
                    outer.peak[host] = max(outer.peak.get(host, 0), outer.inflight[host])
                    outer.total[host] = outer.total.get(host, 0) + 1
                    outer.pool_inflight += 1
                    outer.pool_peak = max(outer.pool_peak, outer.pool_inflight)
                time.sleep(delay)
                with outer.lock:
                    outer.inflight[host] -= 1
                    outer.pool_inflight -= 1
                    outer.path_inflight[path] -= 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 512  # the gateway opens many at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"

    def reset(self) -> None:
        with self.lock:
            self.peak = dict(self.inflight)
            self.total = {}
            self.pool_peak = self.pool_inflight
            self.path_peak = dict(self.path_inflight)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting():
    up = Counting()
    yield up
    up.close()


@pytest.fixture
def redis_server(procs, tmp_path):
    server = RedisServer(tmp_path)
    procs.append(server)
    return server.start()


def school(name: str, up: Counting, **kw) -> dict:
    return {"name": name, "hosts": [f"{name}.test"], "upstreams": [up.addr], **kw}


def start_gateway(procs, tmp_path: Path, name: str, schools: list, *, workers: int = 2,
                  redis_url: str = "", pools: list | None = None,
                  classes: list | None = None, admin: bool = False) -> Gateway:
    config = {"server": {"listen": f"127.0.0.1:{free_port()}", "workers": workers,
                         **({"admin_listen": f"127.0.0.1:{free_port()}"} if admin else {})},
              "redis": {"url": redis_url, "lease_ttl": 2.0},
              "classes": classes or [{"name": "web", "max_wait": 30.0}],
              "schools": schools}
    if pools:
        config["pools"] = pools
    gw = Gateway(render_toml(config), tmp_path, name=name)
    procs.append(gw)
    return gw.start()


def admitted_over(counting, host: str, *, warmup: float, seconds: float) -> tuple[int, float]:
    """Requests for `host` the upstream counted over about `seconds`, after
    `warmup` seconds of load: (count, the seconds actually measured)."""
    time.sleep(warmup)
    counting.reset()
    start = time.monotonic()
    time.sleep(seconds)
    with counting.lock:
        got = counting.total.get(host, 0)
    return got, time.monotonic() - start


class Load:
    """`clients` threads per (gateway, host[, path]), each sending GETs one
    after the other on a fresh connection; counts the statuses and keeps
    each request's (start, seconds it took, status)."""

    def __init__(self, targets: list[tuple], clients: int) -> None:
        self.codes: dict[int, int] = {}
        self.errors = 0
        self.bodies: list = []
        self.latencies: list[tuple[float, float, int]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=t, daemon=True)
                        for t in targets for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, port: int, host: str, path: str = "/x") -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            start = time.monotonic()
            try:
                conn.request("GET", path, headers={"Host": host, "Accept": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.errors += 1
                time.sleep(0.05)
                continue
            finally:
                conn.close()
            with self.lock:
                self.latencies.append((start, time.monotonic() - start, resp.status))
                self.codes[resp.status] = self.codes.get(resp.status, 0) + 1
                if resp.status != 200 and len(self.bodies) < 3:
                    text = body.decode(errors="replace").split("</style>")[-1]
                    self.bodies.append((resp.status, host, re.sub(r"<[^>]*>|\s+", " ", text)[:300]))

    def finish(self) -> dict[int, int]:
        self.stop.set()
        for t in self.threads:
            t.join(35)
        return self.codes


def test_two_instances_of_two_workers_hold_a_schools_and_a_pools_limit(
        procs, tmp_path, counting, redis_server):
    schools = [school("a", counting, max_inflight=4),
               school("b", counting, pool="p"), school("c", counting, pool="p", weight=3.0)]
    pools = [{"name": "p", "max_inflight": 6}]
    gws = [start_gateway(procs, tmp_path, f"gw{i}", schools, redis_url=redis_server.url,
                         pools=pools) for i in range(2)]
    load = Load([(gw.port, h) for gw in gws for h in ("a.test", "b.test", "c.test")], 6)
    time.sleep(1.0)
    counting.reset()
    time.sleep(3.0)
    codes = load.finish()
    assert counting.peak["a.test"] <= 4
    assert counting.peak["b.test"] + counting.peak["c.test"] >= 6  # the pool was busy
    # The pool as a whole: b and c together.
    with counting.lock:
        pool_total = counting.total.get("b.test", 0) + counting.total.get("c.test", 0)
    assert codes.get(200, 0) > 0 and set(codes) == {200}, load.bodies
    # The weight-3 school got more of the pool than the weight-1 school.
    assert counting.total["c.test"] > 1.5 * counting.total["b.test"], counting.total
    assert pool_total > 0
    assert counting.peak["a.test"] >= 3  # the limit was used, across instances


def test_pool_peak_never_exceeds_its_limit(procs, tmp_path, counting, redis_server):
    schools = [school(f"s{i}", counting, pool="p") for i in range(4)]
    gws = [start_gateway(procs, tmp_path, f"gw{i}", schools, redis_url=redis_server.url,
                         pools=[{"name": "p", "max_inflight": 5}]) for i in range(2)]
    load = Load([(gw.port, f"s{i}.test") for gw in gws for i in range(4)], 3)
    time.sleep(0.5)
    counting.reset()
    time.sleep(3.0)
    codes = load.finish()
    assert counting.pool_peak <= 5
    assert counting.pool_peak >= 4
    assert set(codes) == {200}


def test_workers_of_one_instance_share_a_limit_exactly_without_redis(
        procs, tmp_path, counting):
    gw = start_gateway(procs, tmp_path, "gw", [school("a", counting, max_inflight=3)],
                       workers=4)
    load = Load([(gw.port, "a.test")], 16)
    time.sleep(0.5)
    counting.reset()
    time.sleep(3.0)
    codes = load.finish()
    # A static split would give each of 4 workers at least 1 (4 in all) or
    # leave slots idle; shared, the three slots are used and never exceeded.
    assert counting.peak["a.test"] == 3
    assert set(codes) == {200}


def test_token_rate_holds_across_instances(procs, tmp_path, counting, redis_server):
    gws = [start_gateway(procs, tmp_path, f"gw{i}",
                         [school("a", counting, rate=40.0, burst=4)],
                         redis_url=redis_server.url) for i in range(2)]
    load = Load([(gw.port, "a.test") for gw in gws], 6)
    got, elapsed = admitted_over(counting, "a.test", warmup=1.0, seconds=4.0)
    load.finish()
    expected = 40.0 * elapsed
    assert abs(got - expected) <= 0.1 * expected, (got, expected)


def test_a_killed_instances_slots_come_back_within_the_ttl(
        procs, tmp_path, counting, redis_server):
    schools = [school("a", counting, max_inflight=4)]
    gw1 = start_gateway(procs, tmp_path, "gw1", schools, redis_url=redis_server.url)
    gw2 = start_gateway(procs, tmp_path, "gw2", schools, redis_url=redis_server.url)
    load1 = Load([(gw1.port, "a.test")], 8)
    load2 = Load([(gw2.port, "a.test")], 16)
    time.sleep(1.5)
    gw1.stop(sig=signal.SIGKILL)
    load1.finish()
    time.sleep(2.0 + 1.0)  # lease_ttl, and a round or two
    counting.reset()
    time.sleep(1.5)
    codes = load2.finish()
    # Before the kill each instance held about half of the four slots; the
    # survivor now uses more than its half (all four when its two workers'
    # demand peaks together), and never more than the limit.
    assert 3 <= counting.peak["a.test"] <= 4
    assert set(codes) == {200}


def test_redis_stopped_then_continued_keeps_requests_flowing(
        procs, tmp_path, counting, redis_server):
    schools = [school("a", counting, max_inflight=4)]
    gws = [start_gateway(procs, tmp_path, f"gw{i}", schools, redis_url=redis_server.url)
           for i in range(2)]
    load = Load([(gw.port, "a.test") for gw in gws], 6)
    time.sleep(1.0)
    counting.reset()
    before = dict(load.codes)
    redis_server.signal(signal.SIGSTOP)
    try:
        time.sleep(3.0)
        during = {k: v - before.get(k, 0) for k, v in load.codes.items()}
    finally:
        redis_server.signal(signal.SIGCONT)
    time.sleep(2.0)
    codes = load.finish()
    assert during.get(200, 0) > 20  # served under the fallback
    assert set(codes) == {200}  # no error page, no waiting page
    assert counting.peak["a.test"] <= 4  # 4 / 4 participants seen: 1 each
    assert load.errors == 0
    log = gws[0].log()
    assert "falls back" in log and "answers again" in log


@pytest.mark.xfail(strict=False, reason=(
    "known gap: after Redis restarts empty, a participant that held no lease may report "
    "first and take its fair part during the grace while the others' old leases are still "
    "in use (peak 5 of 4 seen once in four runs on a loaded machine); the fix needs the "
    "ledger to tell a lost table from a new one (sharing.claim and the Lua ROUND)"))
def test_redis_restarted_empty_rebuilds_without_a_burst(procs, tmp_path, counting,
                                                        redis_server):
    schools = [school("a", counting, max_inflight=4)]
    gws = [start_gateway(procs, tmp_path, f"gw{i}", schools, redis_url=redis_server.url)
           for i in range(2)]
    load = Load([(gw.port, "a.test") for gw in gws], 6)
    time.sleep(1.0)
    counting.reset()
    redis_server.stop(sig=signal.SIGKILL)
    redis_server.start()  # same port, nothing kept
    time.sleep(3.0)
    codes = load.finish()
    assert counting.peak["a.test"] <= 4
    assert set(codes) == {200}


# -- the Lua script against the Python steps -----------------------------------

CLAIMS = [
    # (other leases as (held, inuse, expires in s), limit, want, allot, inuse, cap, grace, age)
    ([], 10, 4, 0, 0, 10, 0.0),
    ([(6, 6, 100)], 10, 8, 0, 0, 10, 0.0),
    ([(6, 8, 100)], 10, 8, 0, 0, 10, 0.0),  # in use above held counts
    ([(6, 6, -1)], 10, 8, 0, 0, 10, 0.0),  # expired: dropped
    ([(3, 0, 100), (3, 1, 100)], 5, 4, 2, 2, 5, 0.0),  # over already: nothing
    ([], 10, 9, 2, 1, 3, 100.0),  # young table: the cap
    ([(0, 0, 100)], 0, 3, 0, 0, 0, 0.0),
]


def test_the_lua_round_is_the_python_round(redis_server):
    import redis

    from gateway.config.schema import Redis
    from gateway.shared.redis import client

    async def main() -> tuple[list, list]:

        c = client(Redis(url=redis_server.url))
        sync = redis.Redis.from_url(redis_server.url)
        ledger = RedisLedger(c, "t:")
        out = []
        for n, (leases, limit, want, allot, inuse, cap, grace) in enumerate(CLAIMS):
            sec, usec = sync.time()
            now = sec + usec / 1e6
            key = f"t:{{s{n}}}:slots"
            table = {}
            for j, (h, u, exp) in enumerate(leases):
                table[f"q{j}"] = f"{h}|{u}|{now + exp:.6f}|1"
            born = now - 1000.0 if grace == 0.0 else now
            table["_born"] = f"{born:.6f}"
            if table:
                sync.hset(key, mapping=table)
            op = SlotOp(f"s{n}", "slots", limit, want, allot, inuse, cap, "7")
            report = Report("me", 5.0, grace, [op])
            [ans] = await ledger.round(report)
            py = dict(table)
            grant, _, others = claim(py, "me", now, limit=limit, want=want, allot=allot,
                                     inuse=inuse, cap=cap, spec="7", ttl=5.0, grace=grace)
            stored = {k.decode(): v.decode() for k, v in sync.hgetall(key).items()}
            out.append((n, ans.grant, grant, sorted(ans.others), sorted(others),
                        stored["me"].split("|")[:2], py["me"].split("|")[:2]))
        # Token buckets: a fresh bucket, a taken one, a given-back one.
        tok = []
        for take, give in ((10, 0.0), (3, 0.0), (5, 2.0)):
            op = TokenOp("tb", "tat", 20.0, 5.0, take, give)
            [a] = await ledger.round(Report("me", 5.0, 0.0, [op]))
            tok.append(a.taken)
        await c.aclose()
        sync.close()
        return out, tok

    rows, tokens = asyncio.run(main())
    for n, lua_grant, py_grant, lua_others, py_others, lua_me, py_me in rows:
        assert lua_grant == py_grant, n
        assert lua_others == py_others, n
        assert lua_me == py_me, n
    # Python's gcra on the same sequence (the three rounds are microseconds
    # apart: no refill between them to speak of).
    tat, py = None, []
    for take, give in ((10, 0.0), (3, 0.0), (5, 2.0)):
        tat, got = gcra(tat, 0.0, rate=20.0, burst=5.0, take=take, give=give)
        py.append(got)
    assert tokens == py


# -- class shares, client buckets, connections, max_wait under an outage ---------


def fleet_of(mode: str, request, procs, tmp_path: Path, schools: list, **kw) -> list[Gateway]:
    """One instance of four workers sharing through shared memory ("shm"),
    or two instances of two workers sharing through one Redis ("redis")."""
    if mode == "shm":
        return [start_gateway(procs, tmp_path, "gw", schools, workers=4, **kw)]
    url = request.getfixturevalue("redis_server").url
    return [start_gateway(procs, tmp_path, f"gw{i}", schools, redis_url=url, **kw)
            for i in range(2)]


BULK = [{"name": "bulk", "max_wait": 30.0, "max_share": 0.25,
         "match": {"paths": ["/bulk"]}},
        {"name": "web", "max_wait": 30.0}]


@pytest.mark.parametrize("mode", ["shm", "redis"])
def test_a_class_share_holds_for_a_school_and_a_pool_across_the_fleet(
        mode, request, procs, tmp_path, counting):
    # bulk may use a quarter of school a's 8 slots (2) and a quarter of pool
    # p's 8 (2 over its four schools together), fleet-wide. Enforced per
    # participant, each of 4 would hold at least one: 4 and, in the pool,
    # 4 per school.
    schools = [school("a", counting, max_inflight=8)] + [
        school(f"p{i}", counting, pool="p") for i in range(4)]
    gws = fleet_of(mode, request, procs, tmp_path, schools,
                   pools=[{"name": "p", "max_inflight": 8}], classes=BULK)
    hosts = ["a.test"] + [f"p{i}.test" for i in range(4)]
    targets = [(gw.port, h, path) for gw in gws for h in hosts
               for path in ("/bulk/a" if h == "a.test" else "/bulk/p", "/web")]
    load = Load(targets, 3 if mode == "redis" else 6)
    time.sleep(1.0)
    counting.reset()
    time.sleep(3.0)
    codes = load.finish()
    assert set(codes) == {200}, load.bodies
    assert counting.path_peak["/bulk/a"] == 2
    assert counting.path_peak["/bulk/p"] == 2
    assert counting.peak["a.test"] <= 8 and counting.pool_peak <= 16


@pytest.mark.parametrize("mode", ["shm", "redis"])
def test_a_clients_rate_holds_across_the_fleet(mode, request, procs, tmp_path, counting):
    # Every request comes from 127.0.0.1: one client, 10 requests/s with a
    # burst of 5, whichever worker or instance its connections land on.
    gws = fleet_of(mode, request, procs, tmp_path,
                   [school("a", counting, client_rate=10.0, client_burst=5)])
    load = Load([(gw.port, "a.test") for gw in gws], 8 // len(gws))
    got, elapsed = admitted_over(counting, "a.test", warmup=1.5, seconds=4.0)
    codes = load.finish()
    expected = 10.0 * elapsed  # each worker on its own would admit 10/s
    # Never more than the client's rate (and its burst) in the whole fleet.
    # Less when its connections land unevenly: each worker that saw it holds
    # its part of the bucket, and a part nobody uses meanwhile fills up.
    assert got <= 1.05 * expected + 5, (got, expected)
    assert got >= 0.5 * expected, (got, expected, codes)  # not starved either
    assert 200 in codes


def test_max_connections_holds_across_instances(procs, tmp_path, counting, redis_server):
    # Six connections of school a in the whole fleet: keep-alive
    # connections opened one after another at both instances; those past
    # the bound get the busy page and are closed, the others stay counted.
    schools = [school("a", counting, max_connections=6)]
    gws = [start_gateway(procs, tmp_path, f"gw{i}", schools, redis_url=redis_server.url)
           for i in range(2)]
    kept: list[http.client.HTTPConnection] = []
    refused = 0
    try:
        for n in range(16):
            gw = gws[n % 2]
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            conn.request("GET", "/x", headers={"Host": "a.test", "Accept": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                kept.append(conn)
            else:
                refused += 1
                conn.close()
            time.sleep(0.3)  # a few rounds: leases follow the demand
        assert len(kept) <= 6
        assert len(kept) >= 4, refused  # the bound is used, across both instances
        # The kept connections are still counted and still served.
        for conn in kept:
            conn.request("GET", "/x", headers={"Host": "a.test"})
            assert conn.getresponse().read() == b"ok"
    finally:
        for conn in kept:
            conn.close()


def test_no_request_waits_past_max_wait_while_redis_is_stopped(
        procs, tmp_path, counting, redis_server):
    # max_wait 2 s. Redis stops for 3 s under load and continues: decisions
    # never wait on it, so every request is answered within its max_wait
    # (plus the upstream's time), and never with an error or waiting page.
    schools = [school("a", counting, max_inflight=4)]
    classes = [{"name": "web", "max_wait": 2.0}]
    gws = [start_gateway(procs, tmp_path, f"gw{i}", schools, redis_url=redis_server.url,
                         classes=classes) for i in range(2)]
    load = Load([(gw.port, "a.test") for gw in gws], 4)
    time.sleep(1.0)
    stopped = time.monotonic()
    redis_server.signal(signal.SIGSTOP)
    try:
        time.sleep(3.0)
    finally:
        redis_server.signal(signal.SIGCONT)
    continued = time.monotonic()
    time.sleep(1.5)
    codes = load.finish()
    assert set(codes) == {200}, load.bodies
    assert load.errors == 0
    during = [(lat, st) for start, lat, st in load.latencies if stopped <= start < continued]
    assert len(during) > 20  # served under the fallback
    # 2 s of max_wait; the upstream takes 0.05 s; the load threads' own
    # scheduling is the rest of the slack.
    assert max(lat for _, lat, _ in load.latencies) < 2.0 + 0.5, sorted(
        lat for _, lat, _ in load.latencies)[-5:]
    assert counting.peak["a.test"] <= 4


def test_the_lua_presence_round_is_the_python_one(redis_server):
    from gateway.admission.sharing import ClientOp, presence
    from gateway.config.schema import Redis
    from gateway.shared.redis import client

    steps = [("a", ["x", "y"]), ("b", ["x"]), ("c", ["x", "z"]), ("a", ["x", "y", "z"])]

    async def main() -> list[list[int]]:
        c = client(Redis(url=redis_server.url))
        ledger = RedisLedger(c, "t:")
        out = []
        for me, keys in steps:
            [ans] = await ledger.round(Report(me, 5.0, 0.0, [ClientOp("s", "clients", keys,
                                                                      30.0)]))
            out.append(ans.counts)
        await c.aclose()
        return out

    lua = asyncio.run(main())
    table: dict[str, str] = {}
    # The rounds ran microseconds apart: nobody's 30 s window ran out.
    py = [presence(table, me, 0.0, keys, 30.0) for me, keys in steps]
    assert lua == py == [[1, 1], [2], [3, 1], [3, 1, 2]]


# -- what the admin listener shows of shared limits --------------------------------


def scrape(gw: Gateway) -> dict[str, float]:
    """/metrics as "name{label=value,...}" -> value (prometheus_client's parser)."""
    resp = httpx.get(gw.admin_url + "/metrics", timeout=5)
    assert resp.status_code == 200
    return {s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def status(gw: Gateway) -> dict:
    resp = httpx.get(gw.admin_url + "/status.json", timeout=5)
    assert resp.status_code == 200
    return resp.json()


def wait_for(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_two_workers_show_the_configured_limit_and_the_memory_store(
        procs, tmp_path, counting):
    schools = [school("a", counting, max_inflight=4)]
    gw = start_gateway(procs, tmp_path, "gw", schools, admin=True)
    load = Load([(gw.port, "a.test")], 8)
    try:
        assert wait_for(lambda: scrape(gw).get("schoolgate_workers") == 2)
        time.sleep(1.0)
        m = scrape(gw)
        st = status(gw)
    finally:
        load.finish()
    assert m["schoolgate_school_max_inflight{school=a}"] == 4
    assert m["schoolgate_school_max_queue{school=a}"] == 1000
    assert 0 <= m["schoolgate_school_inflight_allotment{school=a}"] <= 4
    assert m["schoolgate_shared_limits{store=memory}"] == 1
    assert m["schoolgate_shared_limits_fallback"] == 0
    a = st["schools"][0]
    assert (a["max_inflight"], a["max_queue"]) == (4, 1000)
    assert st["shared"]["store"] == "memory" and st["shared"]["workers"] == 2


def test_two_instances_show_the_configured_limit_and_their_own_lease(
        procs, tmp_path, counting, redis_server):
    # The newcomer's case: A full, B idle, max_inflight = 4 shared through
    # Redis. B showed "0 / 0" and A "4 / 2"; both must show the limit, 4.
    schools = [school("a", counting, max_inflight=4)]
    gws = [start_gateway(procs, tmp_path, f"gw{i}", schools, redis_url=redis_server.url,
                         admin=True) for i in range(2)]
    load = Load([(gws[0].port, "a.test")], 8)
    try:
        for gw in gws:
            assert wait_for(lambda gw=gw: scrape(gw).get(
                "schoolgate_shared_limits_participants") == 4)
        time.sleep(1.5)  # a few rounds: the leases follow A's demand
        found = [scrape(gw) for gw in gws]
        states = [status(gw) for gw in gws]
    finally:
        load.finish()
    for m, st in zip(found, states, strict=True):
        assert m["schoolgate_school_max_inflight{school=a}"] == 4
        assert m["schoolgate_school_max_queue{school=a}"] == 1000
        assert m["schoolgate_shared_limits{store=redis}"] == 1
        assert m["schoolgate_shared_limits_fallback"] == 0
        a = st["schools"][0]
        assert (a["max_inflight"], a["max_queue"]) == (4, 1000)
        assert st["shared"]["store"] == "redis" and st["redis"] is True
    # The leases: never more than the limit between them, and the busy
    # instance holds more than the idle one.
    allots = [m["schoolgate_school_inflight_allotment{school=a}"] for m in found]
    assert sum(allots) <= 4 and allots[0] > allots[1], allots
    queues = [m["schoolgate_school_queue_allotment{school=a}"] for m in found]
    assert sum(queues) <= 1000, queues


def test_a_redis_outage_is_logged_once_per_worker_and_shown_as_a_metric(
        procs, tmp_path, counting, redis_server):
    # Redis stopped (SIGSTOP: rounds time out) and later killed and started
    # again empty (rounds refused) under load: each worker says once that
    # it falls back and once that the ledger answers again, per outage; the
    # failed rounds are counted, not logged; no pipeline is left unclosed
    # ("ERROR ... Unclosed Pipeline client").
    schools = [school("a", counting, max_inflight=4)]
    gws = [start_gateway(procs, tmp_path, f"gw{i}", schools, redis_url=redis_server.url,
                         admin=True) for i in range(2)]
    load = Load([(gw.port, "a.test") for gw in gws], 4)
    try:
        time.sleep(1.0)
        redis_server.signal(signal.SIGSTOP)
        try:
            assert wait_for(lambda: scrape(gws[0])["schoolgate_shared_limits_fallback"] == 2)
            m = scrape(gws[0])
            assert "fallback" in status(gws[0])["shared"] and \
                status(gws[0])["shared"]["fallback"] == 2
            time.sleep(2.0)
        finally:
            redis_server.signal(signal.SIGCONT)
        assert wait_for(lambda: scrape(gws[0])["schoolgate_shared_limits_fallback"] == 0)
        redis_server.stop(sig=signal.SIGKILL)
        assert wait_for(lambda: scrape(gws[0])["schoolgate_shared_limits_fallback"] == 2)
        time.sleep(2.0)
        redis_server.start()  # same port, nothing kept
        assert wait_for(lambda: scrape(gws[0])["schoolgate_shared_limits_fallback"] == 0)
        time.sleep(0.5)
        after = scrape(gws[0])
    finally:
        codes = load.finish()
    assert set(codes) == {200}, load.bodies
    assert m["schoolgate_shared_limits_fallbacks_total"] >= 2
    assert after["schoolgate_shared_limits_fallbacks_total"] >= 4  # two outages, two workers
    assert after["schoolgate_shared_limits_errors_total"] > 0
    for gw in gws:
        log = gw.log()
        assert "Unclosed" not in log, log[-3000:]
        assert "round failed" not in log
        assert " ERROR " not in log, [line for line in log.splitlines() if " ERROR " in line]
        pids = set(re.findall(r" (\d+) INFO schoolgate\.worker: worker \d+ serving", log))
        assert len(pids) == 2
        for pid in pids:
            down = len(re.findall(rf" {pid} WARNING schoolgate\.sharing: .*falls back", log))
            up = len(re.findall(rf" {pid} WARNING schoolgate\.sharing: .*answers again", log))
            # Two outages: a line each way for each, none in between.
            assert down == up == 2, (pid, down, up)
