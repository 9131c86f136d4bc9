"""Admission scheduler: per-school priority queues and pool fair sharing.

Pure state machine with an injected clock (`now`, seconds). Invariants are
documented at the top of native/scheduler.pyx: slot limits per school, class
and pool; order by arrived_at - priority * aging, FCFS within a class; work
conservation; weighted fair sharing of pool slots by inflight / weight;
bounded queues; every ticket ends ADMITTED, REJECTED or CANCELLED;
reconfigure keeps every count and ticket across a config reload; the limits
enforced are allotments that a separate task moves (set_allotment).

Allotments (invariant 8). The configured limits are the global truth; what
this scheduler enforces is each school's and pool's allotment, the part of
those limits this participant (a worker process) may use right now. They
start as the configured limits. A slower task (gateway/admission/allotment.py)
moves them without touching the per-request path, which reads the same
fields as before, so an allotment costs nothing per request. The design is
meant to be driven in batches from a shared store (issue 9):

- Slots and connections are counts a participant holds as a lease: the task
  borrows k slots from the shared counter in one round trip, sets
  max_inflight=k, and every local release re-uses them without asking again.
  It gives back only what is free (max_inflight - inflight from usage()):
  lowering an allotment below what is in use is safe here (nothing more is
  admitted until use is below it) but the slots are still occupied.
- Tokens come two ways into the same school bucket. A rate allotment
  (set_allotment rate/burst) refills locally at this participant's part of
  the rate: the static split, and a fail-static fallback that needs nobody
  else. Grants (grant_tokens, usually with rate 0: no local refill) bring
  tokens minted in one place (a GCRA key in Redis) in batches; unspent ones
  go back with reclaim_tokens when the school is idle, so the fleet-wide
  rate holds exactly however demand is spread. A task can mix the two.
- usage() and pool_usage() are read-only snapshots with cumulative counters
  (admitted): the task diffs two looks, so readers never steal each other's
  "since the last look".

Order within one rebalance: lower allotments first, then raise them. Only a
raise of max_inflight (a school's or a pool's) or a token grant admits
anything, and it does so at once; a pass that lowers first therefore never
admits beyond the allotments it ends with, while one that raised a school
before lowering its pool could admit up to the old pool allotment.
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
        """Limit a class to share of each school's slots (at least one slot),
        and, in a pool, to share of the pool's slots over all its members.

        The base is the school's allotted max_inflight, or its pool's when
        the school has no limit of its own (set_allotment follows it); None
        lifts the limit. Raised limits act at the next poll.
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
    def set_allotment(
        self,
        school: int,
        now: float,
        *,
        max_inflight: int | None = ...,
        max_connections: int | None = ...,
        max_queue: int | None = ...,
        rate: float = ...,
        burst: int = ...,
        client_rate: float = ...,
        client_burst: float = ...,
    ) -> None:
        """Set the school's allotment; an omitted keyword leaves that part as it is.

        max_inflight: slots (requests in flight); max_connections: client
        connections; max_queue: QUEUED tickets. Each an int >= 0, where 0
        means none (everything queues, is refused or rejected), or None for
        no limit (unlike the config, where 0 means no limit).
        rate: tokens/s the school bucket refills by here (finite, >= 0; 0: no
        local refill, tokens come only from grant_tokens). burst: the most
        tokens the bucket holds here (int >= 0; 0 means one second's worth of
        the allotted rate, at least one, as in the config). Tokens held are
        kept, capped at the new burst; nothing is minted.

        A value below what is in use takes nothing back: nothing more is
        admitted (no connection counted) until use is below it. A raised
        max_inflight admits queued tickets at once, in queue order and pool
        fairness; they come out of the next poll() (next_deadline() is then
        `now`) or release(). Nothing else admits here (a raised rate or
        burst holds no more tokens yet; next_deadline() moves with the
        rate). Class shares follow the allotted slots.
        client_rate / client_burst: what a client bucket made from now on
        starts with here (tokens/s >= 0; capacity in tokens >= 1, and full):
        this participant's part of a per-client bucket shared by several
        (client_burst 0: the config's client_rate and client_burst again).
        Buckets already made keep theirs (set_client_allotment moves them).

        IndexError for no such school; ValueError (nothing changed) for a
        value out of range, rate/burst for a school whose config sets no
        rate (it has no bucket), or client_rate/client_burst for one with no
        client_rate. reconfigure() resets allotments to the new config's
        limits.
        """
    def set_class_allotment(self, school: int, klass: int, now: float,
                            max_inflight: int | None) -> None:
        """The slots `klass` may hold at the school here while its share
        limits it (int >= 0): this participant's lease of the class's
        fleet-wide max_share of the school. None: back to the share of the
        school's allotted slots (set_share). No effect while the class has
        no share. A raise admits at once, as for set_allotment. IndexError
        for no such school or class; ValueError for a negative value."""
    def set_pool_class_allotment(self, pool: int, klass: int, now: float,
                                 max_inflight: int | None) -> None:
        """The same over a whole pool: the slots `klass` may hold over all
        member schools together here while its share limits it. None: its
        share of the pool's allotted slots (at least one), the default, so
        a class's max_share holds for the pool as a whole as well as for
        each school. IndexError / ValueError as set_class_allotment."""
    def set_client_allotment(self, school: int, client_key: Hashable, now: float,
                             rate: float, burst: float, grant: float = 0.0) -> bool:
        """Retune one client's bucket at the school: `rate` tokens/s up to
        `burst` tokens (>= 1), then put `grant` tokens in (up to the burst).
        Tokens held are kept, capped at the new burst. False (nothing done)
        when the school holds no bucket for that client (never seen, or
        forgotten when idle). ValueError for a value out of range."""
    def active_clients(self, school: int, now: float) -> list[Any]:
        """Keys of the school's client buckets that are not full: clients
        that spent a token within their bucket's refill time."""
    def set_pool_allotment(self, pool: int, now: float, max_inflight: int) -> None:
        """Set the pool's allotment of slots (int >= 0; 0: none). Lowered:
        nothing more is admitted until the pool's inflight is below it;
        raised: queued tickets of member schools are admitted at once, by
        pool fairness, into the outbox as for set_allotment. IndexError for
        no such pool; ValueError for None or a value out of range."""
    def grant_tokens(self, school: int, n: float, now: float) -> float:
        """Put n tokens (a grant from a shared bucket) into the school's
        bucket, up to its allotted burst; returns how many it took (the rest
        belongs back where it came from). Queued tickets the tokens let in
        are admitted at once, as for set_allotment. ValueError if n is
        negative or not finite, or the school has no bucket."""
    def reclaim_tokens(self, school: int, n: float, now: float) -> float:
        """Take up to n unspent tokens out of the school's bucket (never
        into debt); returns how many, to be given back to the shared bucket.
        ValueError as for grant_tokens."""
    def usage(self, school: int, now: float) -> dict[str, Any]:
        """What the allotment task rebalances by, for one school.

        Keys: inflight, queued, connections (counts now); admitted
        (admissions so far, net of refunds and kept across reloads: each one
        took one school token, so the difference of two looks is the tokens
        spent between them); admission_rate (admissions/s, decayed over
        ~10 s); tokens (held now, float; inf without a bucket). The allotment
        in force: max_inflight, max_connections, max_queue (None: no limit),
        rate (tokens/s) and burst (bucket capacity in tokens, float), both
        None without a bucket. class_inflight and class_queued: per class
        (lists by class index), slots held and QUEUED tickets. Read-only;
        IndexError for no such school.
        """
    def pool_usage(self, pool: int, now: float) -> dict[str, Any]:
        """The same for a pool: inflight and queued (over its member schools),
        admission_rate (sum of its members'), max_inflight (its allotment),
        class_inflight and class_queued (per class, over its members).
        IndexError for no such pool."""
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
        next, as after set_share). Allotments start again from the new
        limits (the allotment task sets them anew).

        A held ticket of a removed school keeps its slot in its pool if that
        pool continues (school becomes -1), and release() frees it there.
        Returns the queued tickets whose school or class was removed, now
        REJECTED with reason 'removed', status 503, retry_after min_retry,
        in request order. ValueError (nothing changed) on a bad config or a
        mapping of the wrong length, out of range, or naming one index twice.
        """
    def connection_open(self, school: int) -> bool:
        """Count a client connection; False (not counted) at the school's
        allotted max_connections."""
    def connection_close(self, school: int) -> None: ...
    def stats(self, school: int, now: float) -> dict[str, Any]: ...
