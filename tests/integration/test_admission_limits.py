"""Admission control on a real gateway: max_inflight, the priority queue,
class shares and time windows, the queue bound, max_wait, and slots given
back when a response ends, a tunnel opens or a client leaves.

The upstream is a `Gate` in the test process (see test_admission_support):
with max_inflight = 1 the order in which requests reach it is the order in
which the gateway admitted them, and `probe_queued()` tells how many
requests wait, so no test sleeps to "let a request get queued".
"""

from __future__ import annotations

import datetime
import signal
import socket
import struct
import time

import pytest
from test_admission_support import (
    BULK,
    HTML_ACCEPT,
    INTERACTIVE,
    JSON_ACCEPT,
    PROBE,
    PROBE_HEADER,
    SUBMIT,
    assert_waiting_page,
    classes,
    gateway_for,
    hold,
    probe_queued,
    queue,
    read_all,
    retry_after,
    send,
    wait_queued,
)

from tests.support.clients import FORBIDDEN_STATUSES, request, wait_until

pytestmark = pytest.mark.usefixtures("admission_connections")




# -- max_inflight ---------------------------------------------------------------


def test_max_inflight_is_never_exceeded_and_nothing_is_dropped(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, school={"max_inflight": 3})
    conns = [send(gw.port, "GET", f"/sleep/20?i={i}") for i in range(30)]
    statuses = [r.status for r in read_all(conns)]
    assert statuses == [200] * 30
    assert gate.count("/sleep/") == 30
    # Saturated (three at once) but never beyond.
    assert gate.peak == 3


def test_max_inflight_holds_across_worker_processes(make_gateway, gate):
    # Each worker enforces its share (2 + 2); connections land on either.
    gw = gateway_for(make_gateway, gate.addr, school={"max_inflight": 4},
                     server={"workers": 2})
    conns = [send(gw.port, "GET", f"/sleep/30?i={i}") for i in range(40)]
    assert [r.status for r in read_all(conns)] == [200] * 40
    assert gate.count("/sleep/") == 40
    assert gate.peak <= 4


def test_queued_requests_wait_for_a_slot_then_all_complete(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    waiting = [queue(gw.port, "GET", f"/page/{i}") for i in range(5)]
    # Queued, not sent: the upstream has seen only the holder.
    assert gate.paths() == ["/hold/a"]
    gate.release("a")
    responses = list(read_all([holder, *waiting]))
    assert [r.status for r in responses] == [200] * 6
    assert [r.json()["target"] for r in responses[1:]] == [f"/page/{i}" for i in range(5)]
    assert gate.peak == 1


# -- priority and order ------------------------------------------------------------


def test_strict_priority_then_first_come_first_served(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    # Arrival order: bulk, bulk, interactive, submit, interactive, bulk, submit.
    sent = [
        queue(gw.port, "GET", "/import/1"),
        queue(gw.port, "GET", "/export/2"),
        queue(gw.port, "GET", "/page/3"),
        queue(gw.port, "POST", "/homework/4", body=b"essay"),
        queue(gw.port, "GET", "/page/5"),
        queue(gw.port, "GET", "/api/sync/6"),
        queue(gw.port, "PUT", "/homework/7", body=b"essay"),
    ]
    gate.release("a")
    assert [r.status for r in read_all([holder, *sent])] == [200] * 8
    # submit (20) before interactive (10) before bulk (0); FCFS within each.
    assert gate.paths()[1:] == ["/homework/4", "/homework/7", "/page/3", "/page/5",
                                "/import/1", "/export/2", "/api/sync/6"]


def test_bulk_moves_ahead_once_it_has_waited_longer_than_aging_allows(make_gateway, gate):
    # aging 0.01 s per priority step: interactive (10) is worth 0.1 s of waiting.
    gw = gateway_for(make_gateway, gate.addr, admission={"aging": 0.01})
    holder = hold(gw.port, gate, "a")
    bulk = queue(gw.port, "GET", "/import/old")
    time.sleep(0.3)  # bulk has now waited more than interactive's head start
    inter = queue(gw.port, "GET", "/page/new")
    gate.release("a")
    assert [r.status for r in read_all([holder, bulk, inter])] == [200] * 3
    assert gate.paths()[1:] == ["/import/old", "/page/new"]


def test_max_share_caps_a_class_without_blocking_others(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, school={"max_inflight": 2},
                     klasses=classes(bulk={"max_share": 0.5}))
    first = hold(gw.port, gate, "1", prefix="/import")  # bulk's one slot (50% of 2)
    # A second bulk request waits although a school slot is free ...
    second = send(gw.port, "GET", "/import/hold/2")
    # ... which interactive traffic can still use. (The school is not full,
    # so the probe cannot tell; this answer is the barrier instead: the
    # gateway read the import's head, which was sent first, before it.)
    assert request(gw.port, "GET", "/page").status == 200
    assert gate.paths() == ["/import/hold/1", "/page"]
    gate.release("1", "2")
    assert [r.status for r in read_all([first, second])] == [200, 200]
    assert gate.paths()[-1] == "/import/hold/2"


def _window_days(active: bool) -> list[str]:
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    if active:
        return days
    # Days two to five days from today: no time zone or midnight can make
    # any of them today.
    today = datetime.datetime.now(datetime.UTC).weekday()
    return [days[(today + k) % 7] for k in (2, 3, 4, 5)]


@pytest.mark.parametrize("active", [True, False], ids=["window-active", "window-inactive"])
def test_time_window_limits_a_class_share_only_while_active(make_gateway, gate, active):
    window = {"days": _window_days(active), "start": "00:00", "end": "24:00",
              "tz": "Europe/Berlin", "max_share": 0.5}
    gw = gateway_for(make_gateway, gate.addr, school={"max_inflight": 2},
                     klasses=classes(bulk={"windows": [window]}))
    first = hold(gw.port, gate, "a", prefix="/import")
    if active:
        # Limited to one of the two slots: the second import waits while
        # interactive traffic takes the other.
        second = send(gw.port, "GET", "/import/hold/b")
        assert request(gw.port, "GET", "/page").status == 200  # barrier, as above
        assert gate.paths() == ["/import/hold/a", "/page"]
    else:
        # Outside its window the class is unrestricted: both slots.
        second = hold(gw.port, gate, "b", prefix="/import")
    gate.release("a", "b")
    assert [r.status for r in read_all([first, second])] == [200, 200]
    assert gate.paths()[-1] == "/import/hold/b"


# -- the queue bound and max_wait ----------------------------------------------------


def test_full_queue_turns_browsers_away_with_the_waiting_page(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, admission={"max_queue": 2})
    holder = hold(gw.port, gate, "a")
    waiting = [queue(gw.port, "GET", f"/page/{i}") for i in range(2)]
    resp = request(gw.port, "GET", "/lesson/7?tab=2", headers=[HTML_ACCEPT])
    # Two ahead in the queue: third in line.
    assert assert_waiting_page(resp, url="/lesson/7?tab=2") == 3
    assert b"school" in resp.body
    assert "/lesson/7" not in " ".join(gate.targets())
    gate.release("a")
    assert [r.status for r in read_all([holder, *waiting])] == [200] * 3


def test_full_queue_answers_api_clients_with_json(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, admission={"max_queue": 1})
    holder = hold(gw.port, gate, "a")
    waiting = queue(gw.port, "GET", "/page")
    for headers in ([JSON_ACCEPT], [("X-Requested-With", "XMLHttpRequest")]):
        resp = request(gw.port, "GET", "/api/grades", headers=headers)
        assert resp.status == 503
        assert (resp.header("Content-Type") or "").startswith("application/json")
        assert resp.header("Cache-Control") == "no-store"
        body = resp.json()
        assert body["error"] == "busy"
        assert body["retry_after"] == retry_after(resp)
        assert body["position"] == 2
        assert resp.header("Set-Cookie") is None  # no waiting room for scripts
    gate.release("a")
    assert [r.status for r in read_all([holder, waiting])] == [200, 200]


def test_full_queue_tells_bulk_clients_429(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, admission={"max_queue": 1})
    holder = hold(gw.port, gate, "a")
    waiting = queue(gw.port, "GET", "/page")
    resp = request(gw.port, "GET", "/api/import/users", headers=[JSON_ACCEPT])
    assert resp.status == 429
    retry_after(resp)
    assert resp.json()["retry_after"] == int(resp.header("Retry-After"))
    plain = request(gw.port, "POST", "/import/users", body=b"a,b\n")
    assert plain.status == 429
    retry_after(plain)
    assert (plain.header("Content-Type") or "").startswith("text/plain")
    gate.release("a")
    assert [r.status for r in read_all([holder, waiting])] == [200, 200]
    assert not any("import" in t for t in gate.targets())


def test_max_wait_expiry_answers_each_class_its_way(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, klasses=classes(
        bulk={"max_wait": 0.3}, interactive={"max_wait": 0.3}))
    holder = hold(gw.port, gate, "a")
    browser = queue(gw.port, "GET", "/lesson/1", [HTML_ACCEPT])
    api = queue(gw.port, "GET", "/api/lesson/2", [JSON_ACCEPT])
    bulk = queue(gw.port, "GET", "/export/3", [JSON_ACCEPT])
    page = browser.recv_response()
    assert assert_waiting_page(page, url="/lesson/1") >= 1
    answer = api.recv_response()
    assert answer.status == 503 and answer.json()["position"] >= 1
    retry_after(answer)
    refused = bulk.recv_response()
    assert refused.status == 429
    retry_after(refused)
    # Nothing that expired reached the upstream; the holder is unaffected.
    assert gate.paths() == ["/hold/a"]
    assert probe_queued(gw.port) == 0
    gate.release("a")
    assert holder.recv_response().status == 200
    for conn in (browser, api, bulk, holder):
        conn.close()


def test_queued_browser_keeps_its_connection_after_the_waiting_page(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, klasses=classes(interactive={"max_wait": 0.2}))
    holder = hold(gw.port, gate, "a")
    conn = queue(gw.port, "GET", "/lesson", [HTML_ACCEPT])
    assert conn.recv_response().status == 503
    gate.release("a")
    assert holder.recv_response().status == 200
    # Same connection, next request: admitted now that the slot is free.
    conn.send(b"GET /lesson HTTP/1.1\r\nHost: school.test\r\n\r\n")
    assert conn.recv_response().status == 200
    conn.close()
    holder.close()


# -- slots and places given back ------------------------------------------------------


def test_client_leaving_gives_back_its_slot(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    waiting = queue(gw.port, "GET", "/page")
    # A reset: the client is gone. (A FIN alone is a half-close, after which
    # the gateway still delivers the answer; see the half-close test.)
    holder.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    holder.close()
    # The upstream request is abandoned and the slot goes to the next one.
    assert waiting.recv_response().status == 200
    assert wait_until(lambda: gate.abandoned == 1)


def test_client_resetting_while_queued_gives_back_its_place(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    gone = queue(gw.port, "GET", "/gone")
    stays = queue(gw.port, "GET", "/stays")
    gone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.close()
    wait_queued(gw.port, 1)
    gate.release("a")
    assert [r.status for r in read_all([holder, stays])] == [200, 200]
    # The departed client's request was never forwarded.
    assert gate.paths() == ["/hold/a", "/stays"]


def test_client_hanging_up_while_queued_gives_back_its_place(make_gateway, gate):
    # A closed browser tab sends a FIN, nothing more. A request still waiting
    # in line is then not sent upstream, and its place goes to the next.
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    gone = queue(gw.port, "GET", "/gone")
    stays = queue(gw.port, "GET", "/stays")
    gone.shutdown_write()
    assert gone.closed()
    wait_queued(gw.port, 1)
    gate.release("a")
    assert [r.status for r in read_all([holder, stays])] == [200, 200]
    assert gate.paths() == ["/hold/a", "/stays"]
    for conn in (gone, holder, stays):
        conn.close()


def test_client_half_closing_after_forwarding_is_still_answered(make_gateway, gate):
    # Once forwarded, the request is the upstream's: a half-close only says
    # the client has nothing more to send, and the answer still reaches it.
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    holder.shutdown_write()
    gate.release("a")
    assert holder.recv_response().status == 200
    assert holder.closed()
    holder.close()


def test_drain_still_answers_queued_requests(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    waiting = queue(gw.port, "GET", "/page")
    gw.signal(signal.SIGTERM)
    gate.release("a")
    assert [r.status for r in read_all([holder, waiting])] == [200, 200]
    assert gw.wait(10) == 0


def test_unavailable_upstream_gives_back_the_slot(make_gateway):
    from tests.support.procs import free_port
    gw = gateway_for(make_gateway, f"127.0.0.1:{free_port()}",
                     klasses=classes(interactive={"max_wait": 5.0}))
    conns = [send(gw.port, "GET", f"/page/{i}", [JSON_ACCEPT]) for i in range(4)]
    answers = list(read_all(conns))
    # Each one tried the upstream in turn (not turned away as "busy").
    assert [r.status for r in answers] == [503] * 4
    assert all(r.json()["error"] == "unavailable" for r in answers)
    assert not FORBIDDEN_STATUSES & {r.status for r in answers}


def test_request_fitting_no_class_is_still_admitted(make_gateway, gate):
    # No class without a match: "/page" fits none of them.
    gw = gateway_for(make_gateway, gate.addr, klasses=[dict(PROBE), dict(BULK), dict(SUBMIT)])
    assert request(gw.port, "GET", "/page").status == 200
    holder = hold(gw.port, gate, "a")
    # Judged as the least urgent class: behind a submit that came later.
    late = queue(gw.port, "GET", "/page/late")
    urgent = queue(gw.port, "POST", "/homework", body=b"x")
    gate.release("a")
    assert [r.status for r in read_all([holder, late, urgent])] == [200] * 3
    assert gate.paths()[-2:] == ["/homework", "/page/late"]


def test_default_classes_are_in_force_without_configured_ones(make_gateway, gate):
    gw = make_gateway(upstreams=[gate.addr], school={"max_inflight": 1},
                      admission={"max_queue": 1})
    holder = hold(gw.port, gate, "a")
    waiting = send(gw.port, "GET", "/page")
    assert wait_until(lambda: request(gw.port, "GET", "/import/x").status == 429)
    gate.release("a")
    assert [r.status for r in read_all([holder, waiting])] == [200, 200]
    assert INTERACTIVE["name"] == "interactive"  # the spelled-out defaults match


# -- WebSocket tunnels -----------------------------------------------------------------

WS_HEADERS = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]


def ws_text_frame(text: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    return bytes([0x81, 0x80 | len(text)]) + mask + masked


def test_websocket_tunnel_gives_back_its_slot(make_gateway, upstream):
    gw = gateway_for(make_gateway, upstream.addr)  # one slot
    ws = send(gw.port, "GET", "/ws", WS_HEADERS)
    assert ws.recv_response(final=False).status == 101
    # The tunnel stays open but holds no request slot: others get through.
    for i in range(3):
        assert request(gw.port, "GET", f"/echo?i={i}").status == 200
    ws.send(ws_text_frame(b"still here"))
    assert ws.recv_exact(2 + len(b"still here")) == b"\x81\x0astill here"


def test_refused_websocket_upgrade_closes_its_connection(make_gateway, upstream):
    gw = gateway_for(make_gateway, upstream.addr)
    send(gw.port, "GET", "/hang")
    assert wait_until(lambda: upstream.requests("/hang") == 1)
    conn = send(gw.port, "GET", "/ws", [*WS_HEADERS, (PROBE_HEADER, "1")])
    resp = conn.recv_response()
    assert resp.status == 503
    retry_after(resp)
    # After an upgrade request the connection cannot carry another request,
    # so it must end here rather than sit open with a spent parser.
    assert resp.has_token("Connection", "close")
    assert conn.closed()
