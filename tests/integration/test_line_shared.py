"""One waiting line per school across workers and instances (issue 9 point 4).

- Redis: the Lua script keeps the line by the rules of the sans-IO model
  (gateway/waiting/line.py), op for op; two gateway instances naming one
  Redis (and no [admission] secret: the ticket key is the one kept in Redis)
  show one line, and a ticket from instance A is honoured by B, in order.
- Without Redis, four workers of one instance show every visitor the same
  place, whichever worker answers (shared memory).

A `redis-server` is started on a free loopback port per test and killed by
its PID afterwards.
"""

from __future__ import annotations

import asyncio
import random
import select
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from test_admission_room import poll, turned_away
from test_admission_support import (
    HTML_ACCEPT,
    JSON_ACCEPT,
    PROBE_HEADER,
    SECRET,
    classes,
    hold,
    send,
    ticket_cookie,
)

from gateway.waiting import TicketSigner, new_visitor_id
from gateway.waiting.line import Line, apply
from tests.support.clients import request, wait_until
from tests.support.procs import free_port, port_open

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

pytestmark = pytest.mark.usefixtures("admission_connections")


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: port_open(port), 10.0), "redis-server did not start"
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(5)


# -- the script against the model -------------------------------------------------------


def _random_ops(rng: random.Random, vids: list[bytes], worker: str) -> list[tuple]:
    ops: list[tuple] = []
    for _ in range(rng.randint(1, 5)):
        r = rng.random()
        if r < 0.35 or not vids:
            v = b"v%d" % len(vids)
            vids.append(v)
            ops.append(("draw", v, rng.choice([0.0, 10.0, 20.0])))
        elif r < 0.45:
            ops.append(("seen", rng.choice(vids)))
        elif r < 0.52:
            ops.append(("call", rng.choice(vids)))
        elif r < 0.58:
            ops.append(("leave", rng.choice(vids)))
        elif r < 0.64:
            ops.append(("draw", rng.choice(vids), 10.0))  # again: keeps its number
        elif r < 0.70:
            ops.append(("record", rng.randint(0, 5)))
        elif r < 0.76:
            ops.append(("shown", rng.choice(vids), rng.randint(1, 9), rng.randint(0, 3)))
        elif r < 0.84:
            ops.append(("spend", rng.choice(vids)))
        elif r < 0.87:
            ops.append(("unspend", rng.choice(vids)))
        elif r < 0.93:
            ops.append(("call_next", rng.randint(0, 6)))
        else:
            ops.append(("queue", worker, {10.0: rng.randint(0, 3)}, rng.randint(-1, 4)))
    return ops


def _summary(line: Line, vids: list[bytes], now: float) -> tuple:
    return (line.last, line.serving, len(line), line.called(), line.waiting(),
            {v: (e.number, e.urgency, bool(e.called_at), e.shown, e.urgent_ahead, e.polled)
             for v, e in line.by_vid.items()},
            {v: line.ahead(v) for v in vids}, sorted(line.spent),
            sum(line.admissions.values()), line.rate(now), line.free(now))


def test_redis_log_gives_the_models_answers_on_random_traffic(redis_url):
    """Three workers (two stores start at once, one late) append random
    batches to one school's log; every answer, and every worker's copy of
    the line, is what the in-process line gives the same batches in the
    log's order at the log's times."""
    import redis.asyncio as aioredis

    from gateway.waiting.line_store import RedisLineStore, line_keys

    rng = random.Random(9)
    model = Line()
    vids: list[bytes] = []

    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        # A small snapshot threshold and log: snapshots and trimming happen.
        stores = [RedisLineStore(client, "test:", snap_every=25, log_max=400)
                  for _ in range(2)]
        try:
            for step in range(400):
                if step == 150:
                    stores.append(RedisLineStore(client, "test:", snap_every=25, log_max=400))
                k = rng.randrange(len(stores))
                store = stores[k]
                ops = _random_ops(rng, vids, f"w{k}")
                results: dict[str, list] = {}
                lines, offset = await store.aexchange({"s": ops}, 0.0, results)
                at = offset  # the record's Redis time (`now` was 0.0)
                expected = apply(model, ops, at)
                assert results["s"] == expected, (step, ops)
                assert _summary(lines["s"], vids, at) == _summary(model, vids, at), step
            # Every worker's copy, brought up to date, is the same line.
            for store in stores:
                lines, offset = await store.aexchange({"s": []}, 0.0)
                assert _summary(lines["s"], vids, offset) == _summary(model, vids, offset)
            keys = [k.decode() for k in await client.keys("test:*")]
            assert sorted(keys) == sorted(line_keys("test:", "s"))
            # Trimmed: the log keeps the records after the previous snapshot.
            assert await client.llen(line_keys("test:", "s")[1]) < 400
        finally:
            await client.aclose()

    asyncio.run(run())


# -- two instances, one Redis --------------------------------------------------------------


def _instance(make_gateway, gate, redis_url: str, prefix: str):
    # No [admission] secret: the instances share the ticket key kept in Redis.
    # max_inflight is the fleet's (shared through Redis): one slot each while both hold one.
    return make_gateway(upstreams=[gate.addr], school={"max_inflight": 2}, classes=classes(),
                        redis={"url": redis_url, "prefix": prefix, "sync_interval": 0.05})


def _state(port: int, cookie: str) -> tuple[str, int | None]:
    body = poll(port, cookie).json()
    return body["state"], body["position"]


def _called_anywhere(ports: tuple[int, ...], cookie: str) -> bool:
    """The visitor is told "go" (asked at each instance in turn)."""
    return any(_state(port, cookie)[0] == "go" for port in ports)


def test_a_ticket_from_instance_a_is_honoured_by_b_in_order(make_gateway, gate, redis_url):
    a = _instance(make_gateway, gate, redis_url, "fleet:")
    b = _instance(make_gateway, gate, redis_url, "fleet:")
    both = (a.port, b.port)
    hold_a = hold(a.port, gate, "a")
    hold_b = hold(b.port, gate, "b")
    visitors = []
    for port, other in ((a.port, b.port), (b.port, a.port), (a.port, b.port)):
        cookie = ticket_cookie(turned_away(port))
        # Known to the other instance (the shared line) before the next arrives.
        assert wait_until(lambda c=cookie, o=other: _state(o, c)[0] == "wait", 5.0)
        visitors.append(cookie)
    v1, v2, v3 = visitors
    # One line: each visitor has the same place at either instance.
    expected = [("wait", 1), ("wait", 2), ("wait", 3)]
    for port in both:
        assert wait_until(lambda p=port: [_state(p, v) for v in visitors] == expected, 5.0)

    # A slot frees somewhere in the fleet (which instance holds it depends
    # on where the shared limit's leases are, and a lease moving between
    # instances may call one more ahead): the head of the line, who queued
    # at A, is called first, wherever it asks, and the line is called in
    # its order at either instance.
    gate.release("b")
    assert hold_b.recv_response().status == 200
    assert wait_until(lambda: _called_anywhere(both, v1), 10.0)
    for port in both:
        states = [_state(port, v)[0] for v in visitors]
        assert states == sorted(states, key=lambda st: st != "go"), states
    # A's ticket is honoured at B: lined up by its arrival, used up there.
    back = request(b.port, "GET", "/lesson/v1", headers=[HTML_ACCEPT, ("Cookie", v1)])
    assert back.status == 200
    cleared = [c for c in back.headers_named("Set-Cookie") if c.startswith("schoolgate_ticket=")]
    assert cleared and cleared[0].startswith("schoolgate_ticket=;")
    assert gate.paths()[-1] == "/lesson/v1"
    # The next slot: v2 (who queued at B) is called before v3, and honoured at A.
    gate.release("a")
    assert hold_a.recv_response().status == 200
    assert wait_until(lambda: _called_anywhere(both, v2), 10.0)
    assert request(a.port, "GET", "/lesson/v2",
                   headers=[HTML_ACCEPT, ("Cookie", v2)]).status == 200
    # And v3 (who queued at A) is honoured at B.
    assert wait_until(lambda: _called_anywhere(both, v3), 10.0)
    assert request(b.port, "GET", "/lesson/v3",
                   headers=[HTML_ACCEPT, ("Cookie", v3)]).status == 200
    assert gate.paths()[-3:] == ["/lesson/v1", "/lesson/v2", "/lesson/v3"]
    # The line is kept in Redis under the school's hash tag (its op log).
    client = redis.Redis.from_url(redis_url)
    try:
        assert int(client.hget("fleet:{school:school}:line:meta", "head")) > 0
        assert client.llen("fleet:{school:school}:line:log") > 0
    finally:
        client.close()


# -- four workers, no Redis ----------------------------------------------------------------------


def _fill_every_worker(port: int, gate, rounds: int = 400, clear: int = 40) -> None:
    """Probe requests that hold their slot, until `clear` in a row are turned
    away: then every worker (each takes connections at random) is full."""
    rejected = 0
    for i in range(rounds):
        target = f"/hold/fill{i}"
        # JSON: a script's request takes no place in the line.
        conn = send(port, "GET", target, [(PROBE_HEADER, "1"), JSON_ACCEPT])

        def answered(c=conn, t=target) -> bool:
            return gate.count(t) > 0 or bool(select.select([c.sock], [], [], 0)[0])

        assert wait_until(answered, 5.0)
        if gate.count(target):
            rejected = 0
            continue
        assert conn.recv_response().status == 503
        rejected += 1
        if rejected >= clear:
            return
    raise AssertionError("the workers never all filled up")


def test_four_workers_show_every_visitor_one_place(make_gateway, gate):
    gw = make_gateway(upstreams=[gate.addr], school={"max_inflight": 4}, classes=classes(),
                      server={"workers": 4})
    _fill_every_worker(gw.port, gate)
    visitors = [ticket_cookie(turned_away(gw.port, f"/lesson/{i}")) for i in range(8)]
    # Every poll opens a new connection, so the polls land on all workers.
    for _ in range(6):
        for i, cookie in enumerate(visitors):
            assert _state(gw.port, cookie) == ("wait", i + 1)



# -- a ticket is spent once, fleet-wide --------------------------------------------------------


def _cleared(resp) -> bool:
    """The response clears the ticket cookie: the request got in with it."""
    return any(c.startswith("schoolgate_ticket=;") for c in resp.headers_named("Set-Cookie"))


def test_a_replayed_ticket_gets_in_once_across_four_workers(make_gateway, gate):
    gw = make_gateway(upstreams=[gate.addr], school={"max_inflight": 16}, classes=classes(),
                      admission={"secret": SECRET}, server={"workers": 4})
    now = time.time()
    value = TicketSigner(SECRET.encode()).issue("school", new_visitor_id(), now - 30, now)
    cookie = ("Cookie", f"schoolgate_ticket={value}")
    # Each request on a new connection: they land on all four workers.
    answers = [request(gw.port, "GET", f"/lesson/{i}", headers=[HTML_ACCEPT, cookie])
               for i in range(24)]
    assert [a.status for a in answers] == [200] * 24
    # The first got in with the ticket; every replay came in as a new arrival.
    assert [_cleared(a) for a in answers] == [True] + [False] * 23


def test_a_ticket_spent_at_instance_a_is_refused_at_b(make_gateway, gate, redis_url):
    a = _instance(make_gateway, gate, redis_url, "spent:")
    b = _instance(make_gateway, gate, redis_url, "spent:")
    hold_a = hold(a.port, gate, "a")
    hold_b = hold(b.port, gate, "b")
    cookie = ticket_cookie(turned_away(a.port))
    assert wait_until(lambda: _state(b.port, cookie)[0] == "wait", 5.0)
    gate.release("a")
    assert hold_a.recv_response().status == 200
    # Called once a sync has it from the log (a call is never provisional).
    assert wait_until(lambda: _state(a.port, cookie)[0] == "go", 5.0)
    back = request(a.port, "GET", "/lesson/in", headers=[HTML_ACCEPT, ("Cookie", cookie)])
    assert back.status == 200 and _cleared(back)
    # B learns of the spend at its next sync: a visitor who joins at A after
    # it shows up at B only in an answer that carries the spend too.
    hold_a = hold(a.port, gate, "a2")
    later = ticket_cookie(turned_away(a.port))
    assert wait_until(lambda: _state(b.port, later)[0] == "wait", 5.0)
    gate.release("b")
    assert hold_b.recv_response().status == 200
    replay = request(b.port, "GET", "/lesson/replay", headers=[HTML_ACCEPT, ("Cookie", cookie)])
    assert replay.status == 200 and not _cleared(replay)
    gate.release("a2")
    assert hold_a.recv_response().status == 200
