"""Schools sharing one upstream pool (the cloud case): the pool's limit is
shared by weighted fair queuing, so one school's storm cannot starve another.

Two schools, a.test and b.test, in front of the same Gate upstream, in one
[[pools]] entry. Arrival order at the Gate is admission order; holds keep
the pool full until the test lets go.
"""

from __future__ import annotations

import pytest
from test_admission_support import (
    Gate,
    classes,
    hold,
    queue,
    read_all,
)

pytestmark = pytest.mark.usefixtures("admission_connections")




def pooled_gateway(make_gateway, gate: Gate, pool: int, weights: tuple[float, float]):
    schools = [
        {"name": name, "hosts": [f"{name}.test"], "upstreams": [gate.addr], "pool": "shared",
         "weight": weight}
        for name, weight in zip("ab", weights, strict=True)
    ]
    return make_gateway(upstreams=[gate.addr], schools=schools, classes=classes(),
                        pools=[{"name": "shared", "max_inflight": pool}])


def test_a_storm_at_one_school_does_not_starve_another(make_gateway, gate):
    gw = pooled_gateway(make_gateway, gate, pool=2, weights=(1.0, 1.0))
    holders = [hold(gw.port, gate, f"a{i}", host="a.test") for i in (1, 2)]
    storm = [queue(gw.port, "GET", f"/a/{i}", host="a.test") for i in range(3, 6)]
    later = [queue(gw.port, "GET", f"/b/{i}", host="b.test") for i in (1, 2)]
    gate.release("a1")
    assert holders[0].recv_response().status == 200
    # School a holds one slot, b none: b's requests, although they came
    # last, take the freed slot before a's queue moves on.
    assert [r.status for r in read_all([*later, *storm])] == [200] * 5
    assert gate.paths()[2:] == ["/b/1", "/b/2", "/a/3", "/a/4", "/a/5"]
    gate.release("a2")
    assert holders[1].recv_response().status == 200


@pytest.mark.parametrize("weights, winner", [((3.0, 1.0), "a"), ((1.0, 1.0), "b")])
def test_freed_pool_slots_follow_the_weights(make_gateway, gate, weights, winner):
    gw = pooled_gateway(make_gateway, gate, pool=4, weights=weights)
    for name in ("a1", "a2"):
        hold(gw.port, gate, name, host="a.test")
    for name in ("b1", "b2"):
        hold(gw.port, gate, name, host="b.test")
    waiting_a = queue(gw.port, "GET", "/hold/a3", host="a.test")
    waiting_b = queue(gw.port, "GET", "/hold/b3", host="b.test")
    # b gives a slot back. In flight now: a 2, b 1. Equal weights make b the
    # less served school; weights 3:1 make a (2/3 < 1/1).
    gate.release("b1")
    assert gate.wait_count(1, f"/hold/{winner}3")
    loser = "b" if winner == "a" else "a"
    assert f"/hold/{loser}3" not in gate.paths()
    gate.release("a1", "a2", "a3", "b2", "b3")
    assert [r.status for r in read_all([waiting_a, waiting_b])] == [200, 200]
