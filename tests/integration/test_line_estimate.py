"""The waiting line's estimate is honest (issue 9 point 4).

Visitors arrive faster than the school serves them and behave as the
waiting page's script does: poll the status endpoint when told, reload when
told "go". Checked for each visitor who got a waiting page:
- the page and its first poll give the same place and the same estimate;
- its place never goes up (one class: nobody more urgent arrives);
- its first estimate is within a factor of two of its real wait (from the
  page to the response of the reload that got in).
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from test_admission_room import poll
from test_admission_support import HTML_ACCEPT, page_config, page_position, ticket_cookie

from tests.support.clients import request

pytestmark = pytest.mark.usefixtures("admission_connections")

SERVICE_MS = 250  # the upstream's time per request: 4 per second with one slot
VISITORS = 48
WARMUP = 10  # the first visitors set the measured rate; not judged
GAP = 0.08  # seconds between arrivals: about 12 per second


def _visitor(port: int, i: int, out: dict, lock: threading.Lock) -> None:
    try:
        _browse(port, i, out, lock)
    except BaseException as err:  # reported by the test, not lost in the thread
        with lock:
            out[i] = {"error": repr(err)}


def _browse(port: int, i: int, out: dict, lock: threading.Lock) -> None:
    target = f"/sleep/{SERVICE_MS}?v={i}"
    headers = [HTML_ACCEPT, ("X-Visitor", "1")]
    first = request(port, "GET", target, headers=headers, timeout=30)
    if first.status == 200:
        return
    assert first.status == 503, first.status
    shown_at = time.monotonic()
    cfg = page_config(first)
    cookie = ticket_cookie(first)
    # Asked at once, the status endpoint says what the page says.
    echo = poll(port, cookie).json()
    record = {"page": (int(page_position(first)), cfg["wait"]), "positions": [],
              "echo": (echo["state"], echo["position"], echo["eta"]), "real": None}
    delay = cfg["every"]
    deadline = shown_at + 60
    while time.monotonic() < deadline:
        time.sleep(delay)
        status = poll(port, cookie).json()
        if status["state"] == "wait":
            record["positions"].append(status["position"])
            delay = min(max(status["retry_after"], cfg["min"]), cfg["max"])
            continue
        back = request(port, "GET", target, headers=[*headers, ("Cookie", cookie)], timeout=30)
        if back.status == 200:
            record["real"] = time.monotonic() - shown_at
            break
        # Turned away again (its call came, the slot was gone): the new page.
        cfg = page_config(back)
        delay = cfg["every"]
    with lock:
        out[i] = record


def test_each_waiting_visitors_first_estimate_is_within_twice_its_real_wait(make_gateway, gate):
    gw = make_gateway(
        upstreams=[gate.addr], school={"max_inflight": 1},
        # Queued a while, then the waiting page (as the default classes do,
        # with a shorter max_wait, above call_ahead, so the waits stay a
        # few seconds).
        classes=[{"name": "pupil", "priority": 10, "max_wait": 3.0,
                  "match": {"headers": {"X-Visitor": "*"}}}],
        admission={"secret": "estimate-test-secret-0123456789"})
    out: dict[int, dict] = {}
    lock = threading.Lock()
    threads = []
    for i in range(VISITORS):
        th = threading.Thread(target=_visitor, args=(gw.port, i, out, lock), daemon=True)
        th.start()
        threads.append(th)
        time.sleep(GAP)
    for th in threads:
        th.join(90)
    assert not [r for r in out.values() if "error" in r], out
    judged = {i: r for i, r in out.items() if i >= WARMUP}
    assert len(judged) >= 10, f"too few visitors waited: {sorted(out)}"
    ratios = {}
    for i, r in judged.items():
        assert r["real"] is not None, (i, r)
        page_pos, page_eta = r["page"]
        assert page_eta is not None and page_eta > 0, (i, r)
        # The page and the status endpoint, asked right after, agree (the
        # fleet's rate may have moved a little in between).
        state, echo_pos, echo_eta = r["echo"]
        if state == "wait":
            assert echo_pos <= page_pos, (i, r)
            assert abs(echo_eta - page_eta) <= 0.25 * page_eta + 0.1, (i, r)
        # Never up: one class, so no more urgent arrival can pass it.
        positions = [page_pos, *r["positions"]]
        assert all(b <= a for a, b in itertools.pairwise(positions)), (i, positions)
        ratios[i] = r["real"] / page_eta
    # (real wait, first estimate, ratio) of each visitor outside the factor.
    off = {i: (round(judged[i]["real"], 1), judged[i]["page"][1], round(x, 2))
           for i, x in ratios.items() if not 0.5 <= x <= 2.0}
    assert not off, str(off)
    # Waits of several seconds, so the test means something.
    assert max(r["real"] for r in judged.values()) >= 3.0
