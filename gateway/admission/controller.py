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
from gateway.admission.windows import ClassWindows
from gateway.config.schema import Config, default_classes


class AdmissionController:
    """Per-process admission state for every school in one config."""

    def __init__(self, cfg: Config, now: float = 0.0):
        self.classes = list(cfg.classes) or default_classes()
        self.school_names = [s.name for s in cfg.schools]
        self.class_names = [c.name for c in self.classes]
        self.pool_names = [p.name for p in cfg.pools]
        args, kwargs = _scheduler_args(cfg, self.classes)
        self._scheduler = Scheduler(*args, **kwargs, now=now)
        self._windows = [ClassWindows.from_config(c) for c in self.classes]
        self._shares: list[float | None] = [math.nan] * len(self.classes)
        self._windows_due: float | None = -math.inf
        self._now = now
        self._refresh_shares(now)

    def reconfigure(self, cfg: Config, now: float) -> tuple[list[Ticket], list[Ticket]]:
        """Take a reloaded config, keeping the admission state.

        Schools, classes and pools continue by name (their indices may
        change): connections, tokens, counters, queued requests and admitted
        requests' slots carry over, and the new limits apply to those counts
        (Scheduler.reconfigure). Returns (admitted, rejected) like poll():
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
        self._windows = windows
        # Every class's share is set anew (windows and max_share may differ).
        self._shares = [math.nan] * len(classes)
        self._windows_due = -math.inf
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
        """(tickets admitted since the last call, tickets expired as REJECTED)."""
        self._tick(now)
        return self._scheduler.poll(now)

    def next_deadline(self) -> float | None:
        """When poll() must run next (None: only another call changes things)."""
        due = self._scheduler.next_deadline()
        windows = self._windows_due
        if windows is None:
            return due
        return windows if due is None else min(due, windows)

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
        raw = self._scheduler.stats(school, self._now if now is None else now)
        for key in ("queued", "inflight_by_class", "admitted", "rejected"):
            raw[key] = dict(zip(self.class_names, raw[key], strict=True))
        raw["queued_total"] = sum(raw["queued"].values())
        raw["shares"] = dict(zip(self.class_names, self._shares, strict=True))
        return raw

    # -- windows -----------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self._now = now
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
