"""Limits shared by every worker of every instance: the rebalancing core.

Sans-IO. Every participant (one worker process of one instance) holds a
*lease* on each shared limit: a number of slots of a school's or a pool's
max_inflight, of a school's max_connections and of its queue bound, and a
batch of tokens of its token bucket. The leases of all participants are
kept in a *ledger* (shared memory between the workers of one instance,
gateway/shared/ledger.py LocalLedger, or Redis across instances,
RedisLedger); both run the same two steps, written once here:

- `claim` (one limit, one participant, atomically in the ledger): drop the
  leases whose TTL ran out, and grant the participant
  ``min(want, limit - what the others hold)``; record what it holds as
  ``max(grant, its current allotment, its use)`` until ``now + ttl``. So the
  recorded leases never add up to more than the limit (a participant never
  raises its allotment beyond a grant, and lowers it locally before it
  reports), and a killed participant's slots come back after the TTL. The
  Redis ledger runs the same step as a Lua script reading Redis's TIME
  (tests/integration/test_shared_redis.py checks the two against one table).
- `gcra` (one token bucket): the Generic Cell Rate Algorithm (ITU-T I.371,
  as in RFC 2697's token bucket seen from its theoretical arrival time): one
  number per bucket, the TAT; taking n tokens moves it by n / rate, giving
  unspent ones back moves it back (never below now).

What each participant *wants* is computed here from the leases the ledger
last answered with (`targets`): the limit is divided by demand (in use plus
queued, reported with each lease) by weighted max-min fairness, whatever is
left over spread evenly, so a participant with a queue asks for more and an
idle one gives back at its next round. In a pool, demand is reported per
member school and weighted by the schools' weights, and the participant's
lease is then cut into per-school caps, so weighted sharing shows across
participants even when each one's part of the pool is smaller than the
number of schools.

`SharedAllotment` is the AllotmentTask (gateway/admission/allotment.py) that
drives all this from the controller's poll(): each tick applies the answer
the ledger gave to the previous round and posts the next round's report; it
never waits for the ledger. While the ledger does not answer (Redis slow or
down: no answer for `stale_after` seconds) it *fails static*: every limit
falls back to this participant's part of it when divided by the
participants seen in the last answer, logged once per outage (one line
when falling back, one when the ledger answers again; the rounds that fail
in between are only counted: `errors`) and counted (`fallback`,
`fallbacks`). After an answer again, leases are rebuilt from
what each participant currently enforces; a ledger that lost its state
(Redis restarted empty) grants nobody more than that fallback part for
`grace` seconds, until every live participant has reported again, so no
limit is exceeded while it is rebuilt.

Times: `now` in claim/gcra is the ledger's clock (Redis TIME, or the
instance's monotonic clock for shared memory); in SharedAllotment it is the
controller's (Unix seconds), used only for intervals.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from gateway.shared.redis import scope

if TYPE_CHECKING:
    from gateway.admission.controller import AdmissionController

log = logging.getLogger("schoolgate.sharing")

BORN = "_born"  # the field of a lease table that says when it was created


# -- the ledger's two steps ---------------------------------------------------


def claim(table: dict[str, str], me: str, now: float, *, limit: int, want: int,
          allot: int, inuse: int, cap: int, spec: str, ttl: float,
          grace: float) -> tuple[int, float, dict[str, str]]:
    """One participant's round on one limit's lease table (mutated in place).

    table: field -> value, a lease per participant as
    ``"held|inuse|expires|spec"`` (ints, ledger-clock seconds, an opaque
    demand spec), and BORN (when the table was made). limit: the configured
    limit (>= 0); want: what the participant asks for; allot: what it
    enforces now; inuse: its slots in use; cap: the most it may get while
    the table is younger than `grace` seconds (rebuilt after a loss).
    Returns (grant, age of the table in seconds, the other live leases).
    The Lua script ROUND in gateway/shared/ledger.py is this function.
    """
    born = float(table[BORN]) if BORN in table else None
    others = 0
    live: dict[str, str] = {}
    for name, value in list(table.items()):
        if name == BORN:
            continue
        held, used, expires, _ = value.split("|", 3)
        if float(expires) <= now:
            del table[name]
        elif name != me:
            others += max(int(held), int(used))
            live[name] = value
    if born is None:
        born = now
        table[BORN] = f"{now:.6f}"
    if now - born < grace:
        want = min(want, cap)
    grant = max(0, min(want, limit - others))
    held = max(grant, allot, inuse)
    table[me] = f"{held}|{inuse}|{now + ttl:.6f}|{spec}"
    return grant, now - born, live


def gcra(tat: float | None, now: float, *, rate: float, burst: float, take: int,
         give: float) -> tuple[float, int]:
    """One participant's round on a token bucket of `rate` tokens/s holding
    at most `burst` tokens, kept as its theoretical arrival time `tat`
    (None: a full bucket). Gives back `give` unspent tokens first, then
    takes up to `take` whole tokens. Returns (new tat, tokens taken).
    The Lua script ROUND in gateway/shared/ledger.py is this function."""
    period = 1.0 / rate
    tat = now if tat is None or tat < now else tat
    if give > 0:
        tat = max(now, tat - give * period)
    available = math.floor((now + burst * period - tat) / period + 1e-9)
    taken = max(0, min(take, available))
    return tat + taken * period, taken


def presence(table: dict[str, str], me: str, now: float, keys: Sequence[str],
             window: float) -> list[int]:
    """One participant's round on a school's client presence table
    (mutated in place): record that `me` saw each of `keys` (client keys)
    until ``now + window``, and answer, per key, how many participants saw
    that client within their last window (me included, so >= 1).

    table: client key -> ``"participant=expires,..."`` (ledger-clock
    seconds); entries whose every participant expired are dropped when
    touched. The Lua script ROUND in gateway/shared/ledger.py is this
    function.
    """
    counts = []
    for key in keys:
        seen = {me: now + window}
        for part in table.get(key, "").split(","):
            name, _, expires = part.rpartition("=")
            if name and name != me and float(expires) > now:
                seen[name] = float(expires)
        table[key] = ",".join(f"{n}={e:.3f}" for n, e in sorted(seen.items()))
        counts.append(len(seen))
    return counts


def sweep_presence(table: dict[str, str], now: float) -> None:
    """Drop the entries of a presence table nobody saw within their window."""
    for key, value in list(table.items()):
        if all(float(p.rpartition("=")[2]) <= now for p in value.split(",") if p):
            del table[key]


def parse_lease(value: str) -> tuple[int, int, float, str]:
    """(held, inuse, expires, spec) of a lease value."""
    held, used, expires, spec = value.split("|", 3)
    return int(held), int(used), float(expires), spec


# -- what each participant wants ------------------------------------------------


def water_fill(limit: float, demands: Sequence[float],
               weights: Sequence[float] | None = None) -> list[float]:
    """Weighted max-min fair division of `limit` by `demands` (>= 0).

    Under contention (demands add up to more than the limit) each gets
    min(demand, weight * level), the level chosen so the parts add up to the
    limit; otherwise each gets its demand and what is left is spread by
    weight, so idle participants keep a little and nothing lies unused.
    """
    n = len(demands)
    if n == 0:
        return []
    w = list(weights) if weights is not None else [1.0] * n
    total_w = sum(w)
    if sum(demands) <= limit:
        spare = limit - sum(demands)
        return [d + spare * wi / total_w for d, wi in zip(demands, w, strict=True)]
    parts = [0.0] * n
    order = sorted(range(n), key=lambda i: demands[i] / w[i])
    left, left_w = float(limit), total_w
    for pos, i in enumerate(order):
        level = left / left_w
        if demands[i] <= w[i] * level:
            parts[i] = demands[i]
        else:
            for j in order[pos:]:
                parts[j] = w[j] * level
            break
        left -= parts[i]
        left_w -= w[i]
    return parts


def apportion(total: int, parts: Sequence[float], offset: int = 0,
              held: Sequence[float] | None = None) -> list[int]:
    """Whole numbers adding up to `total` (>= 0) in proportion to `parts`
    (largest remainders; ties to the part that already holds the most
    beyond its whole share (`held`, what each holds now: a slot stays where
    it is rather than moving back and forth), then to the earliest part
    counting from `offset`, so participants that rotate it do not all
    favour the same part; all equal if every part is 0)."""
    n = len(parts)
    if n == 0:
        return []
    s = sum(parts)
    exact = [total * p / s for p in parts] if s > 0 else [total / n] * n
    whole = [math.floor(x + 1e-9) for x in exact]
    rest = total - sum(whole)
    keep = [0.0] * n if held is None else [h - w for h, w in zip(held, whole, strict=True)]
    order = sorted(range(n), key=lambda i: (round(whole[i] - exact[i], 9), -keep[i],
                                            (i - offset) % n))
    for i in order[:max(rest, 0)]:
        whole[i] += 1
    return whole


def fair_share(limit: int, rank: int, n: int) -> int:
    """Participant `rank` of `n`'s part of `limit`, the parts adding up to
    exactly `limit` (some get 0 when the limit is smaller than n)."""
    if n <= 1:
        return limit
    base, extra = divmod(limit, n)
    return base + (1 if rank < extra else 0)


def targets(limit: int, me: str, mine: dict[str, float], others: dict[str, dict[str, float]],
            weights: dict[str, float] | None = None, offset: int = 0,
            held: dict[str, float] | None = None) -> tuple[int, dict[str, int]]:
    """What `me` should hold of `limit`: (whole slots, whole slots per key).

    mine / others[participant]: demand per key (one key "" for a school's
    own limit; member school names for a pool), weighted by `weights`
    (default 1). The limit is water-filled over every (participant, key)
    and apportioned to whole slots over them all (participants and keys in
    name order, ties rotated by `offset`), so every participant computes
    the same split from the same answer and the per-key parts of all
    participants add up to the fair whole (a weight-3 school gets 3 of 8
    slots in total, not 1 at each of 4 participants). `held`: what each
    participant holds now (its lease), which wins a rounding tie for it
    (see apportion)."""
    entries: list[tuple[str, str]] = []
    demands: list[float] = []
    ws: list[float] = []
    for name in sorted({me, *others}):
        demand = mine if name == me else others[name]
        for k in sorted(demand):
            entries.append((name, k))
            demands.append(max(float(demand[k]), 0.0))
            ws.append((weights or {}).get(k, 1.0))
    parts = water_fill(limit, demands, ws)
    # Whole slots per key first (a school's weighted share of a pool stays
    # whole), then each key's slots over its participants.
    keys = sorted({k for _, k in entries})
    per_key = {k: [i for i, (_, kk) in enumerate(entries) if kk == k] for k in keys}
    key_whole = apportion(limit, [sum(parts[i] for i in per_key[k]) for k in keys], offset)
    my_parts: dict[str, int] = {}
    for k, total in zip(keys, key_whole, strict=True):
        idx = per_key[k]
        keep = None if held is None else [held.get(entries[i][0], 0.0) for i in idx]
        split = apportion(total, [parts[i] for i in idx], offset, keep)
        for i, w in zip(idx, split, strict=True):
            if entries[i][0] == me:
                my_parts[k] = w
    return sum(my_parts.values()), my_parts


# -- the ledger seen from a participant ----------------------------------------


@dataclass
class SlotOp:
    """One limit's claim in a round (see claim())."""

    scope: str
    name: str
    limit: int
    want: int
    allot: int
    inuse: int
    cap: int
    spec: str


@dataclass
class TokenOp:
    """One token bucket's round (see gcra())."""

    scope: str
    name: str
    rate: float
    burst: float
    take: int
    give: float


@dataclass
class ClientOp:
    """One school's client presence round (see presence())."""

    scope: str
    name: str
    keys: list[str]
    window: float


@dataclass
class Report:
    """What a participant posts for one round."""

    me: str
    ttl: float
    grace: float
    ops: list[SlotOp | TokenOp | ClientOp]
    epoch: int = 0


@dataclass
class SlotAnswer:
    grant: int
    age: float
    others: dict[str, str]
    now: float | None = None  # the ledger's clock at the round (None: unknown)


@dataclass
class TokenAnswer:
    taken: int


@dataclass
class ClientAnswer:
    counts: list[int]  # participants that saw each client (op's keys order)


class Ledger(Protocol):
    """Where the leases live. `post` hands over a round's report (at most one
    in flight: post only when `pending` is False); `take_answer` returns
    (report, answers in op order) once it was carried out, (report,
    exception) if it failed, or None while it is still under way."""

    pending: bool

    def post(self, report: Report) -> None: ...

    def take_answer(self) -> tuple[Report, list[Any] | BaseException] | None:
        ...


# -- the allotment task --------------------------------------------------------


@dataclass
class _Limit:
    # "slots", "conns", "queue" (a school's), "pool" (a pool's slots),
    # "class" (a class's max_share of a school's slots), "poolclass" (of a
    # pool's slots)
    kind: str
    index: int  # school or pool index
    scope: str
    name: str
    limit: int
    weights: dict[str, float] | None = None  # pool: member school -> weight
    members: list[int] = field(default_factory=list)  # pool: member school indices
    klass: int = -1  # class kinds: the class index
    base: int = 0  # class kinds: the configured limit the share is of
    active: bool = True  # class kinds: the class has a share now


@dataclass
class _Clients:
    """A school's per-client buckets as this participant shares them."""

    index: int
    scope: str
    rate: float  # the configured client_rate
    burst: float  # the configured client_burst (0: one second's worth, >= 1)
    start: float = 0.0  # the capacity a new bucket starts with here
    # str key -> (original key, participants that saw it when last applied)
    known: dict[str, tuple[Any, int]] = field(default_factory=dict)
    refreshed: float = 0.0  # when the idle known clients were last reported


@dataclass
class _Bucket:
    index: int
    scope: str
    rate: float
    burst: float
    admitted: int = 0  # usage()["admitted"] at the last round
    give: float = 0.0  # tokens to give back at the next round


class SharedAllotment:
    """AllotmentTask whose allotments are leases in a shared Ledger.

    me: this participant's name, unique in the fleet and the same after a
    restart of the same worker ("<instance>/<worker index>": a respawned
    worker's lease replaces its dead predecessor's at once). peers: the
    participants known to exist before any answer (this instance's workers).
    interval: seconds between rounds ([redis] sync_interval). ttl: a lease's
    lifetime without a renewal (seconds, > interval). stale_after: no answer
    this long means fail static (default max(0.5, 5 * interval)). grace: how
    long a new lease table grants no more than the fallback part (default
    max(1.0, 5 * interval), below ttl).

    Read by the metrics: fallback (bool, failing static now), fallbacks
    (times it started to), errors (failed rounds), rounds (answers applied),
    participants (seen in the last answer, this one included).
    """

    def __init__(self, ledger: Ledger, me: str, *, peers: int = 1, interval: float = 0.1,
                 ttl: float = 5.0, stale_after: float | None = None,
                 grace: float | None = None) -> None:
        if not 0 < interval < ttl:
            raise ValueError(f"interval {interval} must be > 0 and below ttl {ttl}")
        self.ledger = ledger
        self.me = me
        self.peers = max(peers, 1)
        self.interval = interval
        self.ttl = ttl
        self.stale_after = max(0.5, 5 * interval) if stale_after is None else stale_after
        self.grace = min(max(1.0, 5 * interval), ttl) if grace is None else grace
        self.fallback = False
        self.fallbacks = 0
        self.errors = 0
        self.last_error: BaseException | None = None  # of the last failed round
        self.rounds = 0
        self.participants = self.peers
        self.controller: AdmissionController | None = None
        self._limits: list[_Limit] = []
        self._buckets: list[_Bucket] = []
        self._clients: list[_Clients] = []
        self._demand: list[int] = []  # slot demand per school at the last report
        # Lease per (scope, name) as enforced now; kept across reconfigures.
        self._allot: dict[tuple[str, str], int] = {}
        # Other participants' leases (from the last answer), per limit.
        self._others: dict[tuple[str, str], dict[str, str]] = {}
        self._caps: dict[int, int] = {}  # school index -> pool cap
        self._applied: dict[tuple[str, int, str], Any] = {}
        self._epoch = 0
        # Participants that renewed a lease within HEARD_WITHIN seconds of
        # the last answer (None: no answer yet).
        self._alive: set[str] | None = None
        self._last_answer: float | None = None
        self._started_at = 0.0

    # -- AllotmentTask -----------------------------------------------------------

    def start(self, controller: AdmissionController, now: float) -> float | None:
        self.controller = controller
        cfg = controller.cfg
        self._started_at = now if self._last_answer is None else self._started_at
        limits: list[_Limit] = []
        for p, pool in enumerate(cfg.pools):
            members = [k for k, s in enumerate(cfg.schools) if s.pool == pool.name]
            limits.append(_Limit("pool", p, scope("pool", pool.name), "slots",
                                 pool.max_inflight,
                                 {cfg.schools[k].name: cfg.schools[k].weight for k in members},
                                 members))
        # A class's max_share (now or in one of its windows) is a limit of
        # its own: share x the configured limit, leased like any other.
        shared_classes = [(k, klass) for k, klass in enumerate(controller.classes)
                          if klass.max_share is not None or klass.windows]
        for p, pool in enumerate(cfg.pools):
            for kk, klass in shared_classes:
                limits.append(_Limit("poolclass", p, scope("pool", pool.name),
                                     f"class:{klass.name}", 0, klass=kk,
                                     base=pool.max_inflight))
        buckets: list[_Bucket] = []
        old_buckets = {b.scope: b for b in self._buckets}
        old_clients = {cl.scope: cl for cl in self._clients}
        clients: list[_Clients] = []
        for k, school in enumerate(cfg.schools):
            sc = scope("school", school.name)
            if school.max_inflight > 0:
                limits.append(_Limit("slots", k, sc, "slots", school.max_inflight))
                for kk, klass in shared_classes:
                    limits.append(_Limit("class", k, sc, f"class:{klass.name}", 0, klass=kk,
                                         base=school.max_inflight))
            if school.client_rate > 0:
                # Buckets carried over by a reload were reset to the config's
                # rate: they are retuned at the next round, as if new.
                old_cl = old_clients.get(sc)
                clients.append(_Clients(k, sc, school.client_rate,
                                        float(school.client_burst
                                              or max(1.0, school.client_rate)),
                                        refreshed=old_cl.refreshed if old_cl else 0.0))
            if school.max_connections > 0:
                limits.append(_Limit("conns", k, sc, "conns", school.max_connections))
            limits.append(_Limit("queue", k, sc, "queue", cfg.admission.max_queue))
            if school.rate > 0:
                burst = float(school.burst or max(1, math.ceil(school.rate)))
                old = old_buckets.get(sc)
                u = controller.usage(k, now)
                if old is None and u["tokens"]:
                    # A new bucket starts full of locally minted tokens: not
                    # the ledger's, so they go (n participants would else
                    # let n bursts through at start).
                    controller.reclaim_tokens(k, u["tokens"], now)
                buckets.append(_Bucket(k, sc, school.rate, burst, admitted=u["admitted"],
                                       give=old.give if old else 0.0))
        self._limits, self._buckets, self._clients = limits, buckets, clients
        keys = {(lim.scope, lim.name) for lim in limits}
        self._allot = {key: v for key, v in self._allot.items() if key in keys}
        self._applied = {}
        self._caps = {}
        # The scheduler took the configured limits whole: set our leases
        # again. A new limit starts at 0 slots until granted, and at the
        # static part for the connection and queue bounds until the first
        # answer (a round trip later), so a school a reload adds turns
        # nobody away meanwhile. A starting worker takes no connection
        # before its first answer anyway (see `ready`).
        for lim in limits:
            key = (lim.scope, lim.name)
            if lim.kind in ("class", "poolclass"):
                lim.active, lim.limit = self._class_limit(lim, now)
            if key not in self._allot:
                self._allot[key] = (fair_share(lim.limit, 0, self.peers)
                                    if lim.kind in ("conns", "queue") else 0)
            self._allot[key] = min(self._allot[key], lim.limit)
        if self.fallback:
            self._apply_fallback(now)
        else:
            self._apply(now, tokens_local=False)
        return self.tick(now)

    def final_report(self, now: float) -> Report:
        """The round of an orderly stop (the worker drained): every lease
        given back at once (ttl 0, so the next round of anyone drops it)
        and the tokens held here returned, so a restarted or replaced
        instance (a new participant name) need not wait out the ttl."""
        c = self.controller
        ops: list[SlotOp | TokenOp | ClientOp] = [
            SlotOp(lim.scope, lim.name, lim.limit, 0, 0, 0, 0, "0")
            for lim in self._limits if lim.active]
        for b in self._buckets:
            held = c.usage(b.index, now)["tokens"] if c is not None else 0.0
            give = c.reclaim_tokens(b.index, held, now) if c is not None and held > 0 else 0.0
            if not self.fallback:
                ops.append(TokenOp(b.scope, "tat", b.rate, b.burst, 0, give + b.give))
        return Report(self.me, 0.0, self.grace, ops, self._epoch)

    @property
    def ready(self) -> bool:
        """An answer was applied, or the ledger is failed over to the static
        part: this participant enforces real leases and may take traffic
        (a worker starts accepting connections only then)."""
        return self._last_answer is not None or self.fallback

    def _class_limit(self, lim: _Limit, now: float) -> tuple[bool, int]:
        """(the class has a share now, its slots fleet-wide: share x the
        configured limit, at least one, as the scheduler counts it)."""
        c = self.controller
        assert c is not None
        share = c.share(lim.klass, now)
        if share is None:
            return False, lim.limit
        return True, max(1, math.floor(share * lim.base + 1e-9))

    def tick(self, now: float) -> float | None:
        answer = self.ledger.take_answer()
        if answer is not None:
            self._on_answer(answer, now)
        last = self._started_at if self._last_answer is None else self._last_answer
        if not self.fallback and now - last > self.stale_after:
            self._enter_fallback(now)
        if not self.ledger.pending:
            self.ledger.post(self._report(now))
            answer = self.ledger.take_answer()  # a local ledger answers at once
            if answer is not None:
                self._on_answer(answer, now)
        return now + self.interval

    # -- rounds ------------------------------------------------------------------

    def _report(self, now: float) -> Report:
        c = self.controller
        assert c is not None
        usage = [c.usage(k, now) for k in range(len(c.cfg.schools))]
        n = self._seen()
        rank = self._rank()
        pool_usage = [c.pool_usage(p, now) for p in range(len(c.cfg.pools))]
        demand = self._demand = self._slot_demand(usage, pool_usage, now)
        ops: list[SlotOp | TokenOp | ClientOp] = []
        for lim in self._limits:
            key = (lim.scope, lim.name)
            others = self._others.get(key, {})
            if lim.kind in ("class", "poolclass"):
                lim.active, lim.limit = self._class_limit(lim, now)
                if not lim.active:
                    # No share now: nothing to lease (the lease expires).
                    continue
                u = (usage if lim.kind == "class" else pool_usage)[lim.index]
                inuse = u["class_inflight"][lim.klass]
                mine = {"": inuse + u["class_queued"][lim.klass]}
                spec = str(mine[""])
                other_demand = {q: {"": _school_demand(v)} for q, v in others.items()}
            elif lim.kind == "pool":
                mine = {c.cfg.schools[k].name: demand[k] for k in lim.members}
                inuse = sum(usage[k]["inflight"] for k in lim.members)
                spec = msgspec.json.encode(mine).decode()
                other_demand = {q: _pool_demand(v) for q, v in others.items()}
            else:
                u = usage[lim.index]
                d = {"slots": demand[lim.index], "conns": u["connections"],
                     "queue": u["queued"]}[lim.kind]
                inuse = {"slots": u["inflight"], "conns": u["connections"],
                         "queue": u["queued"]}[lim.kind]
                mine = {"": d}
                spec = str(d)
                other_demand = {q: {"": _school_demand(v)} for q, v in others.items()}
            # Workers of this instance not heard of yet count as idle
            # participants, so the first to report does not take it all.
            for i in range(self.peers - 1 - len(other_demand)):
                other_demand[f"~{i}"] = {k: 0.0 for k in mine}
            if lim.kind in ("conns", "queue"):
                # These bounds hold exactly (a participant enforces only its
                # lease), so the spare is not all handed out: the parts of
                # one more instance's workers (as many as this one's) stay
                # unleased, for an instance that joins to take at its first
                # round instead of turning clients away until the others
                # have made room.
                for i in range(self.peers):
                    other_demand[f"~join{i}"] = {"": 0.0}
            held = {q: float(_lease_held(v)) for q, v in others.items()}
            held[self.me] = float(self._allot[key])
            want, _ = targets(lim.limit, self.me, mine, other_demand, lim.weights,
                              _rotation(now), held)
            # Lower locally before the ledger hears of it: a lease is given
            # back only once it is no longer enforced here.
            if not self.fallback and want < self._allot[key]:
                self._allot[key] = want
            cap = max(self._allot[key], fair_share(lim.limit, rank, n))
            ops.append(SlotOp(lim.scope, lim.name, lim.limit, want, self._allot[key],
                              inuse, cap, spec))
        if not self.fallback:
            self._apply(now, tokens_local=False)
        for cl in self._clients:
            ops.append(self._client_op(cl, now))
        for b in self._buckets:
            u = usage[b.index]
            spent = u["admitted"] - b.admitted
            b.admitted = u["admitted"]
            held = u["tokens"] if u["tokens"] is not None and math.isfinite(u["tokens"]) else 0.0
            if self.fallback:
                # Locally minted tokens are not the ledger's: nothing to
                # give back, nothing to take until it answers again.
                ops.append(TokenOp(b.scope, "tat", b.rate, b.burst, 0, 0.0))
                continue
            # This participant's fair part of two rounds at the full rate:
            # kept while idle (tokens held here are the shared bucket's,
            # so this only decides where they wait, never how many there
            # are) and asked for at once when traffic starts, so neither a
            # pause nor a start throttles a busy school for the rounds a
            # doubling from one token would take.
            keep = max(1.0, min(b.burst, 2.0 * self.interval * b.rate) / n)
            if spent <= 0 and u["queued"] == 0:
                # Idle: keep that part for the next requests, give the rest back.
                give = max(held - keep, 0.0)
                take = 0 if held >= 1.0 else 1
            else:
                # Enough for two rounds at the pace just seen, plus the queue.
                need = min(b.burst, max(keep, 2.0 * spent + u["queued"]))
                give, take = 0.0, max(0, math.ceil(need - held))
            if give > 0:
                give = c.reclaim_tokens(b.index, give, now)
            ops.append(TokenOp(b.scope, "tat", b.rate, b.burst, take, give + b.give))
            b.give = 0.0
        return Report(self.me, self.ttl, self.grace, ops, self._epoch)

    def _slot_demand(self, usage: list[dict], pool_usage: list[dict], now: float) -> list[int]:
        """Per school, the slots it could use here: in flight plus queued,
        but queued requests of a class at its shared max_share here count
        only as far as its class lease has room (they would hold slots the
        other classes could use while waiting for the class's own)."""
        c = self.controller
        assert c is not None
        room: dict[tuple[int, int], int] = {}
        for lim in self._limits:
            if not lim.active or lim.kind not in ("class", "poolclass"):
                continue
            held = min(self._allot[(lim.scope, lim.name)], lim.limit)
            if lim.kind == "class":
                free = held - usage[lim.index]["class_inflight"][lim.klass]
                schools = [lim.index]
            else:
                free = held - pool_usage[lim.index]["class_inflight"][lim.klass]
                name = c.cfg.pools[lim.index].name
                schools = [k for k, sc in enumerate(c.cfg.schools) if sc.pool == name]
            for k in schools:
                room[(k, lim.klass)] = min(room.get((k, lim.klass), free), max(free, 0))
        out = []
        for k, u in enumerate(usage):
            d = u["inflight"]
            for klass, q in enumerate(u["class_queued"]):
                r = room.get((k, klass))
                d += q if r is None else min(q, r)
            out.append(d)
        return out

    def _client_op(self, cl: _Clients, now: float) -> ClientOp:
        """The clients this participant saw: those whose bucket here is not
        full (every round), and the other known ones still held here (every
        half window, so the others keep counting this participant while a
        bucket of the client is kept here)."""
        c = self.controller
        assert c is not None
        keys: dict[str, Any] = {}
        for key in c.active_clients(cl.index, now)[:MAX_CLIENTS]:
            keys[_client_str(key)] = key
        if now - cl.refreshed >= self.ttl / 2:
            cl.refreshed = now
            for name, (key, n) in list(cl.known.items()):
                if name in keys:
                    continue
                # Still held here? (the scheduler forgets idle buckets)
                if c.set_client_allotment(cl.index, key, now, cl.rate / n,
                                          max(1.0, cl.burst / n)):
                    keys[name] = key
                else:
                    del cl.known[name]
        for name, key in keys.items():
            if name not in cl.known:
                cl.known[name] = (key, 0)  # 0: not yet retuned to its count
        return ClientOp(cl.scope, "clients", list(keys), self.ttl)

    def _on_clients(self, cl: _Clients, op: ClientOp, counts: list[int], now: float) -> None:
        """Each client's bucket here gets 1/n of its rate and burst, n the
        participants that saw it; a bucket made here since the last round
        started at 1/(all participants) and is topped up to its part."""
        c = self.controller
        assert c is not None
        for name, n in zip(op.keys, counts, strict=True):
            entry = cl.known.get(name)
            if entry is None:
                continue
            key, old = entry
            n = max(int(n), 1)
            if n == old:
                continue
            cap = max(1.0, cl.burst / n)
            grant = max(0.0, cap - cl.start) if old == 0 else 0.0
            if c.set_client_allotment(cl.index, key, now, cl.rate / n, cap, grant):
                cl.known[name] = (key, n)
            else:
                del cl.known[name]

    def _on_answer(self, answer: tuple[Report, Any], now: float) -> None:
        report, result = answer
        if isinstance(result, BaseException):
            # Counted (the metric schoolgate_shared_limits_errors_total),
            # not logged one by one: an outage is logged once, when this
            # participant falls back (with the last error) and when it
            # recovers, whatever number of rounds fail in between.
            self.errors += 1
            self.last_error = result
            log.debug("shared limits: ledger round failed: %r", result)
            # Tokens given back in a failed round were lost with it: the
            # ledger's bucket refills them anyway.
            return
        c = self.controller
        assert c is not None
        self._last_answer = now
        self.rounds += 1
        limits = {(lim.scope, lim.name): lim for lim in self._limits}
        buckets = {b.scope: b for b in self._buckets}
        clients = {cl.scope: cl for cl in self._clients}
        alive = {self.me}
        heard = max(HEARD_WITHIN, 5 * self.interval)
        for op, ans in zip(report.ops, result, strict=True):
            if isinstance(op, ClientOp):
                cl = clients.get(op.scope)
                if cl is not None:
                    self._on_clients(cl, op, ans.counts, now)
                continue
            if isinstance(op, SlotOp):
                key = (op.scope, op.name)
                self._others[key] = ans.others
                for name, value in ans.others.items():
                    # Renewed within `heard` of the round (its lease's
                    # expiry is renewal + ttl): a participant that died or
                    # stopped still holds its lease until the ttl, but no
                    # longer counts in the fallback's division.
                    if ans.now is None or parse_lease(value)[2] > ans.now + report.ttl - heard:
                        alive.add(name)
                if key in limits and report.epoch == self._epoch:
                    self._allot[key] = min(ans.grant, limits[key].limit)
            else:
                b = buckets.get(op.scope)
                if b is None or report.epoch != self._epoch or self.fallback:
                    if b is not None and ans.taken:
                        b.give += ans.taken
                    continue
                if ans.taken:
                    took = c.grant_tokens(b.index, float(ans.taken), now)
                    b.give += ans.taken - took
        self._alive = alive
        self.participants = self._seen()
        if self.fallback:
            if report.epoch == self._epoch:
                self._leave_fallback(now)
            return
        if report.epoch == self._epoch:
            self._apply(now, tokens_local=False)

    # -- fail static ---------------------------------------------------------------

    def _enter_fallback(self, now: float) -> None:
        self.fallback = True
        self.fallbacks += 1
        self._epoch += 1
        err = self.last_error
        log.warning("shared limits: the ledger has not answered for %.1f s%s; each limit "
                    "falls back to 1/%d of it here until it does", self.stale_after,
                    f" (last error: {err!r})" if err is not None else "", self._seen())
        self._apply_fallback(now)

    def _apply_fallback(self, now: float) -> None:
        n, rank = self._seen(), self._rank()
        for lim in self._limits:
            self._allot[(lim.scope, lim.name)] = fair_share(lim.limit, rank, n)
        self._apply(now, tokens_local=True, caps=False)

    def _leave_fallback(self, now: float) -> None:
        self.fallback = False
        self.last_error = None
        log.warning("shared limits: the ledger answers again; leases rebuilt")
        c = self.controller
        assert c is not None
        for b in self._buckets:
            # Tokens minted here while failing static go; the ledger's come.
            u = c.usage(b.index, now)
            if u["tokens"]:
                c.reclaim_tokens(b.index, u["tokens"], now)
            b.admitted = u["admitted"]
        self._apply(now, tokens_local=False)

    def _names(self) -> set[str]:
        """The participants heard of in the last answer's heartbeats."""
        if self._alive is not None:
            return self._alive | {self.me}
        names = {self.me}
        for others in self._others.values():
            names.update(others)
        return names

    def _seen(self) -> int:
        return max(len(self._names()), self.peers)

    def _rank(self) -> int:
        return sorted(self._names()).index(self.me)

    # -- allotments ----------------------------------------------------------------

    def _apply(self, now: float, tokens_local: bool, caps: bool = True) -> None:
        """Set every allotment from the leases: lowered ones first, then
        raised ones (a raise admits at once)."""
        c = self.controller
        assert c is not None
        cfg = c.cfg
        wanted: dict[tuple[str, int, Any], Any] = {}
        pool_caps: dict[int, int] = {}
        school_lim: dict[tuple[int, str], int] = {}
        pool_class: dict[tuple[int, int], int] = {}
        for lim in self._limits:
            held = self._allot[(lim.scope, lim.name)]
            if lim.kind in ("class", "poolclass"):
                # No share now: the scheduler sets no class limit anyway.
                value = min(held, lim.limit) if lim.active else None
                wanted[(lim.kind, lim.index, lim.klass)] = value
                if lim.kind == "poolclass" and value is not None:
                    pool_class[(lim.index, lim.klass)] = value
            elif lim.kind == "pool":
                wanted[("pool", lim.index, "max_inflight")] = held
                if caps and lim.members:
                    pool_caps.update(self._pool_caps(lim, held, now))
            else:
                # Queue and connection bounds too are exactly the lease: the
                # leases add up to at most the limit (see _report for how a
                # joiner still gets its part at once).
                school_lim[(lim.index, lim.kind)] = held
        # A pool member without a limit of its own: the pool's class lease
        # bounds the class there (not its share of this worker's pool part).
        for (p, kk), value in pool_class.items():
            for k, school in enumerate(cfg.schools):
                if (school.pool == cfg.pools[p].name and school.max_inflight == 0):
                    wanted[("class", k, kk)] = value
        for k in range(len(cfg.schools)):
            slots = school_lim.get((k, "slots"))
            cap = pool_caps.get(k)
            if slots is None and cap is None:
                inflight = None
            elif slots is None or cap is None:
                inflight = slots if cap is None else cap
            else:
                inflight = min(slots, cap)
            wanted[("school", k, "max_inflight")] = inflight
            wanted[("school", k, "max_connections")] = school_lim.get((k, "conns"))
            wanted[("school", k, "max_queue")] = school_lim.get((k, "queue"), 0)
        n, rank = self._seen(), self._rank()
        for cl in self._clients:
            # A client first seen here may be seen by every participant:
            # its bucket starts at that part, topped up once the ledger
            # says how many saw it (_on_clients).
            cl.start = max(1.0, cl.burst / n)
            wanted[("school", cl.index, "client_rate")] = cl.rate / n
            wanted[("school", cl.index, "client_burst")] = cl.start
        for b in self._buckets:
            if tokens_local:
                wanted[("school", b.index, "rate")] = b.rate / n
                wanted[("school", b.index, "burst")] = max(1, fair_share(int(b.burst), rank, n))
            else:
                wanted[("school", b.index, "rate")] = 0.0
                wanted[("school", b.index, "burst")] = int(b.burst)
        lower = {k: v for k, v in wanted.items() if _lower(v, self._applied.get(k, _UNSET))}
        raise_ = {k: v for k, v in wanted.items()
                  if k not in lower and self._applied.get(k, _UNSET) != v}
        for changes in (lower, raise_):
            for (kind, index, name), value in sorted(changes.items(), key=_pools_first):
                if kind == "pool":
                    c.set_pool_allotment(index, now, value)
                elif kind == "poolclass":
                    c.set_pool_class_allotment(index, name, now, value)
                elif kind == "class":
                    c.set_class_allotment(index, name, now, value)
                else:
                    c.set_allotment(index, now, **{name: value})
                self._applied[(kind, index, name)] = value

    def _pool_caps(self, lim: _Limit, held: int, now: float) -> dict[int, int]:
        """This participant's pool lease cut into caps per member school by
        the weighted fair division of the whole pool (see targets())."""
        c = self.controller
        assert c is not None
        cfg = c.cfg
        mine = {}
        for k in lim.members:
            u = c.usage(k, now)
            mine[cfg.schools[k].name] = (self._demand[k] if k < len(self._demand)
                                         else u["inflight"] + u["queued"])
        leases = self._others.get((lim.scope, lim.name), {})
        others = {q: _pool_demand(v) for q, v in leases.items()}
        _, parts = targets(lim.limit, self.me, mine, others, lim.weights, _rotation(now))
        names = [cfg.schools[k].name for k in lim.members]
        # The lease may be below the target (not granted yet): cut it in
        # the same proportions.
        whole = apportion(held, [float(parts.get(name, 0)) for name in names])
        return dict(zip(lim.members, whole, strict=True))


_UNSET = object()


def _rotation(now: float) -> int:
    """Which part wins a rounding tie: the same at every participant (the
    clocks agree to the second) and changing each second, so no school or
    participant is favoured for long."""
    return int(now)


def _lower(new: Any, old: Any) -> bool:
    """Does setting `new` over `old` lower the allotment (None: no limit)?
    Unset means the scheduler still has the configured limit, which no
    allotment here exceeds."""
    if old is _UNSET:
        return True
    if new == old or new is None:
        return False
    return old is None or new < old


def _pools_first(item: tuple[tuple[str, int, Any], Any]) -> tuple[int, int, str]:
    (kind, index, name), _ = item
    return (0 if kind in ("pool", "poolclass") else 1, index, f"{kind}:{name}")


# A participant whose newest lease was renewed longer ago than this (or 5
# rounds, if longer) before an answer no longer counts as alive (seconds).
HEARD_WITHIN = 1.0

# Client keys reported per school and round at most (a flood of distinct
# addresses must not make a round unbounded; the rest wait a round).
MAX_CLIENTS = 512


def _client_str(key: Any) -> str:
    """A client key as the ledger stores it (the scheduler's keys are the
    client address as bytes)."""
    return key.decode("latin-1") if isinstance(key, bytes) else str(key)


def _lease_held(value: str) -> int:
    try:
        return parse_lease(value)[0]
    except ValueError:
        return 0


def _school_demand(value: str) -> float:
    try:
        return float(parse_lease(value)[3])
    except ValueError:
        return 0.0


def _pool_demand(value: str) -> dict[str, float]:
    try:
        demand = msgspec.json.decode(parse_lease(value)[3])
    except (ValueError, msgspec.DecodeError):
        return {}
    if not isinstance(demand, dict):
        return {}
    return {str(k): float(v) for k, v in demand.items() if isinstance(v, int | float)}


__all__ = [
    "BORN", "Ledger", "Report", "SharedAllotment", "SlotAnswer", "SlotOp", "TokenAnswer",
    "TokenOp", "apportion", "claim", "fair_share", "gcra", "parse_lease", "targets",
    "water_fill",
]
