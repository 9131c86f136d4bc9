"""Per-worker shares of a school's limits (the oracle tests/oracles/shares.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.config.schema import Admission, Config, Pool, School, Server
from tests.oracles.shares import share, split_limits


@given(st.integers(1, 10_000), st.integers(1, 64))
def test_shares_add_up_to_the_limit(limit, workers):
    parts = [share(limit, i, workers) for i in range(workers)]
    assert all(p >= 1 for p in parts)
    if limit >= workers:
        assert sum(parts) == limit
        assert max(parts) - min(parts) <= 1
    else:
        # Never 0 (unlimited): each worker keeps one slot.
        assert parts == [1] * workers


def test_unlimited_stays_unlimited():
    assert [share(0, i, 4) for i in range(4)] == [0, 0, 0, 0]


def test_split_config():
    cfg = Config(
        server=Server(workers=3),
        schools=[School(name="a", hosts=["a"], upstreams=["x:1"], max_inflight=10,
                        max_connections=0, rate=30.0, burst=7, client_rate=5.0,
                        client_burst=2, pool="p")],
        pools=[Pool(name="p", max_inflight=4)],
        admission=Admission(max_queue=100),
    )
    parts = [split_limits(cfg, i) for i in range(3)]
    assert [p.schools[0].max_inflight for p in parts] == [4, 3, 3]
    assert [p.schools[0].burst for p in parts] == [3, 2, 2]
    assert [p.schools[0].rate for p in parts] == [10.0] * 3
    assert [p.pools[0].max_inflight for p in parts] == [2, 1, 1]
    assert [p.admission.max_queue for p in parts] == [34, 33, 33]
    assert all(p.schools[0].max_connections == 0 for p in parts)
    # Per-client buckets are a client's own: not split.
    assert all((p.schools[0].client_rate, p.schools[0].client_burst) == (5.0, 2) for p in parts)
    assert split_limits(cfg, 0, workers=1) is cfg
