"""Admission controller: the sans-IO decision point the proxy shell calls.

Translates the config into the native Scheduler, keeps class shares in step
with their time windows, and answers every call synchronously. All `now`
arguments are Unix time in seconds (time.time()): windows are wall-clock
times and a waiting-room visitor's arrived_at comes back from a cookie,
possibly issued by another worker.

Shell protocol:
  request()      -> ADMITTED: forward, then release() when the response ends.
                    QUEUED: stop reading the client and wait; the ticket comes
                    back from release() or poll() (ADMITTED or REJECTED).
                    Call cancel() if the client leaves first.
                    REJECTED: serve the waiting page (reject_status,
                    retry_after).
  next_deadline() -> when poll() is due; it can move earlier after any call,
                    so re-arm the timer after each one.

Allotments: the scheduler enforces each school's and pool's allotment, the
part of its configured limit this worker may use now. An allotment task
(gateway/admission/allotment.py) sets them at construction and after each
reconfigure, and moves them from poll() when it is due; tickets a raised
allotment admits come out of poll() like any other. The default task,
StaticAllotment(0, workers=1), enforces the configured limits whole.
"""

from __future__ import annotations

import math

from gateway._native.scheduler import (
    ADMITTED,
    CANCELLED,
    QUEUED,
    REJECTED,
    Scheduler,
    Ticket,
)
from gateway.admission.allotment import AllotmentTask, StaticAllotment
from gateway.admission.windows import ClassWindows
from gateway.config.schema import Config, default_classes


class AdmissionController:
    """Per-process admission state for every school in one config."""

    def __init__(self, cfg: Config, now: float = 0.0,
                 allotment: AllotmentTask | None = None):
        """`allotment` sets what part of each limit this worker enforces
        (default: all of it, StaticAllotment(0, workers=1)); its start()
        runs here, before any request."""
        # The configured limits: the global truth the allotment task divides.
        self.cfg = cfg
        self.classes = list(cfg.classes) or default_classes()
        self.school_names = [s.name for s in cfg.schools]
        self.class_names = [c.name for c in self.classes]
        self.pool_names = [p.name for p in cfg.pools]
        args, kwargs = _scheduler_args(cfg, self.classes)
        self._scheduler = Scheduler(*args, **kwargs, now=now)
        self._windows = [ClassWindows.from_config(c) for c in self.classes]
        self._shares: list[float | None] = [math.nan] * len(self.classes)
        # Public for the native fast path (Exchange._admit/_release), which
        # asks the Scheduler directly while shares_due (Unix seconds, None:
        # never) is not due, and keeps `now`, the last time admission was
        # decided at, current as _tick does. Due: a class window boundary.
        self._windows_due: float | None = -math.inf
        self.shares_due: float | None = -math.inf
        # Indices of the schools whose requests and releases go through the
        # shell (hold_fast_path: a waiting line that newcomers join); the
        # native fast path reads this very set (AdmissionCore.held).
        self.held: set[int] = set()
        self.now = now
        self._refresh_shares(now)
        self.allotment: AllotmentTask = (
            StaticAllotment(0, workers=1) if allotment is None else allotment)
        self._allotment_due = self.allotment.start(self, now)

    def reconfigure(self, cfg: Config, now: float) -> tuple[list[Ticket], list[Ticket]]:
        """Take a reloaded config, keeping the admission state.

        Schools, classes and pools continue by name (their indices may
        change): connections, tokens, counters, queued requests and admitted
        requests' slots carry over, and the new limits apply to those counts
        (Scheduler.reconfigure); the allotment task then sets the allotments
        for the new config (its start()). Returns (admitted, rejected) like
        poll():
        tickets the new limits admit now, and tickets that end REJECTED, with
        reason 'removed' for those whose school or class the config dropped
        (they were queued: nothing was sent). ValueError leaves everything
        as it was.
        """
        classes = list(cfg.classes) or default_classes()
        school_names = [s.name for s in cfg.schools]
        class_names = [c.name for c in classes]
        pool_names = [p.name for p in cfg.pools]
        args, kwargs = _scheduler_args(cfg, classes)
        windows = [ClassWindows.from_config(c) for c in classes]
        removed = self._scheduler.reconfigure(
            *args, **kwargs, now=now,
            school_from=_continued(self.school_names, school_names),
            class_from=_continued(self.class_names, class_names),
            pool_from=_continued(self.pool_names, pool_names),
        )
        self.classes, self.school_names, self.class_names, self.pool_names = (
            classes, school_names, class_names, pool_names)
        self.cfg = cfg
        self._windows = windows
        # Every class's share is set anew (windows and max_share may differ).
        self._shares = [math.nan] * len(classes)
        self._windows_due = self.shares_due = -math.inf
        # Indices may have moved: the shell holds again at its next sync.
        self.held.clear()
        # The scheduler took the configured limits whole; nothing was
        # decided since, so the task's allotments apply before anything is.
        self._allotment_due = self.allotment.start(self, now)
        admitted, expired = self.poll(now)
        return admitted, removed + expired

    # -- lookups for the shell --------------------------------------------------

    def school_index(self, name: str) -> int:
        return self.school_names.index(name)

    def class_index(self, name: str) -> int:
        return self.class_names.index(name)

    # -- the calls ---------------------------------------------------------------

    def request(self, school: int, klass: int, client_key: bytes | None, now: float,
                arrived_at: float | None = None, max_wait: float | None = None) -> Ticket:
        """Admit, queue or reject one request (the returned Ticket's state).

        client_key selects the per-client bucket (None skips it). arrived_at
        is a returning visitor's original arrival: it orders the request
        within its class (and ages it), while its deadline is still
        now + max_wait. max_wait (seconds) replaces the class's for this
        request: what is left of the wait of a request asking a second time.
        """
        self._tick(now)
        return self._scheduler.request(school, klass, client_key, now, arrived_at, max_wait)

    def release(self, ticket: Ticket, now: float, refund: bool = False) -> list[Ticket]:
        """An admitted request finished; returns the tickets admitted now.

        refund=True: the request gave its slot back without having been
        forwarded (to read its body first), so its school token is returned
        and it is not counted as admitted.
        """
        self._tick(now)
        return self._scheduler.release(ticket, now, refund)

    def cancel(self, ticket: Ticket, now: float) -> bool:
        """A QUEUED ticket's client went away (state CANCELLED).

        Returns False, changing nothing, for a ticket that is not queued: an
        admitted one must be given back with release().
        """
        self._tick(now)
        return self._scheduler.cancel(ticket, now)

    def poll(self, now: float) -> tuple[list[Ticket], list[Ticket]]:
        """(tickets admitted since the last call, tickets expired as REJECTED).

        Runs the allotment task's tick() first when it is due, so what its
        raised allotments admit is in this poll's admitted list."""
        self._tick(now)
        if self._allotment_due is not None and now >= self._allotment_due:
            self._allotment_due = self.allotment.tick(now)
        return self._scheduler.poll(now)

    def next_deadline(self) -> float | None:
        """When poll() must run next (None: only another call changes things)."""
        due = self._scheduler.next_deadline()
        for other in (self._windows_due, self._allotment_due):
            if other is not None and (due is None or other < due):
                due = other
        return due

    def position(self, ticket: Ticket) -> int:
        """1-based place among the school's waiting requests (0 if not queued)."""
        return self._scheduler.position(ticket)

    def estimated_wait(self, ticket: Ticket, now: float) -> float:
        """Seconds until admission, from the school's measured admission rate."""
        return self._scheduler.estimated_wait(ticket, now)

    def connection_open(self, school: int, now: float) -> bool:
        """Count a client connection; False (not counted) at max_connections."""
        self._tick(now)
        return self._scheduler.connection_open(school)

    def connection_close(self, school: int) -> None:
        self._scheduler.connection_close(school)

    # -- allotments (the allotment task's calls; see Scheduler) -------------------

    def set_allotment(self, school: int, now: float, **limits: int | float | None) -> None:
        """Set the school's allotment: any of max_inflight, max_connections,
        max_queue (int >= 0, 0: none; None: no limit), rate (tokens/s) and
        burst (tokens); gateway/_native/scheduler.pyi has the details.
        Lowered: nothing more is admitted until use is below it; a raised
        max_inflight admits queued requests at once, and they come out of
        the next poll(). ValueError (nothing changed) for a value out of
        range, or rate/burst for a school whose config sets no rate."""
        self._tick(now)
        self._scheduler.set_allotment(school, now, **limits)

    def set_pool_allotment(self, pool: int, now: float, max_inflight: int) -> None:
        """Set the pool's allotment of slots (int >= 0), as set_allotment."""
        self._tick(now)
        self._scheduler.set_pool_allotment(pool, now, max_inflight)

    def set_class_allotment(self, school: int, klass: int, now: float,
                            max_inflight: int | None) -> None:
        """The slots `klass` may hold at the school here while its share
        limits it (None: its share of the school's allotted slots);
        Scheduler.set_class_allotment."""
        self._tick(now)
        self._scheduler.set_class_allotment(school, klass, now, max_inflight)

    def set_pool_class_allotment(self, pool: int, klass: int, now: float,
                                 max_inflight: int | None) -> None:
        """The same over a whole pool (Scheduler.set_pool_class_allotment)."""
        self._tick(now)
        self._scheduler.set_pool_class_allotment(pool, klass, now, max_inflight)

    def set_client_allotment(self, school: int, client_key: object, now: float, rate: float,
                             burst: float, grant: float = 0.0) -> bool:
        """Retune one client's bucket here (Scheduler.set_client_allotment);
        False when the school holds no bucket for that client."""
        self._tick(now)
        return self._scheduler.set_client_allotment(school, client_key, now, rate, burst,
                                                    grant)

    def active_clients(self, school: int, now: float) -> list:
        """Keys of the school's client buckets that are not full."""
        return self._scheduler.active_clients(school, now)

    def share(self, klass: int, now: float) -> float | None:
        """The class's max_share at `now` (its windows applied; None: none)."""
        self._tick(now)
        share = self._shares[klass]
        return None if share is None or math.isnan(share) else share

    def grant_tokens(self, school: int, n: float, now: float) -> float:
        """Put n granted tokens into the school's bucket (up to its allotted
        burst); returns how many it took."""
        self._tick(now)
        return self._scheduler.grant_tokens(school, n, now)

    def reclaim_tokens(self, school: int, n: float, now: float) -> float:
        """Take up to n unspent tokens out of the school's bucket; returns
        how many."""
        self._tick(now)
        return self._scheduler.reclaim_tokens(school, n, now)

    def usage(self, school: int, now: float) -> dict:
        """Use and allotment of one school (Scheduler.usage): inflight,
        queued, connections, admitted (cumulative), admission_rate, tokens,
        and the allotted max_inflight, max_connections, max_queue, rate,
        burst."""
        return self._scheduler.usage(school, now)

    def pool_usage(self, pool: int, now: float) -> dict:
        """inflight, queued, admission_rate and allotted max_inflight of a pool."""
        return self._scheduler.pool_usage(pool, now)

    def queued(self, school: int) -> int:
        """Requests of the school waiting in the queue."""
        return self._scheduler.queued(school)

    def ahead(self, school: int, klass: int, arrived_at: float) -> int:
        """Queued requests that a request of `klass` arriving at `arrived_at`
        would line up behind: a waiting-room visitor's place in the queue."""
        return self._scheduler.ahead(school, klass, arrived_at)

    def free_slots(self, school: int, now: float) -> int:
        """Requests the school could take now beyond its queue (-1: unlimited)."""
        return self._scheduler.free_slots(school, now)

    def queue_eta(self, school: int, ahead: int, now: float) -> float:
        """Seconds until `ahead` more requests are admitted at the measured rate."""
        return self._scheduler.queue_eta(school, ahead, now)

    def stats(self, school: int, now: float | None = None) -> dict:
        """Gauges and counters for /metrics; per-class values keyed by class name."""
        raw = self._scheduler.stats(school, self.now if now is None else now)
        for key in ("queued", "inflight_by_class", "admitted", "rejected"):
            raw[key] = dict(zip(self.class_names, raw[key], strict=True))
        raw["queued_total"] = sum(raw["queued"].values())
        raw["shares"] = dict(zip(self.class_names, self._shares, strict=True))
        return raw

    # -- windows -----------------------------------------------------------------

    def hold_fast_path(self, school: int, held: bool) -> None:
        """While school `school` (its index) is `held`, its requests and
        releases go through the shell (the native fast path skips the
        schools in `self.held`), which then decides what the Scheduler alone
        cannot: a newcomer joins the end of the school's waiting line
        instead of taking a slot freed for the line
        (gateway/proxy/admission.py). Costs a Python frame per request of
        that school while held; other schools keep the fast path."""
        if held:
            self.held.add(school)
        else:
            self.held.discard(school)

    def _tick(self, now: float) -> None:
        self.now = now
        if self._windows_due is not None and now >= self._windows_due:
            self._refresh_shares(now)

    def _refresh_shares(self, now: float) -> None:
        due = None
        for klass, windows in enumerate(self._windows):
            share = windows.share_at(now)
            if share != self._shares[klass]:
                self._shares[klass] = share
                self._scheduler.set_share(klass, share)
            change = windows.next_change(now)
            if change is not None and (due is None or change < due):
                due = change
        self._windows_due = due
        self.shares_due = due


def _scheduler_args(cfg: Config, classes: list) -> tuple[tuple, dict]:
    """Scheduler (or reconfigure) arguments for cfg, but for `now`."""
    pool_index = {p.name: i for i, p in enumerate(cfg.pools)}
    schools = []
    for s in cfg.schools:
        if s.pool is not None and s.pool not in pool_index:
            raise ValueError(f"schools.{s.name}.pool: no pool named {s.pool!r}")
        schools.append((
            s.max_inflight, s.max_connections, s.rate, s.burst, s.weight,
            pool_index.get(s.pool, -1), cfg.admission.max_queue,
            s.client_rate, s.client_burst,
        ))
    adm = cfg.admission
    args = (schools, [(c.priority, c.max_wait, c.reject_status) for c in classes],
            [p.max_inflight for p in cfg.pools])
    return args, {"aging": adm.aging, "min_retry": adm.min_retry, "max_retry": adm.max_retry}


def _continued(old: list[str], new: list[str]) -> list[int]:
    """For each new name, the index of the same name in old (-1: new)."""
    index = {name: i for i, name in enumerate(old)}
    return [index.get(name, -1) for name in new]


__all__ = ["ADMITTED", "CANCELLED", "QUEUED", "REJECTED", "AdmissionController", "Ticket"]
