"""The admission shell (gateway/proxy/admission.py) without sockets.

A real App and real ClientProtocols over mock transports, inside an asyncio
loop (the shell arms its poll timer on it). App.route makes a recording
Exchange subclass whose admitted() notes the exchange instead of picking an
upstream, so "admitted" means "would now connect upstream", and an
admitted exchange is finished by hand with a canned response, which is
what gives its slot back. Everything observable is what the shell decided:
which exchanges connect, in what order, what the clients were sent, and
whether their connections are being read.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.admission import QUEUED
from gateway.config import parse_config
from gateway.proxy.app import App
from gateway.proxy.client import ClientProtocol
from gateway.proxy.exchange import ADMITTING, CONNECTING, CONTINUE_100, RECEIVING, Exchange
from gateway.proxy.spool import STATS
from gateway.waiting import TicketSigner, new_visitor_id
from tests.support.transport import MockTransport

SECRET = "unit-test-secret-0123456789"

BASE = f"""
[server]
listen = "127.0.0.1:1"

[admission]
secret = "{SECRET}"
{{admission}}

[[schools]]
name = "school"
hosts = ["school.test"]
upstreams = ["127.0.0.1:9"]
max_inflight = 1
"""

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class Shell:
    """An App with recorded admissions and helpers to drive clients."""

    def __init__(self, extra: str = "", admission: str = "") -> None:
        config = BASE.format(admission=admission) + extra
        self.app = App(parse_config(config.encode(), "test.toml"))
        self.admission = self.app.admission
        self.connected: list[Exchange] = []

    def client(self, peer: str = "192.0.2.7") -> tuple[ClientProtocol, MockTransport]:
        proto = ClientProtocol(self.app)
        transport = MockTransport(peer)
        proto.connection_made(transport)  # type: ignore[arg-type]
        return proto, transport

    def send(self, raw: bytes, peer: str = "192.0.2.7"
             ) -> tuple[ClientProtocol, MockTransport, Exchange]:
        proto, transport = self.client(peer)
        proto.data_received(raw)
        return proto, transport, proto.queue[0] if proto.queue else None  # type: ignore[return-value]

    def get(self, target: str = "/page", *headers: str, peer: str = "192.0.2.7"
            ) -> tuple[ClientProtocol, MockTransport, Exchange]:
        return self.send(req("GET", target, *headers), peer)

    def paths(self) -> list[str]:
        return [ex.head.target.decode() for ex in self.connected]  # type: ignore[union-attr]

    def queued(self) -> int:
        return self.admission.controller.queued(0)


def req(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: school.test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def finish(ex: Exchange) -> None:
    """The upstream answered and the response ended."""
    ex.rejected(OK)


def status_of(transport: MockTransport) -> int:
    return int(bytes(transport.written).split(b" ", 2)[1])


def header(transport: MockTransport, name: bytes) -> bytes | None:
    head = bytes(transport.written).split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@pytest.fixture
def run(monkeypatch) -> Iterator[Callable[..., Any]]:
    """run(test_body, extra=..., admission=...) executes test_body(shell) in
    a loop; extra is appended to the config, admission goes into [admission]."""

    def execute(body: Callable[[Shell], Any], extra: str = "", admission: str = "") -> Any:
        async def main() -> Any:
            shell = Shell(extra, admission)

            class Recorded(Exchange):
                # Exchange is a cdef class; admitted() is cpdef, so this
                # override is what the shell's Python calls reach.
                def admitted(self) -> None:
                    if self.state == ADMITTING:
                        self.state = CONNECTING
                        shell.connected.append(self)

            monkeypatch.setattr("gateway.proxy.app.Exchange", Recorded)
            try:
                result = body(shell)
                if asyncio.iscoroutine(result):
                    result = await result
                return result
            finally:
                shell.admission.close()
        return asyncio.run(main())

    yield execute


# -- admit, queue, release ------------------------------------------------------------


def test_second_request_waits_for_the_first_to_finish(run):
    def body(s: Shell) -> None:
        _, t1, first = s.get("/one")
        _, t2, second = s.get("/two")
        assert s.paths() == ["/one"]
        assert second.ticket is not None and second.ticket.state == QUEUED
        # A bodiless request has nothing to hold back: its connection is read
        # on (so a reset is noticed), unlike an upload's.
        assert t2.reading
        finish(first)
        assert s.paths() == ["/one", "/two"]
        assert status_of(t1) == 200
        assert first.ticket is None  # given back exactly once
    run(body)


def test_queued_upload_is_not_read_until_admitted(run):
    def body(s: Shell) -> None:
        _, _, first = s.get("/one")
        _, t2, _ = s.send(req("POST", "/upload", "Content-Length: 100000"))
        assert not t2.reading
        assert t2.written == b""  # no 100 Continue, no answer
        finish(first)
        assert s.paths() == ["/one", "/upload"]
        assert t2.reading
    # Streaming (request buffering off): admitted, it is forwarded at once and
    # its body read while it holds the slot.
    run(body, extra="request_buffering = false\n")


def test_priority_and_arrival_order_of_the_queue(run):
    def body(s: Shell) -> None:
        _, _, first = s.get("/hold")
        exchanges = {}
        for target in ("/import/a", "/page/b", "/export/c", "/page/d"):
            exchanges[target] = s.get(target)[2]
        _, _, post = s.send(req("POST", "/homework", body=b"x"))
        finish(first)
        order = ["/homework", "/page/b", "/page/d", "/import/a", "/export/c"]
        for target in order:
            assert s.paths()[-1] == target
            finish(post if target == "/homework" else exchanges[target])
        assert s.paths()[1:] == order
    run(body)


def test_admission_disabled_admits_everything_at_once(run):
    def body(s: Shell) -> None:
        for i in range(5):
            s.get(f"/p{i}")
        assert s.paths() == [f"/p{i}" for i in range(5)]
        assert s.admission._timer is None
    run(body, admission="enabled = false")


# -- clients leaving ----------------------------------------------------------------------


def test_client_lost_while_queued_gives_back_its_place(run):
    def body(s: Shell) -> None:
        _, _, first = s.get("/one")
        gone, _, _ = s.get("/gone")
        s.get("/stays")
        assert s.queued() == 2
        gone.connection_lost(ConnectionResetError())
        assert s.queued() == 1
        finish(first)
        assert s.paths() == ["/one", "/stays"]
    run(body)


def test_client_lost_while_admitted_gives_back_its_slot(run):
    def body(s: Shell) -> None:
        holder, _, _ = s.get("/one")
        s.get("/next")
        holder.connection_lost(ConnectionResetError())
        assert s.paths() == ["/one", "/next"]
    run(body)


def test_a_ticket_whose_exchange_is_gone_does_not_keep_the_slot(run):
    def body(s: Shell) -> None:
        _, _, first = s.get("/one")
        # A ticket queued with nobody behind it (its exchange vanished
        # without cancelling), then a real request after it.
        orphan = s.admission.controller.request(0, 2, b"x", time.time())
        assert orphan.state == QUEUED and orphan.user is None
        s.get("/after")
        finish(first)
        # The orphan was admitted and its slot passed straight on.
        assert s.paths() == ["/one", "/after"]
    run(body)


# -- request buffering: the body before the slot ------------------------------------------


def post(target: str, length: int, *headers: str, body: bytes = b"") -> bytes:
    """A POST head announcing `length` bytes, with the first `body` of them."""
    lines = [f"POST {target} HTTP/1.1", "Host: school.test", f"Content-Length: {length}",
             *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_upload_is_read_before_it_takes_a_slot(run):
    def body(s: Shell) -> None:
        proto, t, up = s.send(post("/upload", 10, "Expect: 100-continue"))
        # Room now: its body is read with no ticket at all.
        assert up.state == RECEIVING and up.ticket is None
        assert bytes(t.written) == CONTINUE_100 and t.reading
        _, _, page = s.get("/page")
        assert s.paths() == ["/page"]  # the slot was free for others meanwhile
        proto.data_received(b"0123456789")
        # Complete, and the school is full now: it waits with its body held,
        # its connection read on (nothing of it is left with the client).
        assert up.ticket is not None and up.ticket.state == QUEUED and t.reading
        finish(page)
        assert s.paths() == ["/page", "/upload"]
        assert up.spool.size == 10
    run(body)


def test_queued_upload_gives_its_slot_back_while_its_body_arrives(run):
    def body(s: Shell) -> None:
        _, _, first = s.get("/one")
        proto, t, up = s.send(post("/upload", 10, "Expect: 100-continue"))
        assert not t.reading and t.written == b"" and up.state == ADMITTING
        _, _, later = s.get("/later")
        finish(first)
        # Its turn came: it gave the slot straight on to /later and reads
        # its body (100 Continue now, not before).
        assert s.paths() == ["/one", "/later"]
        assert up.state == RECEIVING and up.ticket is None
        assert t.reading and bytes(t.written) == CONTINUE_100
        proto.data_received(b"0123456789")
        assert up.ticket is not None and up.ticket.state == QUEUED
        finish(later)
        assert s.paths() == ["/one", "/later", "/upload"]
        # Admitted twice, counted once.
        stats = s.admission.controller.stats(0)
        assert stats["admitted"] == {"bulk": 0, "submit": 1, "interactive": 2}
    run(body)


def test_upload_asking_again_keeps_its_place_in_line(run):
    def body(s: Shell) -> None:
        _, _, first = s.get("/one")
        proto, _, up = s.send(post("/upload", 3))
        _, _, second = s.send(req("POST", "/second", body=b"x"))
        finish(first)
        assert s.paths() == ["/one", "/second"]  # /upload is reading its body
        s.send(req("POST", "/third", body=b"y"))  # same class, arrives later
        proto.data_received(b"abc")
        finish(second)
        assert s.paths() == ["/one", "/second", "/upload"]
        finish(up)
        assert s.paths()[-1] == "/third"
    run(body)


def test_upload_costs_one_school_token(run):
    async def body(s: Shell) -> None:
        _, _, first = s.get("/one")  # takes the bucket's only token
        proto, _, up = s.send(post("/upload", 3))
        finish(first)
        for _ in range(300):  # the bucket refills in a second; the poll admits
            if up.state == RECEIVING:
                break
            await asyncio.sleep(0.01)
        assert up.state == RECEIVING
        proto.data_received(b"abc")
        # The token it took is back since it gave its slot back unused: it
        # is admitted at once, not after another refill.
        assert s.paths() == ["/one", "/upload"]
    run(body, extra="rate = 1.0\nburst = 1\n")


SHORT_SUBMIT = """
[[classes]]
name = "submit"
priority = 20
match = {methods = ["POST"]}
max_wait = 0.6

[[classes]]
name = "interactive"
priority = 10
"""


def test_time_in_line_over_both_phases_stays_within_max_wait(run):
    async def body(s: Shell) -> None:
        _, _, first = s.get("/one")
        proto, t, up = s.send(post("/upload", 3, "Accept: application/json"))
        await asyncio.sleep(0.3)
        finish(first)
        assert up.state == RECEIVING
        assert 0.0 < up.wait_left <= 0.3  # 0.3 s of its 0.6 s were spent in line
        _, _, other = s.get("/other")  # takes the slot while the body comes
        proto.data_received(b"abc")
        ticket = up.ticket
        assert ticket is not None and ticket.state == QUEUED
        assert ticket.arrived_at == up.arrived_at
        for _ in range(100):
            if b"HTTP/1.1 503" in t.written:
                break
            await asyncio.sleep(0.01)
        answer = bytes(t.written)
        assert b"HTTP/1.1 503" in answer and b'"forwarded":false' in answer
        assert up.ticket is None and up.spool is None
        finish(other)
        assert s.paths() == ["/one", "/other"]  # never forwarded
    run(body, extra=SHORT_SUBMIT)


def test_client_lost_while_its_body_arrives_frees_the_buffer(run):
    def body(s: Shell) -> None:
        before = (STATS.bodies, STATS.bytes)
        proto, _, up = s.send(post("/upload", 100_000, body=b"x" * 5000))
        assert up.state == RECEIVING
        assert (STATS.bodies, STATS.bytes) == (before[0] + 1, before[1] + 5000)
        # A FIN mid-body: the body can never be complete, so the connection
        # goes at once rather than after the body timeout.
        assert proto.eof_received() is False
        proto.connection_lost(None)
        assert (STATS.bodies, STATS.bytes) == before and up.spool is None
        s.get("/page")
        assert s.paths() == ["/page"]  # it never took a slot
        assert s.admission.controller.stats(0)["inflight"] == 1
    run(body)


def test_client_lost_while_queued_with_its_body_held_frees_both(run):
    def body(s: Shell) -> None:
        # Spools of earlier tests' dropped exchanges are freed (and
        # uncounted) when the collector finds them: not in the middle here.
        gc.collect()
        before = (STATS.bodies, STATS.bytes)
        proto, _, up = s.send(post("/upload", 10, "Expect: 100-continue"))
        _, _, page = s.get("/page")
        proto.data_received(b"0123456789")  # complete while the school is full
        assert up.ticket is not None and s.queued() == 1
        assert STATS.bodies == before[0] + 1
        assert proto.eof_received() is False  # a FIN while waiting in line
        proto.connection_lost(None)
        assert (STATS.bodies, STATS.bytes) == before and s.queued() == 0
        finish(page)
        assert s.paths() == ["/page"]
    run(body)


def test_body_larger_than_request_buffer_max_takes_a_slot_and_streams(run):
    def body(s: Shell) -> None:
        _, t, up = s.send(post("/big", 1000, body=b"y" * 300))
        # 300 bytes in, past the 200 held whole: it asks for a slot with
        # them, and reading waits until they are forwarded.
        assert s.paths() == ["/big"]
        assert up.spool.size == 300 and not t.reading
    run(body, extra="request_buffer_max = 200\n")


def test_admission_off_still_reads_the_body_first(run):
    def body(s: Shell) -> None:
        proto, _, up = s.send(post("/upload", 4))
        assert up.state == RECEIVING and s.paths() == []
        proto.data_received(b"abcd")
        assert s.paths() == ["/upload"]
    run(body, admission="enabled = false")


def test_whole_body_deadline_grows_with_what_arrived(run):
    def body(s: Shell) -> None:
        # A trickle: 10 bytes, then nothing for the whole deadline.
        proto, t, up = s.send(post("/slow", 1_000_000, body=b"z" * 10))
        start = up.body_since
        proto.check_timeouts(start + 59.0)
        assert t.written == b""
        proto.check_timeouts(start + 61.0)
        assert status_of(t) == 408 and up.spool is None
        # A steady upload: 1 MB in gives 1000 s more at 1000 bytes a second.
        proto, t, up = s.send(post("/steady", 2_000_000, body=b"z" * 1_000_000))
        proto.check_timeouts(up.body_since + 500.0)
        assert t.written == b"" and up.state == RECEIVING
        proto.check_timeouts(up.body_since + 1061.0)
        assert status_of(t) == 408
    run(body, extra="[timeouts]\nclient_body = 5000\nclient_body_min_rate = 1000\n")


# -- expiry and rejections -------------------------------------------------------------------

SHORT_WAIT = """
[[classes]]
name = "interactive"
max_wait = 0.05
"""


def test_queued_request_past_max_wait_gets_the_waiting_page(run):
    async def body(s: Shell) -> None:
        _, _, first = s.get("/one")
        _, t2, late = s.get("/two", "Accept: application/json")
        for _ in range(100):
            if t2.written:
                break
            await asyncio.sleep(0.01)
        assert status_of(t2) == 503
        assert int(header(t2, b"retry-after") or b"0") >= 1
        assert late.ticket is None
        assert s.queued() == 0
        # Nothing left to wait for: no timer keeps firing.
        assert s.admission._timer is None
        finish(first)
        assert s.paths() == ["/one"]
    run(body, extra=SHORT_WAIT)


def test_refused_upgrade_closes_the_connection(run):
    def body(s: Shell) -> None:
        s.get("/one")
        s.get("/queued")  # the queue is full from here on
        _, t, _ = s.get("/ws", "Upgrade: websocket", "Connection: Upgrade",
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                        "Sec-WebSocket-Version: 13")
        assert status_of(t) == 503
        assert header(t, b"connection") == b"close"
    run(body, admission="max_queue = 1")


def test_request_fitting_no_class_is_judged_as_the_least_urgent(run):
    classes = """
[[classes]]
name = "urgent"
priority = 5
match = {paths = ["/urgent"]}

[[classes]]
name = "slow"
priority = -5
match = {paths = ["/slow"]}
"""

    def body(s: Shell) -> None:
        _, _, first = s.get("/one")
        _, _, other = s.get("/other")  # fits no class
        s.get("/slow/x")
        _, _, urgent = s.get("/urgent/x")
        finish(first)
        assert s.paths()[-1] == "/urgent/x"
        finish(urgent)
        # Same class as the least urgent ("slow"), first come first served.
        assert s.paths()[-1] == "/other"
        finish(other)
        assert s.paths()[-1] == "/slow/x"
    run(body, extra=classes)


# -- the status endpoint ----------------------------------------------------------------------


def _cookie(arrived_ago: float = 5.0, school: str = "school") -> str:
    now = time.time()
    value = TicketSigner(SECRET.encode()).issue(school, new_visitor_id(), now - arrived_ago, now)
    return f"Cookie: schoolgate_ticket={value}"


def test_status_without_ticket_says_go_without_a_cookie(run):
    def body(s: Shell) -> None:
        s.get("/one")
        _, t, _ = s.get("/.schoolgate/status")
        assert status_of(t) == 200
        assert b'"state":"go"' in t.written
        assert header(t, b"set-cookie") is None
        assert s.queued() == 0  # the poll itself is never queued
    run(body)


def test_waiting_page_then_status_wait_then_go(run):
    def body(s: Shell) -> None:
        _, _, first = s.get("/one")
        s.get("/queued")
        # Queue full: the browser gets the page and a place in the room.
        _, t, _ = s.get("/lesson", "Accept: text/html")
        assert status_of(t) == 503
        cookie = (header(t, b"set-cookie") or b"").split(b";")[0].decode()
        assert cookie.startswith("schoolgate_ticket=")
        _, poll, _ = s.get("/.schoolgate/status", f"Cookie: {cookie}")
        assert b'"state":"wait"' in poll.written
        assert b'"position":2' in poll.written  # one queued request ahead
        finish(first)
        finish(s.connected[-1])
        _, poll, _ = s.get("/.schoolgate/status", f"Cookie: {cookie}")
        assert b'"state":"go"' in poll.written
    run(body, admission="max_queue = 1")


def test_genuine_ticket_orders_the_request_by_its_arrival(run):
    def body(s: Shell) -> None:
        _, _, first = s.get("/one")
        s.get("/a")
        s.get("/b")
        s.get("/visitor", _cookie(60))  # arrived a minute ago, by our signature
        s.get("/forged", _cookie(120, school="elsewhere"))  # signed for another school
        finish(first)
        order = []
        for _ in range(4):
            ex = s.connected[-1]
            order.append(ex.head.target.decode())  # type: ignore[union-attr]
            finish(ex)
        assert order == ["/visitor", "/a", "/b", "/forged"]
    run(body)


# -- tickets are spent -------------------------------------------------------------------------
# Issue 7 F: a status poll re-issued the ticket with its arrival forever, even
# after its holder was admitted and served, so an old cookie jumped the line.

# A probe request (max_wait 0) is turned away at once while the school is
# full: that is how a visitor gets a ticket here.
PROBE_CLASSES = """
[[classes]]
name = "probe"
priority = 0
match = {headers = {"X-Probe" = "*"}}
max_wait = 0.0

[[classes]]
name = "interactive"
priority = 10
max_wait = 20.0
"""
CLEARED = b"schoolgate_ticket=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax"


def _turned_away(s: Shell, target: str = "/lesson") -> str:
    """The `Cookie: schoolgate_ticket=...` line a turned-away visitor sends back."""
    _, t, _ = s.get(target, "Accept: text/html", "X-Probe: 1")
    assert status_of(t) == 503
    pair = (header(t, b"set-cookie") or b"").split(b";")[0].decode()
    assert pair.startswith("schoolgate_ticket=")
    return f"Cookie: {pair}"


def _ticket(cookie_line: str):
    value = cookie_line.split("=", 1)[1]
    ticket = TicketSigner(SECRET.encode()).verify(value, "school", time.time(), 600.0)
    assert ticket is not None
    return ticket


def _poll(s: Shell, *headers: str) -> MockTransport:
    _, t, _ = s.get("/.schoolgate/status", "Accept: application/json", *headers)
    assert status_of(t) == 200
    return t


def test_ticket_is_spent_by_the_request_that_gets_in(run):
    def body(s: Shell) -> None:
        _, _, first = s.get("/one")
        cookie = _turned_away(s)
        finish(first)
        _, _, back = s.get("/lesson", cookie)
        assert s.paths()[-1] == "/lesson"
        # The upstream's response clears the cookie.
        assert back.response_headers == [(b"Set-Cookie", CLEARED)]
        # Polling afterwards re-issues nothing.
        poll = _poll(s, cookie)
        assert b'"state":"go"' in poll.written
        assert header(poll, b"set-cookie") is None
        finish(back)
        # Replayed later, the ticket lines up by its own arrival: last.
        _, _, holder = s.get("/hold")
        s.get("/a")
        s.get("/b")
        _, _, replay = s.get("/replay", cookie)
        assert replay.response_headers is None
        finish(holder)
        for _ in range(3):
            finish(s.connected[-1])
        assert s.paths()[-3:] == ["/a", "/b", "/replay"]
    run(body, extra=PROBE_CLASSES)


def test_a_second_copy_gains_nothing_while_the_first_waits_in_the_queue(run):
    def body(s: Shell) -> None:
        _, _, holder = s.get("/one")
        cookie = _turned_away(s)
        s.get("/a")
        s.get("/visitor", cookie)  # arrived before /a: ahead of it
        s.get("/copy", cookie)  # the same ticket again: behind /a
        finish(holder)
        for _ in range(3):
            finish(s.connected[-1])
        assert s.paths()[1:] == ["/visitor", "/a", "/copy"]
    run(body, extra=PROBE_CLASSES)


def test_ticket_of_a_request_that_never_got_in_keeps_its_place(run):
    def body(s: Shell) -> None:
        _, _, holder = s.get("/one")
        cookie = _turned_away(s)
        s.get("/a")
        gone, _, _ = s.get("/visitor", cookie)
        # The visitor reloads: the queued request's client goes away, and
        # the ticket it was holding is worth its place again.
        gone.connection_lost(ConnectionResetError())
        s.get("/reload", cookie)
        finish(holder)
        for _ in range(2):
            finish(s.connected[-1])
        assert s.paths()[1:] == ["/reload", "/a"]
    run(body, extra=PROBE_CLASSES)


def test_queued_past_max_wait_the_visitor_keeps_the_same_ticket(run):
    async def body(s: Shell) -> None:
        _, _, holder = s.get("/one")
        cookie = _turned_away(s)
        _, t, _ = s.get("/lesson", "Accept: text/html", cookie)
        for _ in range(100):
            if t.written:
                break
            await asyncio.sleep(0.01)
        assert status_of(t) == 503
        renewed = f"Cookie: {(header(t, b'set-cookie') or b'').split(b';')[0].decode()}"
        # Never admitted: the same ticket (id and arrival), not a spent one.
        first, again = _ticket(cookie), _ticket(renewed)
        assert (again.visitor_id, again.arrived_at) == (first.visitor_id, first.arrived_at)
        assert b'"state":"wait"' in _poll(s, renewed).written
        finish(holder)
    run(body, extra=PROBE_CLASSES.replace("max_wait = 20.0", "max_wait = 0.05"))


def test_status_reissues_only_while_the_visitor_waits(run):
    def body(s: Shell) -> None:
        s.get("/one")
        s.get("/queued")
        cookie = _turned_away(s)
        poll = _poll(s, cookie)
        assert b'"state":"wait"' in poll.written
        renewed = f"Cookie: {(header(poll, b'set-cookie') or b'').split(b';')[0].decode()}"
        assert _ticket(renewed).arrived_at == _ticket(cookie).arrived_at
        # A genuine ticket whose visitor is not in this room (served,
        # forgotten, or another worker's) is told "go" and not renewed: it
        # keeps its own expiry.
        stranger = _poll(s, _cookie(60))
        assert b'"state":"go"' in stranger.written
        assert header(stranger, b"set-cookie") is None
    run(body, extra=PROBE_CLASSES)


def test_expired_ticket_is_a_new_arrival(run):
    def body(s: Shell) -> None:
        _, _, holder = s.get("/one")
        signer = TicketSigner(SECRET.encode())
        issued = time.time() - 600.0 - 5
        stale = signer.issue("school", new_visitor_id(), issued - 60, issued)
        s.get("/a")
        s.get("/stale", f"Cookie: schoolgate_ticket={stale}")
        finish(holder)
        for _ in range(2):
            finish(s.connected[-1])
        assert s.paths()[1:] == ["/a", "/stale"]
    run(body, extra=PROBE_CLASSES)


def test_a_full_spent_record_still_honours_tickets(run):
    # Issue 9: a full record used to honour no ticket (every visitor holding
    # one lost its place); it now forgets its oldest spend to make room
    # (Line.spend), and a replay of a ticket still remembered is refused.
    def body(s: Shell) -> None:
        # The spent record is kept in the school's line, bounded by its capacity.
        s.admission.line.store.capacity = 1
        _, _, holder = s.get("/one")
        s.get("/a")
        s.get("/first", _cookie(60))  # spent: the record is full from here on
        second = _cookie(50)
        s.get("/second", second)  # spent too: the first's spend is evicted
        s.get("/replay", second)  # a replay of the second: a newcomer
        finish(holder)
        for _ in range(4):
            finish(s.connected[-1])
        assert s.paths()[1:] == ["/first", "/second", "/a", "/replay"]
    run(body)


# -- the poll timer ----------------------------------------------------------------------------

# Appended right after BASE, so the first lines still belong to the school.
RATE_LIMITED = """rate = 5.0
burst = 1

[[classes]]
name = "interactive"
max_wait = 0.4
"""


def test_full_rate_limited_school_does_not_spin_the_poll_timer(run, monkeypatch):
    # A school at max_inflight that also has a token bucket: its bucket
    # refills while only a freed slot can admit anything, so that refill is
    # no deadline (the scheduler used to report it, in the past, forever).
    # The shell must not poll in a busy loop meanwhile, and must still
    # expire the queued request on time.
    async def body(s: Shell) -> None:
        polls = 0
        original = s.admission._poll

        def counting() -> None:
            nonlocal polls
            polls += 1
            original()

        monkeypatch.setattr(s.admission, "_poll", counting)
        _, _, first = s.get("/one")
        _, t, _ = s.get("/two", "Accept: application/json")
        for _ in range(100):
            if t.written:
                break
            await asyncio.sleep(0.01)
        assert status_of(t) == 503  # expired at max_wait, as without a bucket
        await asyncio.sleep(0.3)
        # About one poll per 50 ms at most; a busy loop makes tens of thousands.
        assert polls < 40, polls
        finish(first)
        assert s.paths() == ["/one"]

    run(body, extra=RATE_LIMITED)
