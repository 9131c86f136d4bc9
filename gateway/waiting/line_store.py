"""Where the waiting lines live: this worker, shared memory, or Redis.

Every store answers one call, `exchange(batches, now)`: apply each school's
batch of changes (gateway.waiting.line.apply ops, by the store's `rules`)
atomically, and return the school's line as it is afterwards (a `Line` the
worker keeps as its cache). A worker calls it off the request path
(gateway/waiting/line_view.py), but for the changes the local and
shared-memory stores take inline (a ticket's spend among them, so that
the workers of one instance refuse a replay exactly).

- `LocalLineStore`: the lines in this process (one worker and no shared
  region, or the fallback while Redis is away).
- `ShmLineStore`: the lines of one instance in the "line" segment of the
  shared memory region the supervisor made before it forked the workers
  (gateway/shared/region.py, `inherited()`): the lines msgpack-encoded
  (one encoded value per school, so an exchange decodes only the schools it
  touches), under the segment's POSIX record lock, which the kernel drops
  if its holder dies.
- `RedisLineStore`: the lines of every instance naming the same Redis. One
  Lua script per school and exchange applies the batch with Redis's own
  clock (TIME, so instances' clocks do not matter) and returns the line.
  A school's keys are `<prefix>{school:<name>}:line:<part>`
  (gateway.shared.redis.key): the hash tag keeps them in one Redis Cluster
  slot with the school's shared limits, so the script may touch them all.
  Spent tickets are part of the replayed operation log; each answer carries only
  the spends since the worker's last exchange, which the store adds to what
  it knew (so a replay at another instance is refused once that instance
  has synced: within `[redis] sync_interval`).
"""

from __future__ import annotations

import logging
import math
import os
import struct
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.shared.redis import key
from gateway.waiting.line import DEFAULT_RULES, Line, Rules, apply

if TYPE_CHECKING:
    from gateway.config.schema import Redis
    from gateway.shared.region import Segment

log = logging.getLogger("schoolgate.line")

# Idle lines vanish from Redis this long after their last change.
REDIS_EXPIRE = 24 * 3600


class LocalLineStore:
    """The lines of this process; exchange hands out the lines themselves."""

    shared = False

    def __init__(self, capacity: int = 100_000, rules: Rules = DEFAULT_RULES) -> None:
        self.capacity = capacity
        self.rules = rules
        self.lines: dict[str, Line] = {}

    def exchange(self, batches: dict[str, list[tuple]], now: float,
                 results: dict[str, list[Any]] | None = None) -> dict[str, Line]:
        """Apply and return the lines; `results` (if given) receives each
        school's op results."""
        out = {}
        for school, ops in batches.items():
            line = self.lines.get(school)
            if line is None:
                line = self.lines[school] = Line(self.capacity)
            answers = apply(line, ops, now, self.rules)
            if results is not None:
                results[school] = answers
            out[school] = line
        return out


_ENCODE = msgspec.msgpack.Encoder()
_DECODE = msgspec.msgpack.Decoder()

# The "line" segment's header: magic, then head (next record's sequence
# number and byte offset in the ring), tail (oldest record kept), and the
# snapshot (the lines after every record before snap_seq; its length; 1 if
# there is one; which half of the snapshot room holds it).
_LOG_HEAD = struct.Struct("<8sQQQQQQQQQ")
_MAGIC = b"SGLINE01"
_LOG_START = 128  # header bytes reserved at the segment's start
_LEN = struct.Struct("<I")
_WRAP = 0xFFFFFFFF  # "the ring goes on at its start" (a record that did not fit)


class ShmLineStore:
    """The lines of one instance, in a shared memory Segment (the "line"
    segment of the instance's region: gateway.shared.region), as an
    operation log every worker replays.

    The segment holds a ring of records, each one exchange's batches
    (msgpack: [now, grace, go_grace, keep, {school: ops}]), numbered in
    the order they were written under the segment's lock, and a snapshot
    (every school's Line.dump()) of the lines after the records before it.
    Every worker keeps its own copy of every line (`lines`): an exchange
    takes the lock, applies the records written since its last one (the
    other workers' changes, by the same rules with the same `now`, so every
    copy is the same line), applies its own batches (their answers are
    exact: nobody else changes the line meanwhile), and appends them as
    one record. Cost: O(records since this worker's last exchange + its
    own ops), never O(line); only when the ring is full does the writer
    store a snapshot (O(line), once per ring of records), so that the
    oldest records may be overwritten: the ring always keeps every record
    after the snapshot, and a worker that fell that far behind (or a new
    one) starts again from the snapshot.

    A batch too large for the ring (a quarter of it) is refused: nothing of
    it is applied (its answers are None, `full` says so) and the lines stay
    as they were; the next exchange that fits clears `full`. Lines too
    large for the snapshot room (half of what the ring leaves: snapshots
    take turns in two halves, so one torn by a writer killed mid-write is
    never the published one) are logged, and the oldest records dropped
    all the same (a worker that lags then starts from what is left).
    """

    shared = True

    def __init__(self, segment: Segment, capacity: int = 100_000,
                 rules: Rules = DEFAULT_RULES) -> None:
        self.segment = segment
        self.capacity = capacity
        self.rules = rules
        self.full = False
        # This worker's copy of every line, as of record `_seq` (None: not
        # read yet) at ring offset `_pos`.
        self.lines: dict[str, Line] = {}
        self._seq: int | None = None
        self._pos = 0
        size = segment.size - _LOG_START
        self._ring = max(256, size // 8)  # ring bytes; the rest holds the snapshot
        # Two halves: a new snapshot is written into the half the header
        # does not name, and named only once whole, so a worker killed
        # while writing one leaves the published snapshot intact.
        self._snap_room = (size - self._ring) // 2
        self._published = 0  # the half the header named when the lock was taken
        if self._snap_room < 256:
            raise ValueError(f"segment {segment.name!r} too small for a line log")
        self._warned = False

    # -- the segment's bytes -----------------------------------------------------

    def _head(self) -> list[Any]:
        seg = self.segment
        head = list(_LOG_HEAD.unpack_from(seg.region.map, seg.offset))
        if head[0] != _MAGIC:  # a zeroed region: nothing written yet
            head = [_MAGIC, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        return head

    def _put_head(self, head: list[Any]) -> None:
        _LOG_HEAD.pack_into(self.segment.region.map, self.segment.offset, *head)

    def _at(self, pos: int) -> int:
        """The ring offset at which the record at `pos` really starts (a
        wrap marker, or no room for one, sends it to the ring's start)."""
        if pos + _LEN.size > self._ring or \
                _LEN.unpack_from(self.segment.region.map, self._base + pos)[0] == _WRAP:
            return 0
        return pos

    @property
    def _base(self) -> int:
        return self.segment.offset + _LOG_START

    def _read(self, pos: int) -> tuple[bytes, int]:
        """(payload, offset after it) of the record at `pos`."""
        pos = self._at(pos)
        start = self._base + pos
        (n,) = _LEN.unpack_from(self.segment.region.map, start)
        return self.segment.region.map[start + _LEN.size:start + _LEN.size + n], \
            pos + _LEN.size + n

    # -- replaying -------------------------------------------------------------------

    def _line(self, school: str) -> Line:
        line = self.lines.get(school)
        if line is None:
            line = self.lines[school] = Line(self.capacity)
        return line

    def _replay(self, payload: bytes) -> None:
        now, grace, go_grace, keep, batches = _DECODE.decode(payload)
        rules = Rules(grace, go_grace, keep)
        for school, ops in batches.items():
            apply(self._line(school), ops, now, rules)

    def _catch_up(self, head: list[Any]) -> None:
        """Apply the records written since this worker last looked."""
        _, head_seq, _, tail_seq, tail_pos, snap_seq, snap_pos, snap_len, has_snap, half = head
        if self._seq is None or self._seq < tail_seq or self._seq > head_seq:
            if has_snap:
                start = self._base + self._ring + half * self._snap_room
                data = _DECODE.decode(self.segment.region.map[start:start + snap_len])
                self.lines = {school: Line.load(d, self.capacity) for school, d in data.items()}
                self._seq, self._pos = snap_seq, snap_pos
            else:
                if tail_seq and not self._warned:
                    self._warned = True
                    log.warning("the shared waiting line lost its history (no snapshot fitted "
                                "the segment): this worker starts from what is left")
                self.lines = {}
                self._seq, self._pos = tail_seq, tail_pos
        while self._seq < head_seq:
            payload, self._pos = self._read(self._pos)
            self._replay(payload)
            self._seq += 1

    # -- writing ---------------------------------------------------------------------

    def _snapshot(self, head: list[Any]) -> bool:
        """Store this worker's lines (caught up: the lines after every
        record) as the snapshot; False if it does not fit."""
        data = _ENCODE.encode({school: line.dump() for school, line in self.lines.items()})
        if len(data) > self._snap_room:
            return False
        # Never the published half: the header names the new one only at
        # _put_head, after every byte of it is written.
        half = 1 - self._published
        start = self._base + self._ring + half * self._snap_room
        self.segment.region.map[start:start + len(data)] = data
        head[5], head[6], head[7], head[8], head[9] = head[1], head[2], len(data), 1, half
        return True

    def _make_room(self, head: list[Any], start: int, end: int) -> None:
        """Drop the oldest records lying in ring bytes [start, end); records
        after the snapshot only once a new snapshot is stored."""
        tried = False
        while head[3] < head[1]:
            tail = self._at(head[4])
            if not start <= tail < end:
                head[4] = tail
                return
            if (not head[8] or head[3] >= head[5]) and not tried:
                tried = True
                if not self._snapshot(head):
                    # Keeping the records would stop the line for good: drop
                    # them; a worker that lags starts from what is left.
                    head[8] = 0
                    log.warning("the shared waiting lines outgrew their segment's snapshot "
                                "room (%d bytes)", self._snap_room)
            _, head[4] = self._read(tail)
            head[3] += 1
        head[4] = head[2]

    def _append(self, head: list[Any], payload: bytes) -> bool:
        size = _LEN.size + len(payload)
        if size > self._ring // 4:
            return False
        pos = head[2]
        if pos + size > self._ring:
            self._make_room(head, pos, self._ring)
            if pos + _LEN.size <= self._ring:
                _LEN.pack_into(self.segment.region.map, self._base + pos, _WRAP)
            pos = head[2] = 0
            if head[3] == head[1]:
                head[4] = 0
        self._make_room(head, pos, pos + size)
        if head[3] == head[1]:
            head[4] = pos  # an empty ring starts with this record
        start = self._base + pos
        _LEN.pack_into(self.segment.region.map, start, len(payload))
        self.segment.region.map[start + _LEN.size:start + size] = payload
        head[1] += 1
        head[2] = pos + size
        return True

    def exchange(self, batches: dict[str, list[tuple]], now: float,
                 results: dict[str, list[Any]] | None = None) -> dict[str, Line]:
        """As LocalLineStore.exchange, under the segment's lock; returns
        every line this worker knows (the other workers' changes included)."""
        rules = self.rules
        payload = _ENCODE.encode([now, rules.grace, rules.go_grace, rules.keep, batches])
        with self.segment.locked():
            head = self._head()
            self._published = head[9]
            self._catch_up(head)
            if self._append(head, payload):
                self._put_head(head)
                self.full = False
                for school, ops in batches.items():
                    answers = apply(self._line(school), ops, now, rules)
                    if results is not None:
                        results[school] = answers
                self._seq, self._pos = head[1], head[2]
            else:
                self.full = True
                if results is not None:
                    for school, ops in batches.items():
                        results[school] = [None] * len(ops)
        return dict(self.lines)


# -- Redis ----------------------------------------------------------------------------------

# A school's line in Redis is an operation log, as in the shared memory
# segment: KEYS meta (hash: head = the next record's number, epoch = when
# the log began, Redis time, snap = the snapshot's record number, claim =
# when a worker was asked for a snapshot), log (list: one record per
# exchange, "<Redis time>|<msgpack [grace, go_grace, keep, ops]>", numbered
# tail..head-1 where tail = head - LLEN), snap (string: msgpack Line.dump()
# of the line after every record before `snap`).
# ARGV: since (the caller's next record number, -1: none), epoch (the
# caller's, "" if none), payload ("" : nothing to append), threshold
# (records after the snapshot before one is asked for), log_max (records
# kept at most, whatever the snapshot), expire (seconds).
# Returns {epoch, own record number (-1: none appended), first record
# number returned, snapshot ("" : replay from the first record on a line
# known to the caller), 1 if the caller should store a snapshot, lost (1:
# records were trimmed before any snapshot covered them), records...}.
LOG_SCRIPT = r"""
local t = redis.call('TIME')
local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
local m, lg, sn = KEYS[1], KEYS[2], KEYS[3]
local since, known, payload = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local threshold, log_max, expire = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local head = tonumber(redis.call('HGET', m, 'head'))
local epoch = redis.call('HGET', m, 'epoch')
if not head or not epoch then
  -- A new line, or one Redis lost: a new epoch, so no worker replays onto a
  -- copy of the old one.
  redis.call('DEL', lg, sn)
  head, epoch = 0, now
  redis.call('HSET', m, 'head', 0, 'epoch', epoch, 'snap', -1, 'claim', 0)
end
local own = -1
if payload ~= '' then
  redis.call('RPUSH', lg, now .. '|' .. payload)
  own = head
  head = head + 1
  redis.call('HSET', m, 'head', head)
end
local len = redis.call('LLEN', lg)
local lost = 0
if len > log_max then
  redis.call('LTRIM', lg, len - log_max, -1)
  len = log_max
end
local tail = head - len
local snap_at = tonumber(redis.call('HGET', m, 'snap')) or -1
if snap_at < tail and tail > 0 then lost = 1 end
local snap = ''
if epoch ~= known or since < tail or since > head then
  since = tail
  if snap_at >= 0 then
    local s = redis.call('GET', sn)
    if s then
      snap = s
      if snap_at > tail then since = snap_at end
    end
  end
end
local want = 0
if own >= 0 and head - math.max(snap_at, 0) >= threshold then
  local claim = tonumber(redis.call('HGET', m, 'claim')) or 0
  if tonumber(now) - claim > 5 then
    redis.call('HSET', m, 'claim', now)
    want = 1
  end
end
local out = {epoch, own, since, snap, want, lost}
if since < head then
  local recs = redis.call('LRANGE', lg, since - tail, -1)
  for i = 1, #recs do out[#out + 1] = recs[i] end
end
for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, expire) end
return out
"""

# KEYS as LOG_SCRIPT; ARGV: epoch, the snapshot's record number, the
# snapshot, expire. Stores it if it is newer than the one kept (and the log
# is still that epoch's), then drops the records before the previous
# snapshot (a worker a little behind replays; only one that fell further
# behind loads the snapshot). Returns 1 if stored.
SNAP_SCRIPT = r"""
local m, lg, sn = KEYS[1], KEYS[2], KEYS[3]
local epoch, at = ARGV[1], tonumber(ARGV[2])
if redis.call('HGET', m, 'epoch') ~= epoch then return 0 end
local head = tonumber(redis.call('HGET', m, 'head')) or 0
local prev = tonumber(redis.call('HGET', m, 'snap')) or -1
if at <= prev or at > head then return 0 end
redis.call('SET', sn, ARGV[3])
redis.call('HSET', m, 'snap', at, 'claim', 0)
local tail = head - redis.call('LLEN', lg)
if prev > tail then redis.call('LTRIM', lg, prev - tail, -1) end
for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, tonumber(ARGV[4])) end
return 1
"""

LINE_PARTS = ("meta", "log", "snap")
# Records after the snapshot before a new one is asked for (at least; the
# line's length if larger, so a snapshot's O(line) cost is spread over as
# many records), and the most records kept whatever the snapshot.
SNAP_EVERY = 1_000
LOG_MAX = 200_000


def line_keys(prefix: str, school: str) -> list[str]:
    """The keys of a school's line (meta, log, snap):
    ``<prefix>{school:<name>}:line:<part>``, in the school's hash-tag scope
    (gateway.shared.redis.key), beside its shared limits."""
    return [key(prefix, school, "line:" + part) for part in LINE_PARTS]


class _Replica:
    """One school's line as this worker has replayed it from the log."""

    __slots__ = ("epoch", "line", "next")

    def __init__(self, capacity: int) -> None:
        self.epoch = b""
        self.next = -1  # the next record's number (-1: nothing read yet)
        self.line = Line(capacity)


class RedisLineStore:
    """The lines of every instance naming the same Redis (async: `aexchange`),
    as an operation log per school that every worker replays (as
    ShmLineStore does in shared memory).

    `client` is a redis.asyncio.Redis. An exchange runs LOG_SCRIPT once per
    school, pipelined: the script appends this worker's batch as one record
    stamped with Redis's clock (TIME: instances' clocks do not matter) and
    answers the records written since this worker's last exchange, its own
    among them. Replaying them in their order, by the rules of
    gateway.waiting.line, every worker's copy is the same line, and the
    answers of its own batch (the numbers drawn, the spends, call_next) are
    exact: the log's order decides, under Redis's single thread, who came
    first. Cost per exchange: O(records since the last + own ops) in Redis,
    on the wire and here, never O(line); a worker that starts late or fell
    behind the kept records loads the snapshot (O(line)), which one worker
    at a time is asked to store once max(SNAP_EVERY, line length) records
    have followed the last one.

    The lines handed out are this store's copies: callers read them and
    must not change them (LineView keeps its provisional changes apart).
    """

    shared = True

    def __init__(self, client: Any, prefix: str, capacity: int = 100_000,
                 rules: Rules = DEFAULT_RULES, log_max: int = LOG_MAX,
                 snap_every: int = SNAP_EVERY) -> None:
        self.client = client
        self.prefix = prefix
        self.capacity = capacity
        self.rules = rules
        self.log_max = log_max
        self.snap_every = snap_every
        self.script = client.register_script(LOG_SCRIPT)
        self.snap_script = client.register_script(SNAP_SCRIPT)
        self.replicas: dict[str, _Replica] = {}
        self._warned = False

    def reset(self) -> None:
        """Forget the copies (they were changed outside the log, e.g. as the
        fallback line): the next exchange loads the snapshot."""
        self.replicas = {}

    def _replica(self, school: str) -> _Replica:
        rep = self.replicas.get(school)
        if rep is None:
            rep = self.replicas[school] = _Replica(self.capacity)
        return rep

    async def aexchange(self, batches: dict[str, list[tuple]], now: float,
                        results: dict[str, list[Any]] | None = None,
                        ) -> tuple[dict[str, Line], float]:
        """Append each school's batch and replay; returns ({school: Line},
        Redis's clock minus `now`); `results` (if given) receives each
        school's op results (exact, as the log ordered them). Raises what
        redis-py raises (the pipeline is closed either way)."""
        rules = self.rules
        schools = list(batches)
        async with self.client.pipeline(transaction=False) as pipe:
            for school in schools:
                rep = self._replica(school)
                ops = batches[school]
                payload = _ENCODE.encode([rules.grace, rules.go_grace, rules.keep, ops]) \
                    if ops else b""
                # Queued on the pipeline (EVALSHA, loaded again if Redis lost it).
                await self.script(keys=line_keys(self.prefix, school),
                                  args=[rep.next, rep.epoch, payload,
                                        max(self.snap_every, len(rep.line)), self.log_max,
                                        max(REDIS_EXPIRE, math.ceil(rules.keep))],
                                  client=pipe)
            answers = await pipe.execute()
        out: dict[str, Line] = {}
        offset = 0.0
        snaps = []
        for school, answer in zip(schools, answers, strict=True):
            epoch, own, first, snap, want, lost, *records = answer
            own, first = int(own), int(first)
            rep = self._replica(school)
            if bytes(epoch) != rep.epoch or first != rep.next:
                # New here, behind the kept records, or a new log: start
                # from the snapshot (or the line's beginning).
                rep.line = Line.load(_DECODE.decode(snap), self.capacity) if snap \
                    else Line(self.capacity)
                rep.epoch = bytes(epoch)
                if int(lost) and not self._warned:
                    self._warned = True
                    log.warning("the shared waiting line of %s lost records no snapshot "
                                "covered (more than %d): this worker starts from what is left",
                                school, self.log_max)
            seq = first
            redis_now = None
            for rec in records:
                stamp, _, payload = bytes(rec).partition(b"|")
                at = float(stamp)
                grace, go_grace, keep, ops = _DECODE.decode(payload)
                answers_ = apply(rep.line, [tuple(op) for op in ops], at,
                                 Rules(grace, go_grace, keep))
                if seq == own:
                    redis_now = at
                    if results is not None:
                        results[school] = answers_
                seq += 1
            rep.next = seq
            if own < 0 and results is not None:
                results[school] = []
            if redis_now is not None:
                offset = redis_now - now
            if int(want):
                snaps.append((school, rep))
            out[school] = rep.line
        for school, rep in snaps:
            # O(line), once per max(SNAP_EVERY, line length) records.
            await self.snap_script(keys=line_keys(self.prefix, school),
                                   args=[rep.epoch, rep.next, _ENCODE.encode(rep.line.dump()),
                                         max(REDIS_EXPIRE, math.ceil(rules.keep))])
        return out, offset


def fleet_secret(cfg: Redis, timeout: float = 2.0) -> bytes | None:
    """The ticket key every instance naming this Redis shares, made by the
    first to ask (SET NX) when the config sets no `[admission] secret`;
    None if Redis cannot be reached (the caller then keeps its own)."""
    import redis

    try:
        client = redis.Redis.from_url(cfg.url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        key = f"{cfg.prefix}ticket-secret"
        client.set(key, os.urandom(32).hex(), nx=True)
        value = client.get(key)
        client.close()
    except (redis.RedisError, OSError):
        return None
    return bytes(value) if value else None


__all__ = [
    "LOG_SCRIPT",
    "SNAP_SCRIPT",
    "LocalLineStore",
    "RedisLineStore",
    "ShmLineStore",
    "fleet_secret",
    "line_keys",
]
