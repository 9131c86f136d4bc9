"""Admission in the I/O shell: drives the sans-IO AdmissionController for one
worker and turns its decisions into actions on exchanges.

Ownership of a scheduler ticket (exchange.ticket):
- set when request() returns ADMITTED or QUEUED, cleared exactly once: by
  release() when the exchange finishes or enters a tunnel, by cancel() when
  its client leaves, or when the queued ticket comes back REJECTED;
- a QUEUED ticket's `user` slot points back at its exchange, so tickets the
  controller hands out later (from release() or poll()) find their request.
  An exchange whose ticket is no longer its own (client gone) is skipped.

While a request with a body is queued its client connection is not read
(PAUSE_ADMISSION): an upload's body stays with the client, and
`Expect: 100-continue` is answered only once the request is admitted. A
bodiless request's connection keeps being read, so that a client who
leaves while queued (a reset) gives its place back at once; whatever it
pipelines meanwhile waits behind it, bounded by max_pipeline.

A waiting-room ticket (the signed cookie, not the scheduler's Ticket) lines
a returning visitor up by their first arrival, once: the request carrying
it spends it in the shared line before asking for a slot (Line.spend: under
the instance's lock without Redis, so a second spend at any worker is
refused; with Redis, refused at another instance once it has synced), and
the upstream's response clears the cookie. A spend is taken back if that
request is turned away, or queued and never gets in (its client leaves, its
max_wait passes, a reload removes its school). The status endpoint renews a
ticket only while its visitor waits in the room.

Request buffering (a school's `request_buffering`): a request with a body
never holds a slot while its client sends. Two phases:
- school has room at the head (free_slots): the body is read into the
  exchange's spool with no ticket at all (100 Continue if asked), and the
  request asks for admission once the body is complete. If the school is
  full by then, it queues with its body held and is forwarded when
  admitted (a submitted form is not lost to a waiting page).
- school full at the head: the request queues with its body unread, as
  above. When its turn comes it gives the slot back at once (refund: its
  school token returns, so one request costs one token), reads its body,
  then asks again with its original arrival (first in its class), no
  second client-bucket charge, and what was left of its max_wait, so the
  time it waits in line over both phases stays within its class's max_wait.
A body that outgrows the school's request_buffer_max asks for a slot with
what has arrived and streams the rest once forwarded.
Charging: one school token and one client-bucket token per request in
either phase. Where it is not exact: a request reading its body in the
first phase has not met its client bucket yet (a client over its own rate
sends its body, then waits or gets 429), and an admission given back still
counts in the measured admission rate behind the waiting page's estimate.

Clock: time.time(), because class windows are wall-clock times and a
returning visitor's arrival comes from a cookie another worker may have
issued. The poll timer runs on the loop's monotonic clock, set from the
difference.

Reload: a worker has one Admission for its whole life. A reload calls
reconfigure(), which moves the controller's state to the new config by
school, class and pool name (AdmissionController.reconfigure): connections,
requests in flight and queued tickets keep counting, so a reload never hands
out slots a second time, and a ticket admitted before it gives its slot back
into the state that holds it now. School and class indices may change; the
callback given to reconfigure renumbers what the App side holds
(SchoolRuntime.index, ClientProtocol.school, Exchange.klass) before anything
is answered.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

# The page renderer's names (waiting.render_status_json, waiting.wants_json) are
# looked up on use: the first page or status poll loads it (see gateway.waiting).
from gateway import waiting
from gateway._native.accesslog import WAITING as WAITING_PAGE
from gateway._native.context import AdmissionCore
from gateway._native.stats import PAGE_429, PAGE_WAITING
from gateway.admission import ADMITTED, QUEUED, AdmissionController
from gateway.admission.allotment import AllotmentTask
from gateway.proxy.exchange import PAUSE_ADMISSION
from gateway.shared.region import inherited
from gateway.waiting import TicketSigner, cookie_header, new_visitor_id, read_cookie
from gateway.waiting.line import POLL_MAX, POLL_MIN, Line, Rules
from gateway.waiting.line_store import LocalLineStore, ShmLineStore
from gateway.waiting.line_view import Inputs, LineView

if TYPE_CHECKING:
    from gateway.admission import Ticket
    from gateway.config import Config
    from gateway.http import RequestHead
    from gateway.proxy.app import App, SchoolRuntime
    from gateway.proxy.exchange import Exchange

# Served by the gateway on every school's host name, so the waiting page can
# poll it same-origin and the ticket cookie (Path=/) comes along.
STATUS_PATH = b"/.schoolgate/status"
COOKIE = "schoolgate_ticket"
_JSON_HEADERS = [
    (b"Content-Type", b"application/json"),
    (b"Cache-Control", b"no-store"),
]

_process_secret: bytes | None = None


def process_secret(fleet: bytes | None = None) -> bytes:
    """The ticket key used when the config sets none: random, made once per
    gateway process (the supervisor makes it before forking, so its workers
    share it). Tickets then survive reloads, not restarts or other instances.
    `fleet` sets it instead (the key shared through Redis, see
    gateway.waiting.line_store.fleet_secret), so every instance honours
    every other's tickets."""
    global _process_secret
    if fleet is not None:
        _process_secret = fleet
    if _process_secret is None:
        _process_secret = secrets.token_bytes(32)
    return _process_secret


def line_store(cfg: Config, redis: object | None = None) -> object:
    """Where this worker's waiting lines live: Redis with `[redis] url`
    (through `redis`, the worker's client, when given: one connection pool
    per worker), else the "line" segment of the instance's shared memory
    region (made by the supervisor before it forked), else this process (an
    App built without a supervisor)."""
    if cfg.redis.url:
        from gateway.shared.redis import client
        from gateway.waiting.line_store import RedisLineStore

        return RedisLineStore(redis if redis is not None else client(cfg.redis),
                              cfg.redis.prefix)
    shared = inherited()
    return ShmLineStore(shared.segment("line")) if shared is not None else LocalLineStore()


class Admission:
    """One worker's admission state, serving the current App (config); it
    outlives reloads (see reconfigure)."""

    def __init__(self, app: App, cfg: Config,
                 allotment: AllotmentTask | None = None, redis: object | None = None) -> None:
        """`allotment` sets the part of each limit this worker enforces
        (AdmissionController; default: the whole limits); `redis`: the
        worker's Redis client, for the shared lines (see line_store)."""
        self.controller = AdmissionController(cfg, time.time(), allotment)
        # The waiting lines, shared by every worker (and instance) using the
        # same store; admissions measured by name, kept across reloads.
        self._admitted: dict[str, int] = {}
        self.line = LineView(line_store(cfg, redis), f"{socket.gethostname()}:{os.getpid()}",
                             self._line_inputs, interval=cfg.redis.sync_interval)
        # Queued requests holding a ticket's spend, taken back if they never
        # get in: scheduler Ticket -> (school name, visitor id).
        self._holding: dict[Ticket, tuple[str, bytes]] = {}
        # What Exchange.start/_finish use to admit and release without a
        # Python frame on the common path (see gateway._native.context).
        self.core = AdmissionCore(self, self.controller, self.controller._scheduler,
                                  cfg.admission.enabled)
        # The request counters follow the controller's schools and classes.
        self.core.stats.set_layout(self.controller.school_names, self.controller.class_names)
        self._configure(app, cfg)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0

    def _configure(self, app: App, cfg: Config) -> None:
        self.app = app
        self.enabled = cfg.admission.enabled
        self.core.enabled = self.enabled
        secret = cfg.admission.secret.encode() or process_secret()
        # With a shared Redis, the fleet (its key prefix) is signed too.
        self.signer = TicketSigner(secret, fleet=cfg.redis.prefix if cfg.redis.url else "")
        self.ttl = cfg.admission.ticket_ttl
        # Seconds of the fleet's admissions a line calls ahead while the
        # school's queue is busy: a called visitor's reload lines up by its
        # first arrival, ahead of the requests queued after it, so the line
        # moves at the admission rate instead of waiting for an empty queue
        # (see _line_status).
        self.call_ahead = cfg.admission.call_ahead
        # A spent ticket is remembered until every copy has lapsed: any was
        # issued by now (give or take the leeway for other instances' clocks)
        # and lives ttl from then.
        self.line.rules = Rules(cfg.admission.waiting_grace, cfg.admission.called_grace,
                                self.ttl + self.signer.leeway)
        self.secure_cookie = cfg.server.tls_cert is not None
        # Sent with the response to a request that used its ticket up, so the
        # browser drops the cookie.
        self._cleared = [(b"Set-Cookie", cookie_header(COOKIE, "", 0, self.secure_cookie))]

    def reconfigure(self, app: App, cfg: Config,
                    renumber: Callable[[list[int], list[int]], None]) -> None:
        """Serve `app`, built from the reloaded `cfg` (the whole config: the
        allotment task sets this worker's share again), keeping every count
        and ticket.

        `renumber(schools, classes)` is called once the state has moved,
        with schools[i] = the new index of old school i (-1: removed), and
        classes likewise; it must bring every index held outside
        (SchoolRuntime.index, ClientProtocol.school, Exchange.klass) up to
        date. Then the consequences are acted on: queued requests the new
        limits admit go upstream; those whose school or class was removed get
        App.removed_response (503 with Retry-After: nothing was sent, a retry
        is routed by the new config); the poll timer is re-armed. ValueError
        (a config the controller refuses) leaves everything as it was.
        """
        now = time.time()
        old_schools = self.controller.school_names
        old_classes = self.controller.class_names
        admitted, rejected = self.controller.reconfigure(cfg, now)
        schools = _renumbering(old_schools, self.controller.school_names)
        classes = _renumbering(old_classes, self.controller.class_names)
        # Before renumber: an exchange it answers is counted by new indices.
        self.core.stats.set_layout(self.controller.school_names, self.controller.class_names)
        renumber(schools, classes)
        self._configure(app, cfg)
        self._dispatch(admitted)
        self._removed([t for t in rejected if t.reason == "removed"])
        self._expire([t for t in rejected if t.reason != "removed"], now)
        self._rearm()

    def _removed(self, tickets: list[Ticket]) -> None:
        for t in tickets:
            self._void(t)
            ex = _claim(t)
            if ex is not None:
                ex.settle_keep_alive()
                ex.reason = "the school was removed by a reload"
                ex.rejected(self.app.removed_response(ex))

    # -- connections -------------------------------------------------------------
    def connection_open(self, school: int) -> bool:
        """Count a client connection against `school`; False (not counted)
        when it is at max_connections. Counted with admission off too, so
        that a reload turning it on finds the right counts."""
        return self.controller.connection_open(school, time.time())

    def connection_close(self, school: int) -> None:
        self.controller.connection_close(school)

    # -- requests ----------------------------------------------------------------
    def admit(self, ex: Exchange) -> None:
        school = ex.school
        if ex.body_first() and (not self.enabled or self.controller.free_slots(
                school.index, time.time()) != 0):  # type: ignore[union-attr]
            # Room now: receive the body without a slot; on_request_end
            # brings the request back here, complete.
            ex.receive_body()
            return
        if not self.enabled:
            ex.admitted()
            return
        now = time.time()
        if ex.arrived_at == 0.0 and self._joins_line(ex, now):
            return
        visitor = self._read_ticket(ex, now)
        arrived = visitor[1] if visitor is not None else None
        client_key: bytes | None = ex.client.client_key
        max_wait = None
        if ex.arrived_at > 0.0:
            # Asking again after giving its slot back to read its body: its
            # place in line, what is left of its wait, and its client token
            # was taken the first time.
            arrived, client_key, max_wait = ex.arrived_at, None, ex.wait_left
        t = self.controller.request(school.index, ex.klass,  # type: ignore[union-attr]
                                    client_key, now, arrived, max_wait)
        self.decided(ex, t, now, visitor)

    def _joins_line(self, ex: Exchange, now: float) -> bool:
        """Once a school's waiting line has tickets waiting, a newcomer who
        would be shown the waiting page joins the end of that line (True:
        answered with the page) instead of taking a slot or a place in the
        queue: capacity that frees goes to the line first, as in a
        production waiting room (once a queue exists, new users join its
        end). So does a visitor who comes back (a reload, another tab) while
        tickets are still waiting ahead of its own: it keeps its number.

        Only for what the page is for: a browser's GET or HEAD of a class
        whose turned-away requests get the waiting page (not the 429 of bulk
        tools), while tickets of the request's urgency or more urgent ones
        wait (a more urgent class is not held up by a less urgent line).
        Everything else asks the scheduler: a request that cannot wait on a
        page (a script's, a form's POST) queues by its arrival, behind the
        called visitors who arrived before it (their reloads carry their
        first arrival), and a called visitor or one at the head gets in.
        While any line has tickets waiting, the native fast path sends every
        request here (AdmissionController.hold_fast_path)."""
        school = ex.school
        line = self.line.line(school.name)  # type: ignore[union-attr]
        head = line.head_urgency()
        if head is None:
            return False
        klass = self.controller.classes[ex.klass]
        if head < klass.priority or klass.reject_status == 429 or not self._browser(ex):
            return False
        visitor = self._read_ticket(ex, now, claim=False)
        if visitor is not None:
            entry = line.entry(visitor[0])
            if entry is None or entry.called_at or line.ahead(visitor[0]) == 0:
                return False  # called, at the head, or not in line: in by its ticket
        arrived = visitor[1] if visitor is not None else now
        turn = _LineTurn(ex.klass, arrived, POLL_MIN)
        self._reject(ex, turn, now, visitor)  # type: ignore[arg-type]
        return True

    def _browser(self, ex: Exchange) -> bool:
        """A browser's GET or HEAD of a page (what the waiting page can stand
        in for), not a script's request (X-Requested-With, JSON)."""
        head = ex.head
        requested_with = head.header(b"x-requested-with") or b""  # type: ignore[union-attr]
        accept = head.header(b"accept") or b""  # type: ignore[union-attr]
        return head.method in (b"GET", b"HEAD") and not waiting.wants_json(  # type: ignore[union-attr]
            accept, "text/html", requested_with)

    def decided(self, ex: Exchange, t: Ticket, now: float,
                visitor: tuple[bytes, float] | None) -> None:
        """Act on the controller's answer `t` to ex's request at `now`
        (visitor: its waiting-room ticket, from _read_ticket). Called by
        admit, and by Exchange.start for any answer but an admission of a
        request the native path could ask for on its own."""
        state = t.state
        if state == ADMITTED:
            if visitor is not None:
                self._spend(ex, visitor[0])
            if ex.body_first():
                # Admitted though free_slots saw no room (a bucket refill
                # in between): the body still comes first.
                self._dispatch(self._body_first(ex, t, now))
                self._rearm()
                return
            ex.ticket = t
            ex.admitted()
        elif state == QUEUED:
            ex.ticket = t
            t.user = ex
            if visitor is not None:
                self._spend(ex, visitor[0])
                self._holding[t] = (ex.school.name, visitor[0])  # type: ignore[union-attr]
            head = ex.head
            if (head.content_length > 0 or head.chunked) and not ex.body_received:  # type: ignore[union-attr]
                ex.client.pause_reading_for(PAUSE_ADMISSION)
            self._rearm()
        else:
            if visitor is not None:
                # Turned away: the ticket was not used after all.
                self.line.change(ex.school.name, ("unspend", visitor[0]))  # type: ignore[union-attr]
            self._reject(ex, t, now, visitor)
            self._rearm()
        # Admitting at once adds no deadline: the timer (armed whenever a
        # request queues) stays right, and the hot path skips the lookup.

    def release(self, ex: Exchange) -> None:
        """The exchange no longer needs its slot (finished, or tunnelled)."""
        t = ex.ticket
        if t is None:
            return
        ex.ticket = None
        if t.state == ADMITTED:
            self.released(self.controller.release(t, time.time()))

    def released(self, admitted: list[Ticket]) -> None:
        """A slot was given back and `admitted` are the tickets it let in
        (Exchange._finish calls this after a native release only when
        there are any, or a deadline to arm)."""
        self._dispatch(admitted)
        self._rearm()

    def cancel(self, ex: Exchange) -> None:
        """The exchange's client is gone: give back its place or its slot."""
        t = ex.ticket
        if t is None:
            return
        ex.ticket = None
        t.user = None
        if t.state == QUEUED:
            self._void(t)
            self.controller.cancel(t, time.time())
        elif t.state == ADMITTED:
            self._dispatch(self.controller.release(t, time.time()))
        self._rearm()

    def _body_first(self, ex: Exchange, t: Ticket, now: float) -> list[Ticket]:
        """`t` was admitted while ex's body is still with the client: give
        the slot back at once (its token too), read the body, and remember
        the arrival and the wait left for asking again. Returns the tickets
        the freed slot admitted."""
        ex.ticket = None
        ex.arrived_at = t.arrived_at
        ex.wait_left = max(t.deadline - now, 0.0)
        admitted = self.controller.release(t, now, refund=True)
        ex.client.resume_reading_for(PAUSE_ADMISSION)
        ex.receive_body()
        return admitted

    # -- tickets coming back later ---------------------------------------------
    def _dispatch(self, admitted: list[Ticket]) -> None:
        holding = self._holding
        for t in admitted:
            if holding:
                holding.pop(t, None)  # got in: its ticket's spend stands
            ex = t.user
            t.user = None
            if ex is None or ex.ticket is not t:
                # Its client left between admission and now.
                if t.state == ADMITTED:
                    admitted.extend(self.controller.release(t, time.time()))
                continue
            if ex.body_first():
                admitted.extend(self._body_first(ex, t, time.time()))
                continue
            ex.client.resume_reading_for(PAUSE_ADMISSION)
            ex.admitted()

    def _expire(self, rejected: list[Ticket], now: float) -> None:
        for t in rejected:
            self._void(t)
            ex = _claim(t)
            if ex is not None:
                self._reject(ex, t, now, self._read_ticket(ex, now, claim=False))

    def _poll(self) -> None:
        self._timer = None
        now = time.time()
        admitted, expired = self.controller.poll(now)
        self._dispatch(admitted)
        self._expire(expired, now)
        self._rearm()

    def _rearm(self) -> None:
        due = self.controller.next_deadline()
        timer = self._timer
        if due is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        if timer is not None:
            if self._timer_due <= due:
                return
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_due = due
        self._timer = loop.call_at(loop.time() + max(due - time.time(), 0.0), self._poll)

    def start(self) -> None:
        """Begin the waiting lines' syncs (the worker calls it in its loop)."""
        self.line.start()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.line.close()

    # -- the waiting room ---------------------------------------------------------
    def _read_ticket(self, ex: Exchange, now: float,
                     claim: bool = True) -> tuple[bytes, float] | None:
        """(visitor id, arrived_at) of the request's ticket, or None when it
        carries none that is genuine, current and unspent (a new arrival).

        `claim`: spend it now, in the shared line (Line.spend), so that no
        other request anywhere uses it again; the caller takes the spend
        back if the request does not get in (decided, _void). A full spent
        record forgets its oldest spends (Line.spend), so a ticket is
        honoured whatever the load."""
        value = _ticket_cookie(ex.head)  # type: ignore[arg-type]
        if value is None:
            return None
        name = ex.school.name  # type: ignore[union-attr]
        ticket = self.signer.verify(value, name, now, self.ttl)
        if ticket is None:
            return None
        vid = ticket.visitor_id
        if claim:
            if not self.line.change(name, ("spend", vid)):
                return None
        else:
            line, keep = self.line.line(name), self.line.rules.keep
            if line.is_spent(vid, self.line.now(), keep):
                return None
        return vid, ticket.arrived_at

    def _spend(self, ex: Exchange, vid: bytes) -> None:
        """The request carrying visitor `vid`'s ticket (spent by
        _read_ticket) got in (ADMITTED) or lined up by its arrival (QUEUED):
        it leaves the line, and its response clears the cookie."""
        self.line.change(ex.school.name, ("leave", vid))  # type: ignore[union-attr]
        ex.response_headers = self._cleared

    def _void(self, t: Ticket) -> None:
        """Queued `t` will not get in: the ticket it spent is worth its place
        again."""
        held = self._holding.pop(t, None) if self._holding else None
        if held is not None:
            self.line.change(held[0], ("unspend", held[1]))

    def _reject(self, ex: Exchange, t: Ticket, now: float,
                visitor: tuple[bytes, float] | None) -> None:
        school = ex.school
        head = ex.head
        requested_with = head.header(b"x-requested-with") or b""  # type: ignore[union-attr]
        extra: list[tuple[bytes, bytes]] = []
        position = t.position or self.controller.queued(school.index) + 1  # type: ignore[union-attr]
        eta = self.controller.queue_eta(school.index, position, now)  # type: ignore[union-attr]
        retry = t.retry_after
        status_url = None
        # A client over its own rate gets 429 whatever its class; only the
        # classes configured for 429 (bulk tools) get the terse bulk answer,
        # a pupil's browser the waiting page (no place in line to keep: the
        # limit is the client's own).
        over_own_rate = t.reason == "client_rate" and \
            self.controller.classes[t.klass].reject_status != 429
        if t.reject_status == 429 and not over_own_rate:
            kind = "bulk"
        elif over_own_rate:
            kind = "wait"
        else:
            kind = "wait"
            if self._browser(ex):
                # Keep (or take) a place in the waiting room; the page polls
                # STATUS_PATH and reloads the URL when the visitor's turn comes.
                vid, arrived = visitor if visitor is not None else (new_visitor_id(), t.arrived_at)
                urgency = self.controller.classes[t.klass].priority
                if self.line.change(school.name, ("draw", vid, urgency)):  # type: ignore[union-attr]
                    # Newcomers now join this line's end (see _joins_line).
                    self.controller.hold_fast_path(school.index, True)  # type: ignore[union-attr]
                    # The page shows what its first poll would answer (the
                    # same computation as status_response), and polls when
                    # that answer says.
                    state, position, eta, retry = self._line_status(
                        school, vid, arrived, now, polled=False)  # type: ignore[arg-type]
                    if state == "go":
                        # Called at once: its first poll sends it back in.
                        position, eta = 1, float(retry)
                    status_url = STATUS_PATH.decode()
                extra.append(self._cookie(school, vid, arrived, now))  # type: ignore[arg-type]
        page = self.app.render_page(kind, ex, retry_after=retry, position=position, eta=eta,
                                    status_url=status_url, requested_with=requested_with)
        page.headers.extend(extra)
        if over_own_rate:
            page.status = 429
        ex.decision = WAITING_PAGE  # the access log's "waiting_page" (or "429")
        self.core.stats.count_page(school.index, t.klass,  # type: ignore[union-attr]
                                   PAGE_429 if page.status == 429 else PAGE_WAITING)
        school.rejected += 1  # type: ignore[union-attr]
        if head.upgrade is not None:  # type: ignore[union-attr]
            # The parser is spent after an upgrade request: the connection
            # cannot carry another request, so it ends after this answer.
            ex.keep_alive = False
        ex.settle_keep_alive()
        ex.rejected(self.app.page_response(page, ex))

    def _cookie(self, school: SchoolRuntime, vid: bytes, arrived: float,
                now: float) -> tuple[bytes, bytes]:
        value = self.signer.issue(school.name, vid, min(arrived, now), now)
        return b"Set-Cookie", cookie_header(COOKIE, value, int(self.ttl), self.secure_cookie)

    def status_response(self, ex: Exchange) -> bytes:
        """The waiting page's poll: where is this visitor now?"""
        now = time.time()
        school = ex.school
        visitor = self._read_ticket(ex, now, claim=False)
        headers = list(_JSON_HEADERS)
        if visitor is None or not self.enabled:
            body = waiting.render_status_json("go", None, None, 0)
        else:
            vid, arrived = visitor
            state, position, eta, retry = self._line_status(school, vid,  # type: ignore[arg-type]
                                                            arrived, now)
            if state == "go":
                retry = 1
            body = waiting.render_status_json(state, position, eta, retry)
            if state == "wait":
                # Re-issued only while the visitor waits in this room, so a
                # waiting visitor's ticket never lapses. "go" (their turn, or a
                # visitor unknown here: served, forgotten, or another
                # worker's) extends nothing: the ticket keeps its own expiry.
                headers.append(self._cookie(school, vid, arrived, now))  # type: ignore[arg-type]
        if ex.head.upgrade is not None:  # type: ignore[union-attr]
            ex.keep_alive = False  # a spent parser, as in _reject
        return self.app.local_response(200, headers, body, ex.keep_alive, head_only=ex.is_head)


    # -- the waiting line ------------------------------------------------------------

    def _line_status(self, school: SchoolRuntime, vid: bytes, arrived: float,
                     now: float, polled: bool = True) -> tuple[str, int, float | None, int]:
        """(state, position, eta seconds, seconds to the next poll) of visitor
        `vid` in the school's line; the waiting page and the status endpoint
        both show what this answers.

        "go" when the visitor was called, is called now, or is not in the
        line (left, served, or never here: its reload is then judged by the
        queue, with the arrival its ticket carries). The line calls its head
        up to the fleet's room (_call_target, Line.call_next: the same call
        every sync makes), so a waiting visitor is called only in its turn,
        whichever worker or instance it asks.

        Position: the requests queued here ahead of the visitor (by
        `arrived` and the first class of its ticket's urgency, or every
        queued one when no class has it), those other workers reported queued at
        its urgency or above, and the waiting tickets ahead, plus one;
        never more than last shown but for more urgent arrivals
        (Line.report).

        Estimate (_wait_answer): the position, plus the visitors called and
        not back yet (they get in first), over the fleet's measured
        admission rate (Line.rate), plus what the page itself adds: it
        learns of its turn only when it polls, every `poll` seconds (sooner
        when the turn is near, POLL_MIN..POLL_MAX), so half a poll on
        average, and never less than the first poll. None (the page says
        "not known yet") while the fleet has no rate measured: never this
        worker's own queue or rate, which differ between workers and
        instances.
        """
        name, idx = school.name, school.index
        # A poll is a sign of life (Line.seen); the page's own answer (just
        # drawn: `polled` False) is not.
        if polled and not self.line.change(name, ("seen", vid)):
            return "go", 0, 0.0, POLL_MIN
        line = self.line.line(name)
        entry = line.entry(vid)
        if entry is None:
            pending = self.line.provisional(name, vid)
            if pending is not None:
                return self._provisional_status(school, vid, arrived, now, line, pending)
        if entry is None or entry.called_at:
            return "go", 0, 0.0, POLL_MIN
        controller = self.controller
        target = self._call_target(idx, line, self._queued_by_urgency(idx, now), now)
        if target:
            # The line calls its head up to the fleet's room (the same call
            # every sync makes): this visitor only if its turn has come.
            self.line.change(name, ("call_next", target))
            line = self.line.line(name)
            entry = line.entry(vid)
            if entry is None or entry.called_at:
                return "go", 0, 0.0, POLL_MIN
        rank = line.ahead(vid)
        # The ticket's class is the first of its urgency.
        klass = next((k for k, c in enumerate(controller.classes)
                      if c.priority == entry.urgency), None)
        # The ticket keeps whole milliseconds: whoever queued within the
        # visitor's millisecond counts as ahead.
        arrived += 0.001
        # Requests that came later (or matter less) queue behind the
        # visitor's return, so they do not count against its place.
        ahead = controller.queued(idx) if klass is None else \
            controller.ahead(idx, klass, arrived)
        at = self.line.now()
        ahead += line.queued_ahead(entry.urgency, at, exclude=self.line.worker)
        position = line.report(vid, ahead + rank + 1)
        self.line.change(name, ("shown", vid, entry.shown, entry.urgent_ahead))
        return self._wait_answer(line, position, at)

    @staticmethod
    def _wait_answer(line: Line, position: int,
                     at: float) -> tuple[str, int, float | None, int]:
        """("wait", position, eta seconds or None, poll) for a visitor shown
        `position` (the position the shared line keeps for its ticket:
        Line.report, replayed to every worker as a "shown" change).

        The estimate depends on the shared line and the fleet's rate alone
        (Line.eta on the store's clock `at`: the position plus the visitors
        called and not back yet, who get in first, over the admissions per
        busy second of the whole fleet), so every worker of every instance
        answers the same ticket alike, give or take one sync. None while the
        fleet has measured no admissions (a storm's first seconds, or every
        slot held throughout the window): not known yet, and said so (the
        page shows "eta.unknown"), rather than a guess from this worker's
        own queue, whose rate is its share of the fleet's and may be
        anything from nothing to all of it. The page then polls soon."""
        eta = line.eta(position + line.called(), at)
        if eta is None:
            return "wait", position, None, POLL_MIN
        poll = max(POLL_MIN, min(POLL_MAX, int(eta / 4)))
        return "wait", position, max(float(poll), eta + poll / 2), poll

    def _provisional_status(self, school: SchoolRuntime, vid: bytes, arrived: float,
                            now: float, line: Line,
                            pending: tuple[float, int, int, int],
                            ) -> tuple[str, int, float | None, int]:
        """_line_status of a visitor whose draw no Redis sync has confirmed
        yet (LineView.provisional): at the end of the line as known here.
        The position shown is remembered with the draw (a "shown" change),
        so the confirmed line never shows more (Line.report)."""
        name, idx = school.name, school.index
        urgency, rank, shown, urgent = pending
        controller = self.controller
        klass = next((k for k, c in enumerate(controller.classes)
                      if c.priority == urgency), None)
        ahead = controller.queued(idx) if klass is None else \
            controller.ahead(idx, klass, arrived + 0.001)
        at = self.line.now()
        ahead += line.queued_ahead(urgency, at, exclude=self.line.worker)
        position = ahead + rank + 1
        urgent_now = sum(n for u, n in line.waiting().items() if u > urgency)
        if shown:
            position = min(position, shown + max(0, urgent_now - urgent))
        self.line.change(name, ("shown", vid, position, urgent_now))
        return self._wait_answer(line, position, at)

    def _queued_by_urgency(self, idx: int, now: float) -> dict[float, int]:
        """This worker's queued requests of one school, by urgency."""
        controller = self.controller
        priority = {c.name: c.priority for c in controller.classes}
        queued: dict[float, int] = {}
        for klass, n in controller.stats(idx, now)["queued"].items():
            if n:
                u = priority[klass]
                queued[u] = queued.get(u, 0) + n
        return queued

    def _call_target(self, idx: int, line: Line, queued: dict[float, int],
                     now: float) -> int | None:
        """How many of the school's tickets should be called (told "go",
        on their way back) now; None while nobody waits.

        The fleet's free slots (this worker's now, the others' as last
        reported to the line): each is held for a called visitor, since
        newcomers join the line's end meanwhile (_joins_line). While the
        line flows (requests of the head's urgency or above are queued, or
        every slot is taken and called visitors are on their way), also
        `call_ahead` seconds of the fleet's admissions beyond the queued
        requests: a called visitor learns its turn at its next poll, and
        its reload lines up by its first arrival, ahead of later requests,
        so the slots never wait for a reload. -1 free slots (unlimited):
        everyone."""
        head = line.head_urgency()
        if head is None:
            return None
        at = self.line.now()
        me = self.line.worker
        free = self.controller.free_slots(idx, now)
        others = line.free(at, exclude=me)
        if free < 0 or others < 0:
            return len(line)
        room = free + others
        waiting = sum(n for u, n in queued.items() if u >= head) + \
            line.queued_ahead(head, at, exclude=me)
        if waiting > 0 or (room == 0 and line.called() > 0):
            room += max(0, math.ceil(line.rate(at) * self.call_ahead) - waiting)
        return room

    def _line_inputs(self) -> Inputs:
        """Per school: admissions since last asked, this worker's queue by
        urgency, its free slots and how many tickets should be called (what
        a line sync sends; see LineView)."""
        if not self.enabled:
            self.controller.held.clear()
            return {}
        controller = self.controller
        now = time.time()
        out: Inputs = {}
        for i, name in enumerate(controller.school_names):
            admitted = controller.usage(i, now)["admitted"]
            delta = admitted - self._admitted.get(name, admitted)
            self._admitted[name] = admitted
            queued = self._queued_by_urgency(i, now)
            line = self.line.line(name)
            target = self._call_target(i, line, queued, now)
            # Newcomers join a line with tickets waiting (see _joins_line).
            controller.hold_fast_path(i, target is not None)
            out[name] = (max(delta, 0), queued, controller.free_slots(i, now), target)
        return out

    def waiting_lines(self) -> dict[str, dict]:
        """Per school name, for the admin endpoint and the status page:
        queued (requests waiting, by class name: this worker's queue plus the
        line's tickets, by the class whose priority they carry), line
        (tickets waiting in the shared line), waiting (those by class name),
        called (tickets called whose visitor is not back yet), eta (seconds a
        newcomer would wait, None: nothing measured yet), admission_rate
        (the fleet's admissions/s), now_serving (highest number called),
        last_ticket (highest drawn), shared (False while the shared store is
        away), synced_at (Unix seconds: when this worker's copy of the lines
        was last brought up to date; the line is the same at every worker,
        so the freshest copy stands for it). O(schools x classes)."""
        now = self.line.now()
        controller = self.controller
        out: dict[str, dict] = {}
        for i, name in enumerate(controller.school_names):
            line = self.line.line(name)
            queued = dict(controller.stats(i, time.time())["queued"])
            waiting_by_urgency = line.waiting()
            in_line = sum(waiting_by_urgency.values())
            waiting: dict[str, int] = {}
            for c in controller.classes:
                n = waiting_by_urgency.pop(c.priority, 0)
                if n:
                    waiting[c.name] = n
                    queued[c.name] = queued.get(c.name, 0) + n
            ahead = sum(queued.values()) + line.queued_ahead(-math.inf, now, self.line.worker)
            out[name] = {
                "queued": queued,
                "line": in_line,
                "waiting": waiting,
                "called": line.called(),
                # Called visitors on their way back get in first too.
                "eta": line.eta(ahead + line.called() + 1, now) if ahead else 0.0,
                "admission_rate": line.rate(now),
                "now_serving": line.serving,
                "last_ticket": line.last,
                "shared": self.line.shared,
                "synced_at": self.line.synced_at,
            }
        return out


class _LineTurn(NamedTuple):
    """What _reject reads of a scheduler Ticket, for a newcomer sent to the
    end of the waiting line without asking the scheduler (_joins_line)."""

    klass: int
    arrived_at: float
    retry_after: int
    position: int = 0
    reason: str = "line"
    reject_status: int = 503


def _claim(t: Ticket) -> Exchange | None:
    """The exchange a ticket that came back REJECTED still belongs to, now
    holding no ticket and with its client read again; None if its client
    left meanwhile."""
    ex = t.user
    t.user = None
    if ex is None or ex.ticket is not t:
        return None
    ex.ticket = None
    ex.client.resume_reading_for(PAUSE_ADMISSION)
    return ex


_COOKIE_NAME = COOKIE.encode()


def _renumbering(old: list[str], new: list[str]) -> list[int]:
    """For each old name, its index among the new names (-1: gone)."""
    index = {name: i for i, name in enumerate(new)}
    return [index.get(name, -1) for name in old]


def _ticket_cookie(head: RequestHead) -> str | None:
    """The ticket cookie's value, if the request carries one. Most requests
    carry cookies but not this one, so the common case is one substring test."""
    first = head.header(b"cookie")
    if not first:
        return None
    if _COOKIE_NAME in first:
        value = read_cookie(first, COOKIE)
        if value is not None:
            return value
    # Split across several Cookie headers (as HTTP/2 front ends may).
    cookies = [v for k, v in head.headers if len(k) == 6 and k.lower() == b"cookie"]
    if len(cookies) < 2:
        return None
    joined = b"; ".join(cookies)
    return read_cookie(joined, COOKIE) if _COOKIE_NAME in joined else None


__all__ = ["COOKIE", "STATUS_PATH", "Admission"]
