"""The upstream pool against an upstream's own keep-alive timeout.

An upstream closes keep-alive connections that have been idle for its
timeout. A request sent on a pooled connection just as the upstream closes it
is lost on the way; a GET can be sent again, a POST cannot (it may have been
acted on), so the visitor got the "not answering" page for a form that never
reached the school's server. The pool must therefore reuse a connection only
while the upstream still surely keeps it: it learns the timeout from the
upstream's `Keep-Alive: timeout=N` header, or from the idle times at which
the upstream closes connections, and retires connections a margin before it.

The upstream here is the scripted one (tests/support/hostile.py) with a 1 s
timeout; it drops, unanswered, any request that arrives on a connection idle
for 0.9 s or more, which is the crossing of its close and a request, widened
so that a test of a few dozen requests meets it for certain. The gaps
between the POSTs straddle that window (0.8 to 1.2 s), with short gaps mixed
in, after which a reused connection is safe and expected.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from tests.support.clients import Response, request
from tests.support.hostile import HostileUpstream, Seen, echo, response
from tests.support.procs import Gateway

TIMEOUT = 1.0
RACE = 0.9   # requests arriving on a connection idle this long are lost
SHORT_GAP = 0.4


def gaps(rounds: int, seed: int) -> list[float]:
    """A short gap, then two around the timeout, `rounds` times."""
    rng = random.Random(seed)
    out = []
    for _ in range(rounds):
        out += [SHORT_GAP, rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)]
    return out


def post_series(gw: Gateway, pauses: list[float]) -> list[Response]:
    answers = []
    for i, pause in enumerate(pauses):
        time.sleep(pause)
        answers.append(request(gw.port, "POST", f"/submit?n={i}", body=b"homework=%d" % i))
    return answers


def check(answers: list[Response], up: HostileUpstream) -> None:
    statuses = [r.status for r in answers]
    assert statuses.count(503) == 0, f"{statuses.count(503)} 'not answering' pages: {statuses}"
    assert statuses == [200] * len(answers), statuses
    seen = up.requests("/submit")
    # Every form reached the upstream exactly once.
    assert sorted(s.target for s in seen) == sorted(f"/submit?n={i}" for i in range(len(answers)))
    lost = [c for c in up.conns.values() if c.ended == "refused"]
    assert not lost, f"{len(lost)} requests went out on connections the upstream was closing"
    # The pool was not simply switched off: connections idle for the short
    # gaps were reused.
    reused = [s for s in seen if s.number > 1]
    assert reused, "no POST reused a pooled connection"
    assert all(s.idle < RACE for s in reused)


def _gateway(make_gateway: Callable[..., Gateway], up: HostileUpstream) -> Gateway:
    # upstream_idle stays at its default (30 s), far above the upstream's own.
    return make_gateway(upstreams=[up.addr])


def test_posts_around_the_upstreams_idle_timeout_all_arrive(make_gateway):
    # The upstream closes idle connections after 1 s and says nothing about
    # it: the pool learns it from the closes.
    with HostileUpstream({"/submit": echo}, idle_close=TIMEOUT, refuse_after=RACE) as up:
        gw = _gateway(make_gateway, up)
        answers = post_series(gw, gaps(8, seed=7))
        check(answers, up)
        assert any(c.ended == "idle" for c in up.conns.values())


def test_posts_within_an_advertised_keep_alive_timeout_all_arrive(make_gateway):
    # This upstream never closes an idle connection on its own; it only
    # drops a request that comes later than its advertised timeout allows.
    # Nothing but its Keep-Alive header tells the pool when that is.
    def submit(req: Seen) -> bytes:
        return response(200, echo(req).split(b"\r\n\r\n", 1)[1],
                        [("Content-Type", "application/json"),
                         ("Keep-Alive", f"timeout={TIMEOUT:.0f}, max=1000")])

    with HostileUpstream({"/submit": submit}, refuse_after=RACE) as up:
        gw = _gateway(make_gateway, up)
        answers = post_series(gw, gaps(5, seed=11))
        check(answers, up)


def test_a_restart_does_not_switch_the_pool_off(make_gateway):
    # Every idle connection closed at once, 0.1 s into its idle time (the
    # upstream restarting): that is not its keep-alive timeout, and once
    # connections are seen to live longer the pool reuses them again.
    with HostileUpstream({"/submit": echo}) as up:
        gw = _gateway(make_gateway, up)
        assert request(gw.port, "POST", "/submit?n=0", body=b"x").status == 200
        time.sleep(0.1)
        assert up.close_idle() == 1
        answers = post_series(gw, [SHORT_GAP] * 8)
        assert [r.status for r in answers] == [200] * 8
        assert any(s.number > 1 for s in up.requests("/submit"))
