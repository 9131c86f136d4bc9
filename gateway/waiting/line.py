"""One school's waiting line, like a deli counter: sans-IO.

A visitor turned away with the waiting page draws a number (`draw`): numbers
are handed out in sequence per school, so the order of the line is the order
of the first waiting pages, whichever worker or instance served them. A more
urgent class (a higher `urgency`, the class's priority) stands ahead of a
less urgent one; within one urgency, the lower number goes first.

- Position (`position`): tickets ahead that are still waiting, plus one.
  Tickets already called (told "go", their reload on the way) are not
  counted; neither are visitors who stopped polling: a waiting ticket not
  seen for `grace` seconds is dropped (`sweep`), and so is a called ticket
  not back within `go_grace`.
- Set aside (`sweep`, STALE): a ticket whose visitor never polled and was
  not seen (its first page, or a page again) for STALE seconds is not a
  visitor waiting on a page (its page polls within POLL_MAX): it stops
  counting ahead of anyone, and call_next passes it over, at once rather
  than after the grace, so a flood of tickets drawn by a client that never
  polls inflates nobody's position or estimate. It is still in the line
  (its visitor id is known) until the grace drops it. If it comes back (a
  poll, or a page again) it rejoins at the end of its urgency with a new
  number, as a newcomer would: taking its old place back would raise the
  position of every visitor behind it who was shown one meanwhile (and
  would let a client reserve places it never waits in). The price: a real
  page whose first poll comes more than STALE - POLL_MAX = 2 s late loses
  its place; its own position may then go up (it was not waiting), nobody
  else's does.
- Calling (`call_next`): the line calls its head, in order, until as many
  tickets are called (told "go", on their way back) as the fleet has room
  for: its free slots (every worker reports its own with its queue,
  `set_queue`) plus `call_ahead` seconds of admissions beyond the requests
  already queued (the shell computes that target, Admission._call_target;
  any worker may ask, and the line decides who under its lock, so a ticket
  is called once and the head first whichever worker or instance has the
  room). A called visitor's reload is honoured by any worker of any
  instance. "Now serving" (`serving`) is the highest number called so far.
- The admission rate (`record`, `rate`): admissions of the whole fleet
  (every worker adds what it admitted since it last said so), per second of
  the last WINDOW seconds in which the school was busy (a worker reported a
  queue, or tickets stood in the line): the pace the line moves at, not
  diluted by quiet seconds before a storm. The estimated wait of position
  p is p / rate (`eta`; the shell adds the page's own polling delay).
- Honesty (`shown`): the position a visitor was last shown is kept with the
  ticket, and a later answer never shows more, unless more urgent tickets
  arrived ahead in between (`report`).
- Spent tickets (`spend`): the request that gets in with a ticket uses it
  up; the line remembers that for `keep` seconds (the ticket's TTL plus the
  signer's leeway: until every copy has lapsed), so a replayed cookie is
  refused by every worker and instance sharing the line. A spend is taken
  back (`unspend`) when its request never got in after all. The record
  holds at most `capacity` tickets: when it is full the oldest spends are
  forgotten early (evicted) to make room, rather than refusing every
  ticket (which would cost every waiting visitor its place once about
  capacity / keep tickets a second got in, 166/s with the defaults). The
  bound of what that lets through: a replay of an evicted ticket gets in
  once (it is then spent again), and only after `capacity` other tickets
  were spent since it was, within its TTL; a record never full evicts
  nothing.

The same rules run in three places: this class itself (one worker, or the
fallback while a shared store is down); serialized in shared memory between
the workers of one instance (gateway/waiting/line_store.py); and as Lua
scripts in Redis across instances (same module), checked against this class
in tests/integration/test_line_redis.py. Pure object: `now` (seconds) is
passed in and nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

# Seconds of admissions the rate is measured over.
WINDOW = 20.0
# A waiting visitor not seen (no poll, no reload) for this long has left.
GRACE = 30.0
# A called visitor whose reload did not get in within this long has left.
GO_GRACE = 15.0
# What a worker's queue report (`queues`) is worth after its last update.
REPORT_TTL = 5.0
# The longest the status endpoint tells a waiting page to wait before its
# next poll (Retry-After of /.schoolgate/status): a visitor still there is
# seen at least this often, so the grace periods must be longer.
POLL_MAX = 10
# The shortest a waiting page waits between polls (its script's floor).
POLL_MIN = 2
# A ticket whose visitor never polled and was not seen for this long is
# passed over by call_next: the page polls within POLL_MAX of its answer.
STALE = POLL_MAX + POLL_MIN
# Seconds a spent ticket is remembered (the default ticket_ttl, 600 s, plus
# the signer's leeway).
KEEP = 601.0


@dataclass(frozen=True, slots=True)
class Rules:
    """The line's time limits in seconds ([admission] waiting_grace,
    called_grace; keep: ticket_ttl plus the signer's leeway)."""

    grace: float = GRACE
    go_grace: float = GO_GRACE
    keep: float = KEEP


DEFAULT_RULES = Rules()


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
    # Where it stands in its urgency's _Level (bookkeeping, not state).
    idx: int = 0
    # Passed over by call_next (never polled, not seen for STALE) and out of
    # its level's heap until a poll or a new page makes it fresh again.
    parked: bool = False
    # Set aside by sweep (never polled, not seen for STALE): counted ahead
    # of nobody, waiting for nothing; a poll or a page again makes it rejoin
    # at the end (Line._rejoin).
    aside: bool = False

    def key(self) -> tuple[float, int]:
        return (-self.urgency, self.number)


class _Level:
    """The tickets of one urgency, in number order (numbers are drawn in
    sequence, so a new ticket is always the last): a Fenwick tree over
    their places counts the waiting ones below any place in O(log n), and
    a heap of (number, vid) holds the waiting ones call_next may call
    (removed lazily: an item whose ticket left or was called is dropped
    when it reaches the top)."""

    __slots__ = ("entries", "heap", "live", "polled", "tree", "waiting")

    def __init__(self) -> None:
        self.entries: list[Entry | None] = []
        self.tree: list[int] = [0]  # 1-based Fenwick tree over `entries`
        self.heap: list[tuple[int, bytes]] = []
        self.live = 0  # entries not None
        self.waiting = 0  # of them not called
        self.polled = 0  # of those, polled

    def prefix(self, i: int) -> int:
        """Waiting tickets among entries[:i]."""
        tree, n = self.tree, 0
        while i > 0:
            n += tree[i]
            i &= i - 1
        return n

    def add(self, idx: int, delta: int) -> None:
        tree, i, size = self.tree, idx + 1, len(self.tree)
        while i < size:
            tree[i] += delta
            i += i & -i

    def append(self, entry: Entry, waiting: int) -> None:
        i = len(self.tree)  # the new entry's 1-based place
        entry.idx = i - 1
        self.entries.append(entry)
        # Node i covers places (i - lowbit(i), i].
        self.tree.append(waiting + self.prefix(i - 1) - self.prefix(i - (i & -i)))
        self.live += 1

    def compact(self) -> None:
        """Drop the places of tickets that left, once they are the most
        (amortised O(1) per leave: a rebuild is O(live) after at least as
        many leaves)."""
        dead = len(self.entries) - self.live
        if dead <= 64 or dead <= self.live:
            return
        self.entries = [e for e in self.entries if e is not None]
        tree = [0] * (len(self.entries) + 1)
        for i, e in enumerate(self.entries):
            e.idx = i  # type: ignore[union-attr]
            tree[i + 1] = 0 if e.called_at or e.aside else 1  # type: ignore[union-attr]
        for i in range(1, len(tree)):  # linear-time Fenwick build
            j = i + (i & -i)
            if j < len(tree):
                tree[j] += tree[i]
        self.tree = tree


class Line:
    """The line of one school (see the module docstring).

    Visitors are known by their visitor id (the waiting-room ticket's id,
    bytes). Every method takes `now` where time matters (Unix seconds).

    Cost: every change and question is O(log n) or O(1) in the tickets of
    the line (n), times the number of urgencies (the classes' priorities, a
    handful); `sweep` is amortised O(1) per change (touches queue up in time
    order and are looked at once: `now` is expected not to go back; if it
    does, expiries are late by as much, never early); `dump`/`load` are
    O(n).
    """

    __slots__ = ("_called", "_called_q", "_fresh_q", "_levels", "_next_sweep", "_seen_q",
                 "_urgencies", "admissions", "busy", "by_vid", "capacity", "last", "queues",
                 "serving", "since", "spent")

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.last = 0
        self.serving = 0
        self.by_vid: dict[bytes, Entry] = {}
        # Urgency -> its tickets; the urgencies most urgent first.
        self._levels: dict[float, _Level] = {}
        self._urgencies: list[float] = []
        self._called = 0  # tickets called, not back yet
        # (when, vid) of every sighting of a waiting ticket, of a waiting
        # ticket not polled yet (set aside after STALE), and every call, in
        # time order: sweep looks at each once.
        self._seen_q: deque[tuple[float, bytes]] = deque()
        self._fresh_q: deque[tuple[float, bytes]] = deque()
        self._called_q: deque[tuple[float, bytes]] = deque()
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
        # Visitor id -> when its ticket was spent (at most `capacity` ids), in
        # the order spent (the oldest first: forgotten, or evicted, first).
        self.spent: OrderedDict[bytes, float] = OrderedDict()
        self._next_sweep = -math.inf

    def __len__(self) -> int:
        return len(self.by_vid)

    def _begin(self, now: float) -> None:
        if self.since is None:
            self.since = now

    def _level(self, urgency: float) -> _Level:
        level = self._levels.get(urgency)
        if level is None:
            level = self._levels[urgency] = _Level()
            bisect.insort(self._urgencies, -urgency)
        return level

    # -- changes --------------------------------------------------------------------

    def draw(self, vid: bytes, urgency: float, now: float) -> int:
        """The visitor's number: a new one at the end of its urgency, or the
        one it already holds (seen again; a called ticket stays called, its
        grace renewed; a ticket set aside rejoins at the end with a new
        number). 0 when the line is full (`capacity`)."""
        self._begin(now)
        entry = self.by_vid.get(vid)
        if entry is not None:
            entry.last_seen = now
            if entry.called_at:
                entry.called_at = now
                self._called_q.append((now, vid))
            else:
                self._seen_q.append((now, vid))
                if entry.aside:
                    self._rejoin(entry, vid)
                else:
                    self._unpark(entry, vid)
                if not entry.polled:
                    self._fresh_q.append((now, vid))
            return entry.number
        if len(self.by_vid) >= self.capacity:
            return 0
        self.last += 1
        entry = Entry(self.last, float(urgency), now)
        self.by_vid[vid] = entry
        level = self._level(entry.urgency)
        level.append(entry, 1)
        level.waiting += 1
        heapq.heappush(level.heap, (entry.number, vid))
        self._seen_q.append((now, vid))
        self._fresh_q.append((now, vid))
        return entry.number

    def _unpark(self, entry: Entry, vid: bytes) -> None:
        if entry.parked:
            entry.parked = False
            heapq.heappush(self._levels[entry.urgency].heap, (entry.number, vid))

    def _rejoin(self, entry: Entry, vid: bytes) -> None:
        """A ticket set aside is back: at the end of its urgency, with a new
        number, as a newcomer (see the module docstring: its old place would
        raise the positions of those behind it). O(log n)."""
        level = self._levels[entry.urgency]
        level.entries[entry.idx] = None  # its old place counted nothing
        level.live -= 1
        self.last += 1
        entry.number = self.last
        entry.aside = entry.parked = False
        entry.shown = entry.urgent_ahead = 0  # a new place: nothing shown yet
        level.append(entry, 1)
        level.waiting += 1
        heapq.heappush(level.heap, (entry.number, vid))
        level.compact()

    def _set_aside(self, entry: Entry) -> None:
        level = self._levels[entry.urgency]
        level.add(entry.idx, -1)
        level.waiting -= 1
        entry.aside = True

    def seen(self, vid: bytes, now: float) -> bool:
        """The visitor polled; False if its ticket is not in the line. A
        ticket set aside rejoins at the end (`draw`)."""
        entry = self.by_vid.get(vid)
        if entry is None:
            return False
        entry.last_seen = now
        if not entry.called_at:
            self._seen_q.append((now, vid))
            if entry.aside:
                self._rejoin(entry, vid)
            else:
                self._unpark(entry, vid)
            if not entry.polled:
                self._levels[entry.urgency].polled += 1
        entry.polled = 1
        return True

    def call(self, vid: bytes, now: float) -> bool:
        """Tell a waiting visitor to go; False if it is not waiting here."""
        entry = self.by_vid.get(vid)
        if entry is None or entry.called_at:
            return False
        entry.called_at = now
        entry.last_seen = now
        level = self._levels[entry.urgency]
        if entry.aside:
            entry.aside = False  # counted nowhere already
        else:
            level.add(entry.idx, -1)
            level.waiting -= 1
        level.polled -= entry.polled
        self._called += 1
        self._called_q.append((now, vid))
        self.serving = max(self.serving, entry.number)
        return True

    def leave(self, vid: bytes) -> bool:
        """The visitor's request got in (or its ticket is otherwise done)."""
        entry = self.by_vid.pop(vid, None)
        if entry is None:
            return False
        level = self._levels[entry.urgency]
        if entry.called_at:
            self._called -= 1
        elif not entry.aside:
            level.add(entry.idx, -1)
            level.waiting -= 1
            level.polled -= entry.polled
        level.entries[entry.idx] = None
        level.live -= 1
        level.compact()
        return True

    def spend(self, vid: bytes, now: float, keep: float = KEEP) -> bool:
        """Use the visitor's ticket up: True if it was not spent within the
        last `keep` seconds (now it is), False if it was (a replay). A full
        record (`capacity` spends within `keep`) forgets its oldest spends
        to make room (see the module docstring for what that lets through).
        O(1) amortised."""
        if self.is_spent(vid, now, keep):
            return False
        spent = self.spent
        spent.pop(vid, None)  # an old, lapsed spend: this one is the newest
        if len(spent) >= self.capacity:
            self._forget_spent(now, keep)
            while len(spent) >= self.capacity:
                spent.popitem(last=False)  # evicted before its time
        spent[vid] = now
        return True

    def unspend(self, vid: bytes) -> bool:
        """Take a spend back: its request never got in."""
        return self.spent.pop(vid, None) is not None

    def is_spent(self, vid: bytes, now: float, keep: float = KEEP) -> bool:
        at = self.spent.get(vid)
        return at is not None and now - at < keep

    def _forget_spent(self, now: float, keep: float) -> None:
        spent = self.spent
        while spent:
            vid, at = next(iter(spent.items()))  # the oldest spend
            if now - at < keep:
                break
            del spent[vid]

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
        room for long. O((called + passed over) log n)."""
        room = target - self._called
        n = 0
        if room <= 0:
            return 0
        by_vid = self.by_vid
        for u in self._urgencies:
            heap = self._levels[-u].heap
            while n < room and heap:
                number, vid = heap[0]
                entry = by_vid.get(vid)
                if entry is None or entry.number != number or entry.called_at:
                    heapq.heappop(heap)  # left, or called: a stale item
                elif not entry.polled and now - entry.last_seen > STALE:
                    heapq.heappop(heap)
                    entry.parked = True  # back in the heap when seen again
                else:
                    heapq.heappop(heap)
                    self.call(vid, now)
                    n += 1
            if n >= room:
                break
        return n

    def sweep(self, now: float, grace: float = GRACE, go_grace: float = GO_GRACE,
              keep: float = KEEP) -> int:
        """Drop visitors who left (and spends older than `keep`), and set
        aside the tickets never polled and not seen for STALE; returns how
        many visitors were dropped. Amortised: one pass a second at most,
        however often it is called, and each pass looks only at the
        sightings that are older than the grace periods or STALE (each
        sighting once), O(log n) per ticket set aside."""
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + 1.0
        self._forget_spent(now, keep)
        gone = 0
        by_vid = self.by_vid
        q = self._seen_q
        while q and now - q[0][0] > grace:
            _, vid = q.popleft()
            e = by_vid.get(vid)
            if e is not None and not e.called_at and now - e.last_seen > grace:
                gone += self.leave(vid)
        q = self._called_q
        while q and now - q[0][0] > go_grace:
            _, vid = q.popleft()
            e = by_vid.get(vid)
            if e is not None and e.called_at and now - e.called_at > go_grace:
                gone += self.leave(vid)
        q = self._fresh_q
        while q and now - q[0][0] > STALE:
            _, vid = q.popleft()
            e = by_vid.get(vid)
            if e is not None and not (e.called_at or e.polled or e.aside) \
                    and now - e.last_seen > STALE:
                self._set_aside(e)
        self._prune(now)
        return gone

    def _prune(self, now: float) -> None:
        oldest = math.floor(now - WINDOW)
        if self.admissions and min(self.admissions) < oldest:
            for second in [s for s in self.admissions if s < oldest]:
                del self.admissions[second]
        if self.busy and min(self.busy) < oldest:
            for second in [s for s in self.busy if s < oldest]:
                self.busy.discard(second)
        for worker in [w for w, (at, *_) in self.queues.items() if now - at > REPORT_TTL]:
            del self.queues[worker]

    # -- questions ------------------------------------------------------------------

    def entry(self, vid: bytes) -> Entry | None:
        return self.by_vid.get(vid)

    def ahead(self, vid: bytes) -> int:
        """Tickets ahead of the visitor that are still waiting (not called,
        not set aside); -1 if it is not in the line. A ticket set aside
        stands nowhere: the answer is where it would rejoin (every waiting
        ticket of its urgency or a more urgent one). O(log n)."""
        entry = self.by_vid.get(vid)
        if entry is None:
            return -1
        level = self._levels[entry.urgency]
        if entry.aside:
            return self.urgent_ahead(entry) + level.waiting
        return self.urgent_ahead(entry) + level.prefix(entry.idx)

    def head_urgency(self) -> float | None:
        """The urgency of the most urgent waiting (uncalled) ticket whose
        visitor polled (None: nobody waits)."""
        for u in self._urgencies:
            if self._levels[-u].polled:
                return -u
        return None

    def urgent_ahead(self, entry: Entry) -> int:
        """Waiting tickets (not set aside) more urgent than `entry`'s."""
        n = 0
        for u in self._urgencies:
            if -u <= entry.urgency:
                break
            n += self._levels[-u].waiting
        return n

    def called(self) -> int:
        """Tickets called whose visitor has not got in yet."""
        return self._called

    def waiting(self) -> dict[float, int]:
        """Waiting tickets (not called, not set aside) by urgency."""
        return {-u: self._levels[-u].waiting for u in self._urgencies
                if self._levels[-u].waiting}

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

    # -- the snapshot a store keeps --------------------------------------------------

    def dump(self) -> list[Any]:
        """Plain values (msgpack-able) from which `load` rebuilds the line
        (what it answers from then on is what this line would answer)."""
        return [self.last, self.serving, self.since,
                [[vid, e.number, e.urgency, e.last_seen, e.called_at, e.shown, e.urgent_ahead,
                  e.polled, int(e.aside)] for vid, e in self.by_vid.items()],
                [[s, c] for s, c in self.admissions.items()],
                [[w, at, [[u, c] for u, c in q.items()], free]
                 for w, (at, q, free) in self.queues.items()],
                [[vid, at] for vid, at in self.spent.items()],
                sorted(self.busy),
                self._next_sweep if math.isfinite(self._next_sweep) else None]

    @classmethod
    def load(cls, data: list[Any], capacity: int = 100_000) -> Line:
        line = cls(capacity)
        last, serving, since, entries, admissions, queues, *rest = data
        line.last, line.serving, line.since = int(last), int(serving), since
        made = []
        for vid, number, urgency, seen, called, shown, urgent, *more in entries:
            # (Snapshots of older versions end before `polled` or `aside`.)
            e = Entry(int(number), float(urgency), float(seen), float(called), int(shown),
                      int(urgent), int(more[0]) if more else 0)
            e.aside = bool(more[1]) if len(more) > 1 and not e.called_at else False
            line.by_vid[bytes(vid)] = e
            made.append((e.number, bytes(vid), e))
        made.sort(key=lambda m: m[0])
        seen_q, fresh_q, called_q = [], [], []
        for _, vid, e in made:
            level = line._level(e.urgency)
            level.append(e, 0 if e.called_at or e.aside else 1)
            if e.called_at:
                line._called += 1
                called_q.append((e.called_at, vid))
            else:
                if not e.aside:
                    level.waiting += 1
                    level.heap.append((e.number, vid))  # sorted by number: a heap
                    if not e.polled:
                        fresh_q.append((e.last_seen, vid))
                else:
                    e.parked = True  # out of the heap until it rejoins
                level.polled += e.polled
                seen_q.append((e.last_seen, vid))
        line._seen_q.extend(sorted(seen_q))
        line._fresh_q.extend(sorted(fresh_q))
        line._called_q.extend(sorted(called_q))
        line.admissions = {int(s): int(c) for s, c in admissions}
        line.queues = {str(w): (float(at), {float(u): int(c) for u, c in q},
                                int(rest_[0]) if rest_ else 0)
                       for w, at, q, *rest_ in queues}
        if rest:
            # In the order spent (a stable sort: snapshots of older versions
            # kept their own order; ties keep the dump's).
            line.spent = OrderedDict(sorted(((bytes(vid), float(at)) for vid, at in rest[0]),
                                            key=lambda p: p[1]))
        if len(rest) > 1:
            line.busy = {int(s) for s in rest[1]}
        if len(rest) > 2 and rest[2] is not None:
            line._next_sweep = float(rest[2])
        return line


def apply(line: Line, ops: list[tuple], now: float,
          rules: Rules = DEFAULT_RULES) -> list[Any]:
    """Apply a worker's batch of changes to a line (what a store does with
    the batch under its lock); returns each op's result in order.

    Ops: ("draw", vid, urgency) -> number; ("seen", vid); ("call", vid);
    ("call_next", target) -> how many were called; ("leave", vid);
    ("shown", vid, shown, urgent_ahead); ("record", n); ("queue", worker,
    {urgency: n}[, free]); ("spend", vid) -> bool; ("unspend", vid). The
    line is swept first, by `rules`.
    """
    line._begin(now)
    line.sweep(now, rules.grace, rules.go_grace, rules.keep)
    out: list[Any] = []
    for op in ops:
        kind = op[0]
        if kind == "draw":
            out.append(line.draw(op[1], op[2], now))
        elif kind == "seen":
            out.append(line.seen(op[1], now))
        elif kind == "call":
            out.append(line.call(op[1], now))
        elif kind == "leave":
            out.append(line.leave(op[1]))
        elif kind == "shown":
            out.append(line.shown(op[1], op[2], op[3]))
        elif kind == "record":
            out.append(line.record(op[1], now))
        elif kind == "queue":
            out.append(line.set_queue(op[1], op[2], now, op[3] if len(op) > 3 else 0))
        elif kind == "call_next":
            out.append(line.call_next(op[1], now))
        elif kind == "spend":
            out.append(line.spend(op[1], now, rules.keep))
        elif kind == "unspend":
            out.append(line.unspend(op[1]))
        else:
            raise ValueError(f"unknown line op {kind!r}")
    return out


__all__ = ["DEFAULT_RULES", "GO_GRACE", "GRACE", "KEEP", "POLL_MAX", "POLL_MIN", "STALE",
           "WINDOW",
           "Entry", "Line", "Rules", "apply"]
