"""Brute-force model of the waiting line (gateway/waiting/line.py): the
same rules written the obvious way, every question a scan of the whole line
(O(n)). tests/unit/test_line.py runs both on the same random traffic and
compares every answer; bench/micro/bench_line.py measures what the indexed
line buys.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from gateway.waiting.line import GO_GRACE, GRACE, KEEP, REPORT_TTL, STALE, WINDOW


@dataclass(slots=True)
class Entry:
    """One ticket in the line."""

    number: int
    urgency: float
    last_seen: float
    # When it was called (0: still waiting).
    called_at: float = 0.0
    # The position last shown to the visitor (0: none yet), and how many
    # more urgent tickets stood ahead then.
    shown: int = 0
    urgent_ahead: int = 0
    # 1 once its visitor polled (`seen`): alive, not a client that took a
    # page and never came back; only such tickets are called (call_next)
    # and hold newcomers back (head_urgency).
    polled: int = 0
    # Never polled and not seen for STALE at a sweep: counted ahead of
    # nobody until it comes back (then at the end, with a new number).
    aside: bool = False

    def key(self) -> tuple[float, int]:
        return (-self.urgency, self.number)


class Line:
    """The line of one school (see the module docstring).

    Visitors are known by their visitor id (the waiting-room ticket's id,
    bytes). Every method takes `now` where time matters (Unix seconds).
    """

    __slots__ = ("_next_sweep", "_order", "admissions", "busy", "by_vid", "capacity", "last",
                 "queues", "serving", "since", "spent")

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.last = 0
        self.serving = 0
        self.by_vid: dict[bytes, Entry] = {}
        # (-urgency, number, vid) of every ticket, waiting or called.
        self._order: list[tuple[float, int, bytes]] = []
        # Whole second -> admissions in it, for the seconds of the window.
        self.admissions: dict[int, int] = {}
        # The whole seconds of the window in which the school was busy.
        self.busy: set[int] = set()
        # When the line began measuring (the rate's span never reaches back
        # before it); None until the first call that records anything.
        self.since: float | None = None
        # Worker id -> (updated at, queued requests by urgency, free slots
        # beyond its queue, -1: unlimited): each worker's own queue, counted
        # in positions, and its room, which calls the line's head.
        self.queues: dict[str, tuple[float, dict[float, int], int]] = {}
        # Visitor id -> when its ticket was spent (at most `capacity` ids).
        self.spent: dict[bytes, float] = {}
        self._next_sweep = -math.inf

    def __len__(self) -> int:
        return len(self.by_vid)

    def _begin(self, now: float) -> None:
        if self.since is None:
            self.since = now

    # -- changes --------------------------------------------------------------------

    def draw(self, vid: bytes, urgency: float, now: float) -> int:
        """The visitor's number: a new one at the end of its urgency, or the
        one it already holds (seen again; a called ticket stays called, its
        grace renewed). 0 when the line is full (`capacity`)."""
        self._begin(now)
        entry = self.by_vid.get(vid)
        if entry is not None:
            entry.last_seen = now
            if entry.called_at:
                entry.called_at = now
            elif entry.aside:
                self._rejoin(vid, entry)
            return entry.number
        if len(self.by_vid) >= self.capacity:
            return 0
        self.last += 1
        entry = Entry(self.last, float(urgency), now)
        self.by_vid[vid] = entry
        bisect.insort(self._order, (-entry.urgency, entry.number, vid))
        return entry.number

    def _rejoin(self, vid: bytes, entry: Entry) -> None:
        """Back from being set aside: at the end, with a new number."""
        del self._order[bisect.bisect_left(self._order, (-entry.urgency, entry.number, vid))]
        self.last += 1
        entry.number = self.last
        entry.aside = False
        entry.shown = entry.urgent_ahead = 0
        bisect.insort(self._order, (-entry.urgency, entry.number, vid))

    def _waits(self, entry: Entry) -> bool:
        return not entry.called_at and not entry.aside

    def seen(self, vid: bytes, now: float) -> bool:
        """The visitor polled; False if its ticket is not in the line."""
        entry = self.by_vid.get(vid)
        if entry is None:
            return False
        entry.last_seen = now
        if entry.aside and not entry.called_at:
            self._rejoin(vid, entry)
        entry.polled = 1
        return True

    def call(self, vid: bytes, now: float) -> bool:
        """Tell a waiting visitor to go; False if it is not waiting here."""
        entry = self.by_vid.get(vid)
        if entry is None or entry.called_at:
            return False
        entry.called_at = now
        entry.last_seen = now
        entry.aside = False
        self.serving = max(self.serving, entry.number)
        return True

    def leave(self, vid: bytes) -> bool:
        """The visitor's request got in (or its ticket is otherwise done)."""
        entry = self.by_vid.pop(vid, None)
        if entry is None:
            return False
        del self._order[bisect.bisect_left(self._order, (-entry.urgency, entry.number, vid))]
        return True

    def spend(self, vid: bytes, now: float, keep: float = KEEP) -> bool:
        """Use the visitor's ticket up: True if it was not spent within the
        last `keep` seconds (now it is), False if it was (a replay). A full
        record forgets its oldest spends to make room."""
        if self.is_spent(vid, now, keep):
            return False
        self.spent.pop(vid, None)  # dict order: the order spent
        if len(self.spent) >= self.capacity:
            self._forget_spent(now, keep)
            while len(self.spent) >= self.capacity:
                oldest = min(self.spent.items(), key=lambda p: p[1])[0]
                del self.spent[oldest]
        self.spent[vid] = now
        return True

    def unspend(self, vid: bytes) -> bool:
        """Take a spend back: its request never got in."""
        return self.spent.pop(vid, None) is not None

    def is_spent(self, vid: bytes, now: float, keep: float = KEEP) -> bool:
        at = self.spent.get(vid)
        return at is not None and now - at < keep

    def _forget_spent(self, now: float, keep: float) -> None:
        for vid in [v for v, at in self.spent.items() if now - at >= keep]:
            del self.spent[vid]

    def report(self, vid: bytes, computed: int) -> int:
        """The position to show for a visitor whose position is computed as
        `computed` now: never more than last shown, but for the more urgent
        tickets that arrived ahead since. Remembers what it returns."""
        entry = self.by_vid.get(vid)
        if entry is None:
            return computed
        urgent = self.urgent_ahead(entry)
        # (Set aside, it rejoins at the end when this poll is applied: a new
        # place, nothing shown there yet. A store's copy may not know yet.)
        if entry.shown and not entry.aside:
            computed = min(computed, entry.shown + max(0, urgent - entry.urgent_ahead))
        entry.shown, entry.urgent_ahead = computed, urgent
        return computed

    def shown(self, vid: bytes, shown: int, urgent_ahead: int) -> None:
        """Set what `report` remembers (how a store replays a worker's report)."""
        entry = self.by_vid.get(vid)
        if entry is not None:
            entry.shown, entry.urgent_ahead = shown, urgent_ahead

    def record(self, admitted: int, now: float) -> None:
        """`admitted` admissions (of some worker) since it last said so."""
        self._begin(now)
        if admitted > 0:
            second = math.floor(now)
            self.admissions[second] = self.admissions.get(second, 0) + admitted
        self._prune(now)

    def _mark_busy(self, queued: bool, now: float) -> None:
        if queued or self.by_vid:
            self.busy.add(math.floor(now))

    def set_queue(self, worker: str, queued: dict[float, int], now: float,
                  free: int = 0) -> None:
        """Worker `worker` has `queued[urgency]` requests in its own queue
        and room for `free` more requests beyond it (-1: unlimited)."""
        self._begin(now)
        self.queues[worker] = (now, {float(k): int(v) for k, v in queued.items() if v},
                               int(free))
        self._mark_busy(any(queued.values()), now)

    def call_next(self, target: int, now: float) -> int:
        """Call waiting tickets whose visitors polled, head first (most
        urgent, then lowest number), until `target` tickets are called;
        returns how many were called now. A ticket whose visitor never
        polled and was not seen for STALE seconds is passed over (a page
        polls sooner; its poll, if it ever comes, calls it then if its turn
        has come): a client that takes pages and never comes back holds no
        room for long."""
        room = target - self.called()
        n = 0
        if room <= 0:
            return 0
        for _, _, vid in self._order:
            if n >= room:
                break
            entry = self.by_vid[vid]
            if not entry.called_at and (entry.polled or now - entry.last_seen <= STALE):
                self.call(vid, now)
                n += 1
        return n

    def sweep(self, now: float, grace: float = GRACE, go_grace: float = GO_GRACE,
              keep: float = KEEP) -> int:
        """Drop visitors who left (and spends older than `keep`); returns how
        many visitors. Amortised: one pass a second at most, however often it
        is called."""
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + 1.0
        self._forget_spent(now, keep)
        gone = [vid for vid, e in self.by_vid.items()
                if (e.called_at and now - e.called_at > go_grace)
                or (not e.called_at and now - e.last_seen > grace)]
        for vid in gone:
            self.leave(vid)
        for e in self.by_vid.values():
            if not (e.called_at or e.polled) and now - e.last_seen > STALE:
                e.aside = True
        self._prune(now)
        return len(gone)

    def _prune(self, now: float) -> None:
        oldest = math.floor(now - WINDOW)
        for second in [s for s in self.admissions if s < oldest]:
            del self.admissions[second]
        for second in [s for s in self.busy if s < oldest]:
            self.busy.discard(second)
        for worker in [w for w, (at, *_) in self.queues.items() if now - at > REPORT_TTL]:
            del self.queues[worker]

    # -- questions ------------------------------------------------------------------

    def entry(self, vid: bytes) -> Entry | None:
        return self.by_vid.get(vid)

    def ahead(self, vid: bytes) -> int:
        """Tickets ahead of the visitor that are still waiting (not called);
        -1 if it is not in the line."""
        entry = self.by_vid.get(vid)
        if entry is None:
            return -1
        if entry.aside:  # where it would rejoin: behind every waiting ticket
            return sum(1 for e in self.by_vid.values()
                       if self._waits(e) and e.urgency >= entry.urgency)
        at = bisect.bisect_left(self._order, (-entry.urgency, entry.number, vid))
        return sum(1 for _, _, v in self._order[:at] if self._waits(self.by_vid[v]))

    def head_urgency(self) -> float | None:
        """The urgency of the most urgent waiting (uncalled) ticket whose
        visitor polled (None: nobody waits)."""
        for u, _, v in self._order:
            entry = self.by_vid[v]
            if not entry.called_at and entry.polled:
                return -u
        return None

    def urgent_ahead(self, entry: Entry) -> int:
        """Waiting tickets more urgent than `entry`'s."""
        n = 0
        for u, _, v in self._order:
            if -u <= entry.urgency:
                break
            n += self._waits(self.by_vid[v])
        return n

    def called(self) -> int:
        """Tickets called whose visitor has not got in yet."""
        return sum(1 for e in self.by_vid.values() if e.called_at)

    def waiting(self) -> dict[float, int]:
        """Waiting (uncalled) tickets by urgency."""
        out: dict[float, int] = {}
        for e in self.by_vid.values():
            if self._waits(e):
                out[e.urgency] = out.get(e.urgency, 0) + 1
        return out

    def queued_ahead(self, urgency: float, now: float, exclude: str | None = None) -> int:
        """Requests in the workers' own queues (but `exclude`'s) of at least
        `urgency`: they are served before a visitor of that urgency is called."""
        n = 0
        for worker, (at, queued, _) in self.queues.items():
            if worker == exclude or now - at > REPORT_TTL:
                continue
            n += sum(c for u, c in queued.items() if u >= urgency)
        return n

    def free(self, now: float, exclude: str | None = None) -> int:
        """Free slots the workers (but `exclude`) last reported, summed (-1:
        one of them is unlimited)."""
        n = 0
        for worker, (at, _, free) in self.queues.items():
            if worker == exclude or now - at > REPORT_TTL:
                continue
            if free < 0:
                return -1
            n += free
        return n

    def rate(self, now: float) -> float:
        """Admissions per second of the whole fleet: over the whole seconds
        of the last WINDOW in which the school was busy, else (none yet)
        over the last WINDOW seconds (0.0 before anything was measured)."""
        if self.since is None:
            return 0.0
        oldest = math.floor(now - WINDOW)
        # The current second is still being counted (reports arrive every
        # sync interval): only whole seconds.
        current = math.floor(now)
        busy = [s for s in self.busy if oldest <= s < current]
        if busy:
            return sum(self.admissions.get(s, 0) for s in busy) / len(busy)
        total = sum(c for s, c in self.admissions.items() if s >= oldest)
        if not total:
            return 0.0
        span = min(WINDOW, max(now - self.since, 1.0))
        return total / span

    def eta(self, position: int, now: float) -> float | None:
        """Seconds until `position` more admissions at the measured rate
        (None: no rate measured yet)."""
        rate = self.rate(now)
        return position / rate if rate > 0 else None
