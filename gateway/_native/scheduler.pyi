"""Admission scheduler: per-school priority queues and pool fair sharing.

Pure state machine with an injected clock (`now`, seconds). Invariants are
documented at the top of native/scheduler.pyx: slot limits per school, class
and pool; order by arrived_at - priority * aging, FCFS within a class; work
conservation; weighted fair sharing of pool slots by inflight / weight;
bounded queues; every ticket ends ADMITTED, REJECTED or CANCELLED;
reconfigure keeps every count and ticket across a config reload.
"""

from collections.abc import Hashable, Iterable
from typing import Any

QUEUED: int
ADMITTED: int
REJECTED: int
CANCELLED: int

class Ticket:
    """One request's admission state. Only the scheduler creates tickets."""

    @property
    def state(self) -> int: ...
    @property
    def school(self) -> int:
        """The school's index; renumbered by reconfigure, -1 once the school
        was removed while the ticket held a slot."""
    @property
    def klass(self) -> int:
        """The class's index; renumbered by reconfigure (-1: class removed)."""
    @property
    def arrived_at(self) -> float: ...
    @property
    def deadline(self) -> float:
        """now + the class's max_wait at request time."""
    @property
    def reject_status(self) -> int:
        """429 or 503 once REJECTED (429 for the per-client bucket)."""
    @property
    def retry_after(self) -> int:
        """Seconds for Retry-After once REJECTED, within min_retry..max_retry."""
    @property
    def reason(self) -> str:
        """REJECTED: 'queue_full', 'busy' (max_wait 0), 'client_rate', 'max_wait',
        or 'removed' (reconfigure dropped its school or class while it was queued)."""
    @property
    def position(self) -> int:
        """Place in line when rejected at max_wait (0 otherwise)."""
    @property
    def seq(self) -> int: ...
    user: Any
    """The shell's slot (e.g. its resume callback); never read here."""

class Scheduler:
    def __init__(
        self,
        schools: Iterable[tuple[int, int, float, int, float, int | None, int, float, int]],
        classes: Iterable[tuple[float, float, int]],
        pools: Iterable[int] = (),
        *,
        aging: float = 30.0,
        min_retry: int = 1,
        max_retry: int = 120,
        now: float = 0.0,
    ) -> None:
        """Schools as (max_inflight, max_connections, rate, burst, weight,
        pool index or None/-1, max_queue, client_rate, client_burst), classes
        as (priority, max_wait, reject_status), pools as max_inflight.
        Zero limits and rates mean unlimited."""
    def set_share(self, klass: int, share: float | None) -> None:
        """Limit a class to share of each school's slots (at least one slot).

        The base is the school's max_inflight, or its pool's when the school
        has none; None lifts the limit. Raised limits act at the next poll.
        """
    def request(self, school: int, klass: int, client_key: Hashable | None, now: float,
                arrived_at: float | None = None, max_wait: float | None = None) -> Ticket:
        """Admit at once, queue, or reject. arrived_at (clamped to now) orders
        the ticket within its class; the deadline is now + max_wait, which
        defaults to the class's (a value <= 0 means: admit at once or reject)."""
    def release(self, ticket: Ticket, now: float, refund: bool = False) -> list[Ticket]:
        """Free the ticket's slot; returns the tickets admitted as a result
        (plus any admitted as a side effect of an earlier request), in order.
        refund: the request never reached the upstream, so its school token
        goes back to the bucket (up to its capacity) and its admission is not
        counted. ValueError if the ticket holds no slot."""
    def cancel(self, ticket: Ticket, now: float) -> bool:
        """Drop a QUEUED ticket (state CANCELLED); False for any other state."""
    def poll(self, now: float) -> tuple[list[Ticket], list[Ticket]]:
        """Act on time: delayed tickets join their queues, refilled buckets
        and raised shares admit, and tickets past their deadline are
        REJECTED. Returns (admitted, expired)."""
    def next_deadline(self) -> float | None:
        """When poll is next due; None when only a call can change anything."""
    def position(self, ticket: Ticket) -> int:
        """1 + the school's queued tickets ordered before this one; 0 if not queued."""
    def estimated_wait(self, ticket: Ticket, now: float) -> float:
        """position / measured admission rate (max_retry when nothing was admitted)."""
    def queue_eta(self, school: int, ahead: int, now: float) -> float: ...
    def queued(self, school: int) -> int: ...
    def ahead(self, school: int, klass: int, arrived_at: float) -> int:
        """Listed tickets of the school that a request of `klass` arriving at
        `arrived_at` would line up behind (for a visitor outside the queue)."""
    def free_slots(self, school: int, now: float) -> int:
        """Admissions possible now beyond the queue (-1: unlimited)."""
    def reconfigure(
        self,
        schools: Iterable[tuple[int, int, float, int, float, int | None, int, float, int]],
        classes: Iterable[tuple[float, float, int]],
        pools: Iterable[int] = (),
        *,
        school_from: Iterable[int],
        class_from: Iterable[int],
        pool_from: Iterable[int] = (),
        aging: float = 30.0,
        min_retry: int = 1,
        max_retry: int = 120,
        now: float = 0.0,
    ) -> list[Ticket]:
        """Take a new configuration (same shapes as __init__) and keep the state.

        school_from[j] is the index of the current school that new school j
        continues, or -1 for a new one; class_from and pool_from likewise.
        A continued school keeps its connections, tokens (levels capped at
        the new burst), client buckets, counters and rate estimate; class
        shares continue with their class. Held slots and queued tickets are
        renumbered in place. Queued tickets keep arrived_at, deadline and
        place (ordered by the new priorities and aging). New limits apply to
        the carried counts: a lowered max_inflight admits nothing until
        inflight is below it; raised limits act at the next poll() (call it
        next, as after set_share).

        A held ticket of a removed school keeps its slot in its pool if that
        pool continues (school becomes -1), and release() frees it there.
        Returns the queued tickets whose school or class was removed, now
        REJECTED with reason 'removed', status 503, retry_after min_retry,
        in request order. ValueError (nothing changed) on a bad config or a
        mapping of the wrong length, out of range, or naming one index twice.
        """
    def connection_open(self, school: int) -> bool: ...
    def connection_close(self, school: int) -> None: ...
    def stats(self, school: int, now: float) -> dict[str, Any]: ...
