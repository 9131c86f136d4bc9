"""The waiting line: one draw, one poll, one expiry with 10, 1,000 and
10,000 visitors waiting, each beside what it cost before the line was
indexed.

- `test_line_*` [impl]: the Line itself (gateway/waiting/line.py, "indexed")
  beside the brute-force model it is checked against (tests/unit/
  line_model.py, "scan": every question a scan, as the line was).
- `test_redis_sync` [impl]: one worker's sync with Redis, "log"
  (RedisLineStore: one record appended, those since replayed) beside
  "reload" (the whole line read and decoded on every sync, as before the
  log); needs `redis-server` on PATH.
- `test_shm_*` [store]: the change as a worker makes it, through the
  instance's shared-memory store: "log" (ShmLineStore: replays the records
  written since, appends one) beside "whole" (decodes the school's whole
  line, applies the change, encodes it again: the store before the log).

Run: `python -m bench.micro -k bench_line`.
"""

from __future__ import annotations

import itertools

import msgspec
import pytest

from gateway.shared.region import Region
from gateway.waiting.line import GO_GRACE, Line, Rules, apply
from gateway.waiting.line_store import ShmLineStore
from tests.unit.line_model import Line as ScanLine

T0 = 1_700_000_000.0
SIZES = pytest.mark.parametrize("waiting", [10, 1_000, 10_000])
IMPLS = pytest.mark.parametrize("impl", ["indexed", "scan"])
STORES = pytest.mark.parametrize("store", ["log", "whole"])
LINES = {"indexed": Line, "scan": ScanLine}


# The waiting visitors' grace in the expiry benches: they never leave (they
# would poll), only the bench's own called visitors do.
FOREVER = Rules(grace=1e12)


def _filled(cls: type, waiting: int, called: bool = True) -> Line:
    """`waiting` visitors who polled (a tenth of them called, if `called`)."""
    line = cls()
    for i in range(waiting):
        vid = b"w%07d" % i
        line.draw(vid, 10.0, T0)
        line.seen(vid, T0)
    if called:
        for i in range(0, waiting, 10):
            line.call(b"w%07d" % i, T0)
    return line


@SIZES
@IMPLS
def test_line_draw(benchmark, impl, waiting):
    """A newcomer draws a number, is told its position, and (its reload
    got in) leaves."""
    line = _filled(LINES[impl], waiting)
    count = itertools.count()

    def draw():
        vid = b"n%d" % next(count)
        line.draw(vid, 10.0, T0)
        line.report(vid, line.ahead(vid) + 1)
        line.leave(vid)

    benchmark(draw)


@SIZES
@IMPLS
def test_line_poll(benchmark, impl, waiting):
    """A visitor in the middle polls: seen, the head called up to the
    target, its position and what it was shown."""
    line = _filled(LINES[impl], waiting)
    vid = b"w%07d" % (waiting // 2 + 1)
    target = line.called()

    def poll():
        line.seen(vid, T0)
        line.call_next(target, T0)
        line.head_urgency()
        line.report(vid, line.ahead(vid) + 1)
        return line.called()

    benchmark(poll)


@SIZES
@IMPLS
def test_line_expire(benchmark, impl, waiting):
    """A called visitor whose reload never came is dropped: drawn, called,
    and swept when its grace is over."""
    line = _filled(LINES[impl], waiting, called=False)
    count = itertools.count()

    def expire():
        i = next(count)
        now = T0 + 10 + i * 2.0
        line.draw(b"n%d" % i, 10.0, now)
        line.call(b"n%d" % i, now)
        assert line.sweep(now + GO_GRACE + 1.5, FOREVER.grace) == 1

    benchmark(expire)


# -- through the shared-memory store, as a worker changes the line --------------------


class _WholeLineStore:
    """The store before the log: the school's whole line decoded, changed
    and encoded again under the lock, for every change."""

    def __init__(self, segment, rules: Rules) -> None:
        self.segment = segment
        self.rules = rules

    def exchange(self, batches, now, results=None):
        out = {}
        with self.segment.locked():
            stored = self.segment.load() or {}
            for school, ops in batches.items():
                raw = stored.get(school)
                line = Line.load(msgspec.msgpack.decode(raw)) if raw else Line()
                answers = apply(line, ops, now, self.rules)
                if results is not None:
                    results[school] = answers
                stored[school] = msgspec.msgpack.encode(line.dump())
                out[school] = line
            self.segment.store(stored)
        return out


def _store(kind: str, waiting: int):
    segment = Region.create({"line": 64 << 20}).segment("line")
    store = ShmLineStore(segment, rules=FOREVER) if kind == "log" else \
        _WholeLineStore(segment, FOREVER)
    ops: list[tuple] = []
    for i in range(waiting):
        ops += [("draw", b"w%07d" % i, 10.0), ("seen", b"w%07d" % i)]
    for j in range(0, len(ops), 200):
        store.exchange({"s": ops[j:j + 200]}, T0)
    return store


@SIZES
@STORES
def test_shm_draw(benchmark, store, waiting):
    """A newcomer's draw and, later, its leave: two changes."""
    s = _store(store, waiting)
    count = itertools.count()

    def draw():
        vid = b"n%d" % next(count)
        s.exchange({"s": [("draw", vid, 10.0)]}, T0)
        s.exchange({"s": [("leave", vid)]}, T0)

    benchmark(draw)


@SIZES
@STORES
def test_shm_poll(benchmark, store, waiting):
    """A poll's changes: seen, then what it was shown."""
    s = _store(store, waiting)
    vid = b"w%07d" % (waiting // 2)

    def poll():
        s.exchange({"s": [("seen", vid)]}, T0)
        s.exchange({"s": [("shown", vid, 3, 0)]}, T0)

    benchmark(poll)


@SIZES
@STORES
def test_shm_expire(benchmark, store, waiting):
    """A called visitor whose reload never came: drawn and called, then
    swept by the next change once its grace is over."""
    s = _store(store, waiting)
    count = itertools.count()

    def expire():
        i = next(count)
        now = T0 + 10 + i * 2.0
        s.exchange({"s": [("draw", b"n%d" % i, 10.0), ("call", b"n%d" % i)]}, now)
        s.exchange({"s": [("record", 0)]}, now + GO_GRACE + 1.5)

    benchmark(expire)


# -- Redis ------------------------------------------------------------------------------------

REDIS_IMPLS = pytest.mark.parametrize("impl", ["log", "reload"])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    import shutil
    import subprocess

    from tests.support.clients import wait_until
    from tests.support.procs import free_port, port_open

    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: port_open(port), 10.0)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(5)


@SIZES
@REDIS_IMPLS
def test_redis_sync(benchmark, redis_url, impl, waiting):
    """One worker's sync with Redis (its queue report, a poll) while
    `waiting` visitors wait: "log" (RedisLineStore: appends one record,
    replays those since its last sync) beside "reload" (the same store
    made to read the whole line each time, as every sync did before the
    log: O(line) on the wire and in decoding)."""
    import asyncio

    import redis.asyncio as aioredis

    from gateway.waiting.line_store import RedisLineStore, line_keys

    loop = asyncio.new_event_loop()
    client = aioredis.Redis.from_url(redis_url)
    school = f"bench-{impl}-{waiting}"
    store = RedisLineStore(client, "bench:", rules=FOREVER)
    filler = [("draw", b"w%07d" % i, 10.0) for i in range(waiting)]
    for i in range(0, waiting, 1000):
        loop.run_until_complete(store.aexchange({school: filler[i:i + 1000]}, T0))
    # The snapshot a late worker (or "reload") starts from.
    line = store.replicas[school]
    loop.run_until_complete(store.snap_script(
        keys=line_keys("bench:", school),
        args=[line.epoch, line.next, msgspec.msgpack.encode(line.line.dump()), 3600]))

    def sync():
        if impl == "reload":
            store.reset()
        ops = [("queue", "w1", {10.0: 1}, 0), ("seen", b"w%07d" % (waiting // 2))]
        loop.run_until_complete(store.aexchange({school: ops}, T0))

    try:
        benchmark(sync)
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
