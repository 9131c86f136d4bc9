"""A worker's view of the waiting lines: a local cache, synced off the
request path.

The admission shell asks this view, never the store: `line(school)` is the
school's line as of the last sync, with this worker's own changes since
(draw, seen, call, leave, shown) applied to it at once and queued for the
store. A sync sends the queued changes, this worker's admissions since the
last sync and its own queue (from `collect`), and takes the store's line
as the new cache. With Redis the cached line is the store's replayed copy
(RedisLineStore), which only the log changes: a change made here is queued
and answered provisionally (`provisional`: a draw not yet confirmed shows
at the end of the line as known here; a call is never provisional), and
shows in the line once a sync has confirmed it.

When syncs run:
- the local store and shared memory: every change at once, inline (memory
  of this process or this instance, under a lock held for the exchange
  alone), and the measurements every `interval` seconds;

Each sync also carries this worker's free slots (so any worker knows the
fleet's room) and, while tickets wait, a ("call_next", target) asking the
line to call its head up to the target the shell computed: the line is
called forward as capacity comes, not only when a visitor happens to poll.
- Redis: every `interval` seconds, and soon after a change, from a task; an
  exchange that fails or takes longer than `timeout` switches the worker to
  a local line (seeded from the cache) and logs that once; Redis is tried
  again every few seconds, and when it answers the visitors who joined
  meanwhile draw their numbers there (at the end of the shared line).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.waiting.line import DEFAULT_RULES, Line, Rules
from gateway.waiting.line_store import LocalLineStore

log = logging.getLogger("schoolgate.line")

# Seconds between tries of an unreachable Redis.
RETRY = 2.0

# What `collect` returns per school: (admissions since last asked,
# {urgency: requests queued in this worker}[, free slots beyond that queue
# (-1: unlimited)[, how many tickets should be called, or None]]).
Inputs = dict[str, tuple]


class LineView:
    """This worker's cache of every school's line (see the module docstring).

    `store` is a LocalLineStore, ShmLineStore or RedisLineStore; `worker` a
    name unique in the fleet (its queue report is kept under it); `collect`
    returns Inputs for the schools to sync. `clock` is Unix seconds.
    """

    def __init__(self, store: Any, worker: str, collect: Callable[[], Inputs],
                 *, interval: float = 0.1, timeout: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.worker = worker
        self.collect = collect
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.lines: dict[str, Line] = {}
        # When the lines were last brought up to date with the store (this
        # worker's clock; 0.0: never): the freshest worker's view is the
        # line (the admin process takes that one: gateway/server/telemetry.py).
        self.synced_at = 0.0
        self._pending: dict[str, list[tuple]] = {}
        # Redis: draws and spends made here that no sync has confirmed yet
        # (school -> vid -> [urgency, shown, urgent_ahead]; school -> vids).
        self._drawn: dict[str, dict[bytes, list]] = {}
        self._spends: dict[str, set[bytes]] = {}
        # Those of the exchange under way.
        self._sent: tuple[dict[str, dict[bytes, list]], dict[str, set[bytes]]] = ({}, {})
        # Ops sent in the exchange under way (Redis), applied again to its answer.
        self._inflight: dict[str, list[tuple]] | None = None
        self._offset = 0.0  # the store's clock minus ours
        self._fallback: LocalLineStore | None = None
        self._retry_at = 0.0
        self._soon = False
        self._task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._async = hasattr(store, "aexchange")
        # In-process and shared-memory stores answer at once: every change
        # is exchanged when made, so a page and a poll show the line as the
        # whole instance has it (no network in the way).
        self._inline = not self._async

    # -- what the shell asks ---------------------------------------------------------

    @property
    def rules(self) -> Rules:
        """The line's time limits (set on the store; see Admission._configure)."""
        return getattr(self.store, "rules", DEFAULT_RULES)

    @rules.setter
    def rules(self, rules: Rules) -> None:
        self.store.rules = rules
        if self._fallback is not None:
            self._fallback.rules = rules

    @property
    def degraded(self) -> bool:
        """True while the shared store is away and this worker's line is local."""
        return self._fallback is not None

    @property
    def shared(self) -> bool:
        return bool(getattr(self.store, "shared", False)) and self._fallback is None

    def now(self) -> float:
        """The store's clock (Redis TIME) as best known here."""
        return self.clock() + self._offset

    def line(self, school: str) -> Line:
        line = self.lines.get(school)
        if line is None:
            line = self.lines[school] = Line(getattr(self.store, "capacity", 100_000))
        return line

    def change(self, school: str, op: tuple) -> Any:
        """Apply one change now (local and shared-memory stores: the store's
        answer is the answer), or queue it for Redis and answer
        provisionally (`_provisional`): the cached line is the store's
        replayed copy and is never changed here, so every copy stays the
        same line; the change shows in it once a sync has confirmed it."""
        now = self.now()
        store = self._fallback or (self.store if self._inline else None)
        if store is not None:
            # This process's own lines, or the instance's under its lock:
            # the store's answer is the answer.
            results: dict[str, list[Any]] = {}
            try:
                self.lines.update(store.exchange({school: [op]}, now, results))
            except Exception as err:
                if store is self._fallback:
                    raise
                # The shared memory failed us (a fault nobody foresaw): this
                # request is answered from a local line rather than with a
                # 500, and the shared one is tried again (see _try_again).
                self._degrade({}, err)
                return self.change(school, op)
            self.synced_at = self.clock()
            return results[school][-1]
        result = self._provisional(school, op, now)
        self._pending.setdefault(school, []).append(op)
        self._sync_soon()
        return result

    def _provisional(self, school: str, op: tuple, now: float) -> Any:
        """What the store will most likely answer `op` (Redis; confirmed or
        corrected by the next sync, which the shell reads from then on)."""
        line = self.line(school)
        kind = op[0]
        drawn = self._drawn.setdefault(school, {})
        sent = self._sent[0].get(school, {})
        if kind == "draw":
            entry = line.entry(op[1])
            if entry is not None:
                return entry.number
            if op[1] in sent:
                return line.last + list(sent).index(op[1]) + 1
            if op[1] in drawn:
                return line.last + len(sent) + list(drawn).index(op[1]) + 1
            if len(line) + len(sent) + len(drawn) >= line.capacity:
                return 0
            drawn[op[1]] = [float(op[2]), 0, 0]
            return line.last + len(sent) + len(drawn)
        if kind == "seen":
            return op[1] in line.by_vid or op[1] in drawn or op[1] in sent
        if kind == "spend":
            spent = self._spends.setdefault(school, set())
            keep = self.rules.keep
            if op[1] in spent or op[1] in self._sent[1].get(school, ()) or \
                    line.is_spent(op[1], now, keep):
                return False
            spent.add(op[1])
            return True
        if kind == "unspend":
            self._spends.get(school, set()).discard(op[1])
            return True
        if kind == "leave":
            return drawn.pop(op[1], None) is not None or op[1] in line.by_vid
        if kind == "call":
            entry = line.entry(op[1])
            return entry is not None and not entry.called_at
        if kind == "shown":
            for d in (drawn, sent):
                if op[1] in d:
                    d[op[1]][1:] = [op[2], op[3]]
        return 0 if kind == "call_next" else None

    def provisional(self, school: str, vid: bytes) -> tuple[float, int, int, int] | None:
        """A visitor who drew here and whose draw no sync has confirmed yet
        (Redis): (urgency, waiting tickets ahead as far as known: those of
        the cached line at its urgency or above, and the earlier draws made
        here, position last shown (0: none), urgent tickets ahead then);
        None otherwise. The store may still put others ahead (their draws
        came first): the shell shows no more than this position anyway
        (Line.report keeps the minimum shown)."""
        drawn = {**self._sent[0].get(school, {}), **self._drawn.get(school, {})}
        if vid not in drawn:
            return None
        urgency, shown, urgent = drawn[vid]
        line = self.line(school)
        ahead = sum(n for u, n in line.waiting().items() if u >= urgency)
        for v, (u, *_) in drawn.items():
            if v == vid:
                break
            ahead += u >= urgency
        return urgency, ahead, shown, urgent

    # -- syncing -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin the periodic syncs (needs a running loop)."""
        if self._timer is None and self._task is None:
            self._tick()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    def _tick(self) -> None:
        self._timer = None
        loop = self._loop()
        if loop is None:
            return
        self._run_sync(loop)
        self._timer = loop.call_later(self.interval, self._tick)

    def _sync_soon(self) -> None:
        if self._soon:
            return
        loop = self._loop()
        if loop is None:
            self.sync()  # no loop (tests of the shell): at once
            return
        self._soon = True
        loop.call_soon(self._soon_sync, loop)

    def _soon_sync(self, loop: asyncio.AbstractEventLoop) -> None:
        self._soon = False
        self._run_sync(loop)

    def _run_sync(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._async and self._fallback is None:
            if self._task is None or self._task.done():
                self._task = loop.create_task(self.async_sync())
            return
        self.sync()

    def _batches(self) -> dict[str, list[tuple]]:
        batches = self._pending
        self._pending = {}
        for school in self.lines:  # every line known here is refreshed
            batches.setdefault(school, [])
        for school, (admitted, queued, *more) in self.collect().items():
            ops = batches.setdefault(school, [])
            if admitted:
                ops.append(("record", admitted))
            ops.append(("queue", self.worker, queued, more[0] if more else 0))
            if len(more) > 1 and more[1] is not None:
                ops.append(("call_next", more[1]))
        return batches

    def sync(self) -> None:
        """One synchronous exchange (local store, shared memory, fallback)."""
        store = self._fallback or self.store
        if self._async and self._fallback is None:
            return  # Redis syncs in async_sync
        batches = self._batches()
        if self._fallback is not None and self.clock() >= self._retry_at:
            self._retry_at = self.clock() + RETRY
            loop = self._loop()
            if loop is not None and (self._task is None or self._task.done()):
                self._task = loop.create_task(self._try_again())
        self.lines.update(store.exchange(batches, self.now()))
        self.synced_at = self.clock()

    async def async_sync(self) -> None:
        """One exchange with Redis; on failure, switch to the local line."""
        batches = self._batches()
        self._inflight = batches
        # What this exchange confirms; draws and spends made while it is
        # under way stay provisional until the next.
        self._sent = (self._drawn, self._spends)
        self._drawn, self._spends = {}, {}
        try:
            lines, offset = await asyncio.wait_for(
                self.store.aexchange(batches, self.clock()), self.timeout)
        except Exception as err:
            self._inflight = None
            self._degrade(batches, err)
            self._sent = ({}, {})
            return
        self._inflight = None
        self._sent = ({}, {})
        self._offset = offset
        self._take(lines)
        self.synced_at = self.clock()

    def _take(self, lines: dict[str, Line]) -> None:
        self.lines.update(lines)

    def _degrade(self, batches: dict[str, list[tuple]], err: BaseException) -> None:
        log.warning("the shared waiting line is unreachable (%s): each worker keeps a local "
                    "line until it is back", err or type(err).__name__)
        local = LocalLineStore(getattr(self.store, "capacity", 100_000), self.rules)
        # The store's copies become the local lines: it forgets them (and
        # loads the shared line afresh when Redis is back).
        local.lines = self.lines
        reset = getattr(self.store, "reset", None)
        if reset is not None:
            reset()
        self._offset = 0.0
        self._fallback = local
        self._retry_at = self.clock() + RETRY
        # The changes made here that no sync confirmed (those the failed
        # exchange carried, and those made meanwhile) now apply to the
        # local line; the measurements are the next syncs' business.
        changes: dict[str, list[tuple]] = {}
        for source in (batches, self._pending):
            for school, ops in source.items():
                changes.setdefault(school, []).extend(
                    op for op in ops if op[0] not in ("record", "queue", "call_next"))
        self._pending = {}
        self._drawn, self._spends = {}, {}
        local.exchange(changes, self.clock())
        for ops in batches.values():
            del ops[:]

    async def _try_again(self) -> None:
        """Redis again: send the visitors who joined meanwhile as new draws,
        and the tickets spent meanwhile."""
        redraw: dict[str, list[tuple]] = {}
        for school, line in self.lines.items():
            entries = sorted(line.by_vid.items(), key=lambda kv: kv[1].key())
            redraw[school] = [("draw", vid, e.urgency) for vid, e in entries
                              if not e.called_at]
            # Tickets spent meanwhile stay spent (those already there are kept).
            redraw[school] += [("spend", vid) for vid in line.spent]
        try:
            if self._async:
                lines, offset = await asyncio.wait_for(
                    self.store.aexchange(redraw, self.clock()), self.timeout)
            else:
                # Shared memory: an exchange under its lock, as change() does.
                lines, offset = self.store.exchange(redraw, self.now()), self._offset
        except Exception:
            return
        self._fallback = None
        self._offset = offset
        self._take(lines)
        log.warning("the shared waiting line is back")


__all__ = ["LineView"]
