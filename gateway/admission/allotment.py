"""Allotment tasks: who decides what part of each limit this worker enforces.

The configured limits (a school's and a pool's max_inflight,
max_connections, token rate and burst, the queue bound) are the global
truth. Each worker's scheduler enforces an *allotment*: the part of each
limit it may use right now (invariant 8 of native/scheduler.pyx; the API is
documented in gateway/_native/scheduler.pyi). An allotment task sets the
allotments and moves them, away from the request path: the controller calls
`start` when it is built and after each reconfigure, and `tick` from its
poll() when the task said it is due. Nothing here runs per request.

`StaticAllotment` is the first task: worker i of n enforces a fixed share of
every limit, the split SO_REUSEPORT's even spread of connections implies
(the numbers tests.oracles.shares.split_limits, the oracle, bakes into the
config). A shared task (shared memory between the workers of one instance,
or Redis across instances) plugs in behind the same two methods.

Sans-IO: `now` is the caller's clock (Unix seconds, as everywhere in the
controller) and nothing here reads a clock, sleeps or does I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.admission.controller import AdmissionController


class AllotmentTask(Protocol):
    """Sets and moves the allotments of one AdmissionController.

    A task reads what the controller serves from `controller.cfg` (the
    configured limits; schools and pools by their index in cfg.schools and
    cfg.pools), what is in use from `controller.usage` / `pool_usage`, and
    moves allotments with `controller.set_allotment`, `set_pool_allotment`,
    `grant_tokens` and `reclaim_tokens`. Within one pass it lowers first and
    raises after (a raise admits at once). Tickets a raise admits come out of
    the controller's poll(), which is due at once after it.
    """

    def start(self, controller: AdmissionController, now: float) -> float | None:
        """Set every school's and pool's allotment for `controller.cfg`;
        returns when tick is first due (Unix seconds; None: never).

        Called when the controller is built and after each reconfigure
        (which resets every allotment to the configured limits), before any
        request is decided under the new config. It must not raise for a
        config the controller accepted.
        """
        ...

    def tick(self, now: float) -> float | None:
        """Rebalance the allotments; returns when tick is next due
        (Unix seconds; None: never, until the next start).

        The controller calls it from poll() once `now` reaches the due time
        and folds that time into next_deadline(), so the shell's one timer
        drives it. It must not block: a task that talks to a shared store
        works with the answers it already has.
        """
        ...


def share(limit: int, index: int, workers: int) -> int:
    """Worker `index`'s part of an integer limit of `workers` workers.

    Parts add up to the limit: limit // workers each, plus one for the first
    limit % workers workers. A limit smaller than the worker count still
    gives every worker 1 (the sum then exceeds the limit by at most
    workers - 1). 0 (the config's "no limit") stays 0; workers <= 1 keeps
    the limit whole.
    """
    if limit <= 0 or workers <= 1:
        return limit
    base, extra = divmod(limit, workers)
    return max(base + (1 if index < extra else 0), 1)


class StaticAllotment:
    """Worker `index` of `workers` enforces a fixed share of every limit.

    max_inflight, max_connections, the pools' max_inflight, the queue bound
    and the token burst are split with share(); the token rate is divided
    evenly. A limit the config leaves unset (0) stays unlimited. Per-client
    buckets are not split: one client's connections normally land on one
    worker. workers None takes cfg.server.workers at each start; workers 1
    enforces the limits whole. The split never changes, so tick is never
    due.
    """

    def __init__(self, index: int = 0, workers: int | None = None) -> None:
        if index < 0 or (workers is not None and not index < workers):
            raise ValueError(f"worker index {index} out of range for {workers} workers")
        self.index = index
        self.workers = workers

    def start(self, controller: AdmissionController, now: float) -> float | None:
        cfg = controller.cfg
        i = self.index
        n = cfg.server.workers if self.workers is None else self.workers
        # Every value is at most the configured one, so this pass only
        # lowers (the order within a pass does not matter).
        for p, pool in enumerate(cfg.pools):
            controller.set_pool_allotment(p, now, share(pool.max_inflight, i, n))
        max_queue = share(cfg.admission.max_queue, i, n)
        for k, school in enumerate(cfg.schools):
            limits: dict = {
                "max_inflight": _count(share(school.max_inflight, i, n)),
                "max_connections": _count(share(school.max_connections, i, n)),
                "max_queue": max_queue,
            }
            if school.rate > 0:
                limits["rate"] = school.rate / n if n > 1 else school.rate
                # 0 (one second's worth) stays 0: a second of the rate part.
                limits["burst"] = share(school.burst, i, n)
            controller.set_allotment(k, now, **limits)
        return None

    def tick(self, now: float) -> float | None:
        return None


def _count(limit: int) -> int | None:
    """A configured count limit as an allotment: the config's 0 means no
    limit, which an allotment says with None (its 0 means none at all)."""
    return limit if limit > 0 else None


__all__ = ["AllotmentTask", "StaticAllotment", "share"]
