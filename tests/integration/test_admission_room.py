"""The waiting room on a real gateway: the signed ticket cookie, the status
endpoint the waiting page polls, and what a ticket is (and is not) worth.

A visitor gets a ticket from a request of the probe class (max_wait 0: a
waiting page at once while the school is full), which fixes the moment they
arrived; the tests then queue others and bring the visitor back to see
where the ticket places them. Order is read at the Gate (max_inflight 1).
"""

from __future__ import annotations

import base64
import struct
import time

import pytest
from test_admission_support import (
    COOKIE,
    HTML_ACCEPT,
    JSON_ACCEPT,
    PROBE_HEADER,
    SECRET,
    STATUS_PATH,
    assert_waiting_page,
    gateway_for,
    hold,
    queue,
    read_all,
    ticket_cookie,
)

from gateway.waiting import TicketSigner, new_visitor_id
from tests.support.clients import HOST, RawConn, Response, build_request, request

TTL = 600.0

pytestmark = pytest.mark.usefixtures("admission_connections")




def turned_away(port: int, target: str = "/lesson", language: str | None = None,
                host: str = HOST) -> Response:
    """A browser request the full school answers with the waiting page at once."""
    headers = [HTML_ACCEPT, (PROBE_HEADER, "1")]
    if language is not None:
        headers.append(("Accept-Language", language))
    with RawConn(port) as conn:
        conn.send(build_request("GET", target, headers, host=host))
        return conn.recv_response()


def poll(port: int, cookie: str | None) -> Response:
    headers = [JSON_ACCEPT] if cookie is None else [JSON_ACCEPT, ("Cookie", cookie)]
    resp = request(port, "GET", STATUS_PATH, headers=headers)
    assert resp.status == 200
    assert resp.header("Cache-Control") == "no-store"
    assert (resp.header("Content-Type") or "").startswith("application/json")
    return resp


def arrived_at(cookie: str, school: str = "school") -> float:
    ticket = TicketSigner(SECRET.encode()).verify(cookie.split("=", 1)[1], school,
                                                   time.time(), TTL)
    assert ticket is not None, "the gateway issued a ticket that does not verify"
    return ticket.arrived_at


# -- the status endpoint -------------------------------------------------------------


def test_status_says_wait_then_go_and_the_reload_is_admitted(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    page = turned_away(gw.port, "/lesson/5")
    assert assert_waiting_page(page, url="/lesson/5") == 1
    cookie = ticket_cookie(page)
    first = arrived_at(cookie)

    state = poll(gw.port, cookie)
    body = state.json()
    assert body["state"] == "wait"
    assert body["position"] == 1
    assert body["retry_after"] >= 1
    # Re-issued on every poll, keeping the original arrival.
    renewed = ticket_cookie(state)
    assert arrived_at(renewed) == first

    gate.release("a")
    assert holder.recv_response().status == 200
    assert poll(gw.port, renewed).json()["state"] == "go"
    # The page now loads the original URL, with the ticket.
    back = request(gw.port, "GET", "/lesson/5", headers=[HTML_ACCEPT, ("Cookie", renewed)])
    assert back.status == 200
    assert gate.paths()[-1] == "/lesson/5"


def test_visitors_are_told_to_go_in_arrival_order(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    early = ticket_cookie(turned_away(gw.port))
    late = ticket_cookie(turned_away(gw.port))
    assert poll(gw.port, late).json()["position"] == 2
    gate.release("a")
    assert holder.recv_response().status == 200
    # One slot free: the later visitor polling first still waits for the
    # earlier one, who is let go; the freed slot is then spoken for.
    assert poll(gw.port, late).json()["state"] == "wait"
    assert poll(gw.port, early).json()["state"] == "go"
    after = poll(gw.port, late).json()
    assert after["state"] == "wait" and after["position"] == 1


def test_status_without_a_valid_ticket_promises_nothing(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    hold(gw.port, gate, "a")
    for cookie in (None, f"{COOKIE}=forged.ticket", "other=1"):
        resp = poll(gw.port, cookie)
        # "go" sends the page back to the real URL, where the request lines up
        # by its own arrival; no place, no cookie.
        assert resp.json() == {"state": "go", "position": None, "eta": None, "retry_after": 0}
        assert resp.header("Set-Cookie") is None


@pytest.mark.parametrize("language, heading", [
    ("de-DE,de;q=0.9,en;q=0.5", "Gerade ist viel los"),
    ("nb-NO,nb;q=0.9", "Det er mye trafikk akkurat nå"),
    ("fr-FR", "It's busy right now"),
])
def test_waiting_page_speaks_the_visitors_language(make_gateway, gate, language, heading):
    gw = gateway_for(make_gateway, gate.addr, school={"title": "Gymnasium <Nord>"})
    hold(gw.port, gate, "a")
    page = turned_away(gw.port, language=language)
    assert_waiting_page(page)
    text = page.body.decode()
    assert heading.replace("'", "&#x27;") in text or heading in text
    # The school's name is shown, escaped.
    assert "Gymnasium &lt;Nord&gt;" in text and "<Nord>" not in text
    # A meta refresh for browsers without scripts.
    assert '<noscript><meta http-equiv="refresh"' in text


# -- what a ticket is worth --------------------------------------------------------------


def test_returning_visitor_keeps_their_place(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    cookie = ticket_cookie(turned_away(gw.port, "/visitor"))
    # Two others arrive after the visitor and queue.
    others = [queue(gw.port, "GET", f"/other/{i}") for i in range(2)]
    # The visitor comes back (the page reloaded) and lines up by the arrival
    # the ticket remembers: ahead of both.
    back = queue(gw.port, "GET", "/visitor", [("Cookie", cookie)])
    gate.release("a")
    assert [r.status for r in read_all([holder, *others, back])] == [200] * 4
    assert gate.paths()[1:] == ["/visitor", "/other/0", "/other/1"]


def test_ticket_is_spent_on_admission_and_a_replay_gains_nothing(make_gateway, gate):
    # Issue 7 F: every status poll re-issued the ticket with its arrival,
    # even after its holder was admitted and served, so an old cookie jumped
    # the line forever.
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    cookie = ticket_cookie(turned_away(gw.port, "/visitor"))
    gate.release("a")
    assert holder.recv_response().status == 200
    back = request(gw.port, "GET", "/visitor", headers=[HTML_ACCEPT, ("Cookie", cookie)])
    assert back.status == 200
    # Spent: the served response tells the browser to drop the cookie ...
    [cleared] = [c for c in back.headers_named("Set-Cookie") if c.startswith(COOKIE + "=")]
    assert cleared.startswith(COOKIE + "=;")
    assert "max-age=0" in [a.strip().lower() for a in cleared.split(";")]
    # ... the status endpoint renews nothing ...
    after = poll(gw.port, cookie)
    assert after.json()["state"] == "go"
    assert after.header("Set-Cookie") is None
    # ... and the cookie replayed later lines up by its own arrival: last.
    holder = hold(gw.port, gate, "b")
    others = [queue(gw.port, "GET", f"/other/{i}") for i in range(2)]
    replay = queue(gw.port, "GET", "/replay", [("Cookie", cookie)])
    gate.release("b")
    assert [r.status for r in read_all([holder, *others, replay])] == [200] * 4
    assert gate.paths()[-3:] == ["/other/0", "/other/1", "/replay"]


def _mint(kind: str) -> str:
    now = time.time()
    signer = TicketSigner(SECRET.encode())
    vid = new_visitor_id()
    if kind == "genuine":
        return signer.issue("school", vid, now - 60, now)
    if kind == "altered":
        # A genuine ticket with its arrival moved an hour earlier.
        value = signer.issue("school", vid, now - 60, now)
        payload, mac = value.split(".")
        raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        arrived_ms = struct.unpack_from("!Q", raw, 9)[0]
        struct.pack_into("!Q", raw, 9, arrived_ms - 3_600_000)
        return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode() + "." + mac
    if kind == "other-school":
        return signer.issue("another school", vid, now - 60, now)
    if kind == "other-secret":
        return TicketSigner(b"not the gateway's secret!").issue("school", vid, now - 60, now)
    if kind == "expired":
        issued = now - TTL - 5
        return signer.issue("school", vid, issued - 60, issued)
    if kind == "garbage":
        return "AAAA.BBBB"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["genuine", "altered", "other-school", "other-secret",
                                  "expired", "garbage"])
def test_only_a_genuine_ticket_moves_a_request_forward(make_gateway, gate, kind):
    gw = gateway_for(make_gateway, gate.addr, admission={"ticket_ttl": TTL})
    holder = hold(gw.port, gate, "a")
    others = [queue(gw.port, "GET", f"/other/{i}") for i in range(2)]
    claimant = queue(gw.port, "GET", "/claimant", [("Cookie", f"{COOKIE}={_mint(kind)}")])
    gate.release("a")
    assert [r.status for r in read_all([holder, *others, claimant])] == [200] * 4
    if kind == "genuine":
        # Arrived a minute ago, by the gateway's own signature: first.
        assert gate.paths()[1:] == ["/claimant", "/other/0", "/other/1"]
    else:
        # Anything else lines up by its actual arrival: last.
        assert gate.paths()[1:] == ["/other/0", "/other/1", "/claimant"]


def test_ticket_from_another_school_on_the_same_gateway_is_worthless(make_gateway, gate):
    other = {"name": "other", "hosts": ["other.test"], "upstreams": [gate.addr],
             "max_inflight": 1}
    school = {"name": "school", "hosts": ["school.test"], "upstreams": [gate.addr],
              "max_inflight": 1}
    gw = gateway_for(make_gateway, gate.addr, schools=[school, other])
    # A ticket honestly earned at the other school, a while before.
    blocker = hold(gw.port, gate, "o", host="other.test")
    earned = ticket_cookie(turned_away(gw.port, host="other.test"))
    gate.release("o")
    assert blocker.recv_response().status == 200
    holder = hold(gw.port, gate, "a")
    others = [queue(gw.port, "GET", f"/other/{i}") for i in range(2)]
    claimant = queue(gw.port, "GET", "/claimant", [("Cookie", earned)])
    gate.release("a")
    assert [r.status for r in read_all([holder, *others, claimant])] == [200] * 4
    assert gate.paths()[-3:] == ["/other/0", "/other/1", "/claimant"]



def test_ticket_counts_in_any_cookie_header(make_gateway, gate):
    # Front ends that speak HTTP/2 to browsers may split cookies over several
    # Cookie headers; the ticket is found in whichever carries it.
    gw = gateway_for(make_gateway, gate.addr)
    holder = hold(gw.port, gate, "a")
    cookie = ticket_cookie(turned_away(gw.port, "/visitor"))
    other = queue(gw.port, "GET", "/other")
    back = queue(gw.port, "GET", "/visitor", [("Cookie", "theme=dark; lang=de"),
                                              ("Cookie", cookie)])
    gate.release("a")
    assert [r.status for r in read_all([holder, other, back])] == [200] * 3
    assert gate.paths()[1:] == ["/visitor", "/other"]


def test_status_poll_asking_for_an_upgrade_ends_its_connection(make_gateway, gate):
    # The parser is spent after an upgrade request; answering it keep-alive
    # left the connection open with nobody reading what came next.
    gw = gateway_for(make_gateway, gate.addr)
    with RawConn(gw.port, timeout=5) as conn:
        conn.send(build_request("GET", STATUS_PATH, [("Upgrade", "websocket"),
                                                     ("Connection", "Upgrade")]))
        resp = conn.recv_response()
        assert resp.status == 200
        assert resp.has_token("Connection", "close")
        assert conn.closed()
