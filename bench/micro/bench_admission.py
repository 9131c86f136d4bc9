"""Admission hot path, native vs plain-Python reference.

Run: `python -m bench.micro` (every micro-benchmark, native beside reference);
`python -m bench.micro -k bench_admission` for this file only.
"""

from __future__ import annotations

import pytest

from gateway.admission.bucket import TokenBucket
from gateway.admission.controller import AdmissionController
from gateway.admission.scheduler import Scheduler
from gateway.config.schema import Config, School
from tests.oracles import admission as reference

IMPLS = pytest.mark.parametrize("impl", ["native", "reference"])
BUCKETS = {"native": TokenBucket, "reference": reference.TokenBucket}
SCHEDULERS = {"native": Scheduler, "reference": reference.Scheduler}
CLASSES = [(0, 30.0, 429), (10, 20.0, 503), (20, 60.0, 503)]


@IMPLS
def test_bucket_try_take(benchmark, impl):
    bucket = BUCKETS[impl](1e9, 1_000_000, 0.0)
    clock = iter(range(10**9))

    def take():
        return bucket.try_take(next(clock) * 1e-6)

    assert benchmark(take)


@IMPLS
def test_scheduler_enqueue_dequeue(benchmark, impl):
    """A full school: each round queues one request and releases one slot."""
    sched = SCHEDULERS[impl]([(8, 0, 0.0, 0, 1.0, None, 10_000, 0.0, 0)], CLASSES)
    held = [sched.request(0, 1, None, 0.0) for _ in range(8)]
    for i in range(64):
        sched.request(0, i % 3, None, 0.0)
    clock = iter(range(10**9))

    def round_trip():
        now = next(clock) * 1e-6
        sched.request(0, 1, None, now)
        (admitted,) = sched.release(held.pop(0), now)
        held.append(admitted)

    benchmark(round_trip)


@IMPLS
def test_scheduler_pool_dispatch(benchmark, impl):
    """Four schools contending for one pool slot at a time."""
    schools = [(0, 0, 0.0, 0, 1.0 + i, 0, 10_000, 0.0, 0) for i in range(4)]
    sched = SCHEDULERS[impl](schools, CLASSES, [16])
    held = []
    for i in range(4):
        for _ in range(16):
            t = sched.request(i, 1, None, 0.0)
            if t.state == 1:
                held.append(t)
    clock = iter(range(10**9))

    def round_trip():
        now = next(clock) * 1e-6
        t = held.pop(0)
        held.extend(sched.release(t, now))
        sched.request(t.school, 1, None, now)

    benchmark(round_trip)


def test_controller_request_release(benchmark):
    """The uncontended path the shell takes for nearly every request."""
    cfg = Config(schools=[School(name="a", hosts=["a"], upstreams=["127.0.0.1:1"],
                                 max_inflight=100, rate=1e9, client_rate=1e9)])
    c = AdmissionController(cfg, now=0.0)
    clock = iter(range(10**9))

    def round_trip():
        now = next(clock) * 1e-6
        t = c.request(0, 2, b"192.0.2.1", now)
        c.release(t, now)

    benchmark(round_trip)


@IMPLS
def test_scheduler_request_release(benchmark, impl):
    sched = SCHEDULERS[impl]([(100, 0, 1e9, 0, 1.0, None, 1000, 1e9, 0)], CLASSES)
    clock = iter(range(10**9))

    def round_trip():
        now = next(clock) * 1e-6
        sched.release(sched.request(0, 2, b"192.0.2.1", now), now)

    benchmark(round_trip)
