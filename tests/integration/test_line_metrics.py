"""The waiting line as the operator sees it: the visitors a waiting page
and its status poll count are the ones /metrics and the status page's JSON
count, on a two-worker gateway (one shared line: counted once, never per
worker), and the visitors who stopped polling are dropped from all of them
after waiting_grace (issue 9: "it counted clients already turned away while
the queue metric read 0")."""

from __future__ import annotations

import httpx
import pytest
from test_admin_metrics import scrape, total
from test_admission_room import poll, turned_away
from test_admission_support import assert_waiting_page, gateway_for, hold, ticket_cookie

from tests.support.clients import wait_until
from tests.support.procs import free_port

pytestmark = pytest.mark.usefixtures("admission_connections")

# The shortest grace the config allows (above the page's longest poll
# interval, 10 s).
GRACE = 11.0
VISITORS = 5


def status_school(gw) -> dict:
    resp = httpx.get(gw.admin_url + "/status.json", timeout=5)
    assert resp.status_code == 200
    [school] = resp.json()["schools"]
    return school


def counted(gw) -> tuple[float, int]:
    """(visitors waiting per /metrics, per the status page's JSON)."""
    return (total(scrape(gw), "schoolgate_school_waiting", school="school"),
            sum(status_school(gw)["waiting"].values()))


def test_the_line_on_pages_metrics_and_status_agrees_and_forgets_who_left(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, admission={"waiting_grace": GRACE},
                     server={"admin_listen": f"127.0.0.1:{free_port()}", "workers": 2})
    assert wait_until(lambda: total(scrape(gw), "schoolgate_workers") == 2, timeout=10)
    holder = hold(gw.port, gate, "a")  # the one slot taken: the school is full
    assert counted(gw) == (0, 0)
    cookies, pages = [], []
    for i in range(VISITORS):
        page = turned_away(gw.port, f"/lesson/{i}")
        pages.append(assert_waiting_page(page))
        cookies.append(ticket_cookie(page))
    # Each page said where its visitor stands: behind the ones before it.
    assert pages == list(range(1, VISITORS + 1))
    positions = [poll(gw.port, c).json() for c in cookies]
    assert [p["state"] for p in positions] == ["wait"] * VISITORS
    assert [p["position"] for p in positions] == pages
    # The last visitor is told VISITORS are waiting (itself included); so
    # are the operator's metric and status page, whichever worker answers.
    assert wait_until(lambda: counted(gw) == (VISITORS, VISITORS), timeout=5), counted(gw)
    samples = scrape(gw)
    assert total(samples, "schoolgate_school_queued", school="school") == 0
    assert total(samples, "schoolgate_school_last_ticket", school="school") == VISITORS
    assert total(samples, "schoolgate_school_now_serving", school="school") == 0
    assert total(samples, "schoolgate_school_called", school="school") == 0
    school = status_school(gw)
    assert (school["last_ticket"], school["now_serving"], school["called"]) == (VISITORS, 0, 0)
    # Everyone stops polling: after waiting_grace they have left, from the
    # page's count as from the operator's.
    assert wait_until(lambda: counted(gw) == (0, 0), timeout=GRACE + 10), counted(gw)
    assert poll(gw.port, cookies[-1]).json()["state"] == "go"  # not in the line any more
    gate.release("a")
    assert holder.recv_response().status == 200
