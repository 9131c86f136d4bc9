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
  Spent tickets are a sorted set by spending time; each answer carries only
  the spends since the worker's last exchange, which the store adds to what
  it knew (so a replay at another instance is refused once that instance
  has synced: within `[redis] sync_interval`).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.shared.redis import key
from gateway.waiting.line import DEFAULT_RULES, REPORT_TTL, STALE, WINDOW, Line, Rules, apply

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
# there is one).
_LOG_HEAD = struct.Struct("<8sQQQQQQQQ")
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
    large for the snapshot room are logged, and the oldest records dropped
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
        self._snap_room = size - self._ring
        if self._snap_room < 256:
            raise ValueError(f"segment {segment.name!r} too small for a line log")
        self._warned = False

    # -- the segment's bytes -----------------------------------------------------

    def _head(self) -> list[Any]:
        seg = self.segment
        head = list(_LOG_HEAD.unpack_from(seg.region.map, seg.offset))
        if head[0] != _MAGIC:  # a zeroed region: nothing written yet
            head = [_MAGIC, 0, 0, 0, 0, 0, 0, 0, 0]
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
        _, head_seq, _, tail_seq, tail_pos, snap_seq, snap_pos, snap_len, has_snap = head
        if self._seq is None or self._seq < tail_seq or self._seq > head_seq:
            if has_snap:
                start = self._base + self._ring
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
        start = self._base + self._ring
        self.segment.region.map[start:start + len(data)] = data
        head[5], head[6], head[7], head[8] = head[1], head[2], len(data), 1
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

# KEYS: meta (last, serving, since), entries (vid hex -> fields),
# admissions (second -> count), queues (worker -> [at, [[urgency, n]...],
# free]),
# spent (sorted set: vid hex scored by when it was spent), busy (busy
# second -> 1).
# ARGV: ops (JSON), capacity, grace, go_grace, window, report_ttl, expire,
# keep, since, stale.
# The rules are those of gateway.waiting.line (sweep, then the ops in order);
# returns the line as JSON: [last, serving, since, entries, admissions,
# queues, now, spent (those spent after ARGV since: [[vid, at]...]), busy].
LINE_SCRIPT = r"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local m, e, a, q = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ops = cjson.decode(ARGV[1])
local capacity, grace, go_grace = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local window, report_ttl, expire = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local keep, spent_since, stale = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local sp, bz = KEYS[5], KEYS[6]
redis.call('ZREMRANGEBYSCORE', sp, '-inf', string.format('%.17g', now - keep))
local function parse(s)
  local f = {}
  for w in string.gmatch(s, '%S+') do f[#f + 1] = tonumber(w) end
  return f
end
local function fmt(f)
  return string.format('%d %.17g %.17g %.17g %d %d %d', f[1], f[2], f[3], f[4], f[5], f[6],
                       f[7] or 0)
end
local since = tonumber(redis.call('HGET', m, 'since'))
if not since then
  since = now
  redis.call('HSET', m, 'since', string.format('%.17g', now))
end
local serving = tonumber(redis.call('HGET', m, 'serving')) or 0
local entries, count = {}, 0
local all = redis.call('HGETALL', e)
for i = 1, #all, 2 do
  local f = parse(all[i + 1])
  if (f[4] > 0 and now - f[4] > go_grace) or (f[4] == 0 and now - f[3] > grace) then
    redis.call('HDEL', e, all[i])
  else
    entries[all[i]] = f
    count = count + 1
  end
end
for _, op in ipairs(ops) do
  local kind, vid = op[1], op[2]
  local f = entries[vid]
  if kind == 'draw' then
    if f then
      f[3] = now
      if f[4] > 0 then f[4] = now end
      redis.call('HSET', e, vid, fmt(f))
    elseif count < capacity then
      local n = redis.call('HINCRBY', m, 'last', 1)
      f = {n, tonumber(op[3]), now, 0, 0, 0, 0}
      entries[vid] = f
      count = count + 1
      redis.call('HSET', e, vid, fmt(f))
    end
  elseif kind == 'seen' then
    if f then f[3] = now; f[7] = 1; redis.call('HSET', e, vid, fmt(f)) end
  elseif kind == 'call' then
    if f and f[4] == 0 then
      f[4] = now
      f[3] = now
      if f[1] > serving then
        serving = f[1]
        redis.call('HSET', m, 'serving', serving)
      end
      redis.call('HSET', e, vid, fmt(f))
    end
  elseif kind == 'leave' then
    if f then
      entries[vid] = nil
      count = count - 1
      redis.call('HDEL', e, vid)
    end
  elseif kind == 'shown' then
    if f then f[5] = op[3]; f[6] = op[4]; redis.call('HSET', e, vid, fmt(f)) end
  elseif kind == 'spend' then
    if not redis.call('ZSCORE', sp, vid) and redis.call('ZCARD', sp) < capacity then
      redis.call('ZADD', sp, string.format('%.17g', now), vid)
    end
  elseif kind == 'unspend' then
    redis.call('ZREM', sp, vid)
  elseif kind == 'record' then
    if op[2] > 0 then redis.call('HINCRBY', a, math.floor(now), op[2]) end
  elseif kind == 'call_next' then
    local called, waiting = 0, {}
    for v, g in pairs(entries) do
      if g[4] > 0 then called = called + 1
      elseif (g[7] or 0) > 0 or now - g[3] <= stale then waiting[#waiting + 1] = {v, g} end
    end
    table.sort(waiting, function(x, y)
      if x[2][2] ~= y[2][2] then return x[2][2] > y[2][2] end
      return x[2][1] < y[2][1]
    end)
    local i = 1
    while called < tonumber(op[2]) and i <= #waiting do
      local v, g = waiting[i][1], waiting[i][2]
      g[4] = now
      g[3] = now
      if g[1] > serving then
        serving = g[1]
        redis.call('HSET', m, 'serving', serving)
      end
      redis.call('HSET', e, v, fmt(g))
      called = called + 1
      i = i + 1
    end
  elseif kind == 'queue' then
    redis.call('HSET', q, op[2], cjson.encode({now, op[3], op[4] or 0}))
    local queued = false
    for _, un in ipairs(op[3]) do if un[2] > 0 then queued = true end end
    if queued or count > 0 then redis.call('HSET', bz, math.floor(now), 1) end
  end
end
local oldest = math.floor(now - window)
local adm, admissions = redis.call('HGETALL', a), {}
for i = 1, #adm, 2 do
  local s = tonumber(adm[i])
  if s < oldest then redis.call('HDEL', a, adm[i])
  else admissions[#admissions + 1] = {s, tonumber(adm[i + 1])} end
end
local bs, busy = redis.call('HKEYS', bz), {}
for i = 1, #bs do
  local s = tonumber(bs[i])
  if s < oldest then redis.call('HDEL', bz, bs[i]) else busy[#busy + 1] = s end
end
local qs, queues = redis.call('HGETALL', q), {}
for i = 1, #qs, 2 do
  local v = cjson.decode(qs[i + 1])
  if now - v[1] > report_ttl then redis.call('HDEL', q, qs[i])
  else queues[#queues + 1] = {qs[i], v[1], v[2], v[3] or 0} end
end
local list = {}
for vid, f in pairs(entries) do
  list[#list + 1] = {vid, f[1], f[2], f[3], f[4], f[5], f[6], f[7] or 0}
end
local spent, sl = {}, redis.call('ZRANGEBYSCORE', sp, '(' .. string.format('%.17g', spent_since),
                                  '+inf', 'WITHSCORES')
for i = 1, #sl, 2 do spent[#spent + 1] = {sl[i], sl[i + 1]} end
for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, math.max(expire, math.ceil(keep))) end
local last = tonumber(redis.call('HGET', m, 'last')) or 0
return cjson.encode({last, serving, string.format('%.17g', since), list, admissions, queues,
                     string.format('%.17g', now), spent, busy})
"""


LINE_PARTS = ("meta", "entries", "admissions", "queues", "spent", "busy")


def line_keys(prefix: str, school: str) -> list[str]:
    """The six keys of a school's line (meta, entries, admissions, queues,
    spent, busy): ``<prefix>{school:<name>}:line:<part>``, in the school's
    hash-tag scope (gateway.shared.redis.key), beside its shared limits."""
    return [key(prefix, school, "line:" + part) for part in LINE_PARTS]


def encode_ops(ops: list[tuple]) -> str:
    """A batch as the script's JSON: visitor ids in hex."""
    out = []
    for op in ops:
        kind = op[0]
        if kind in ("draw", "seen", "call", "leave", "shown", "spend", "unspend"):
            out.append([kind, op[1].hex(), *op[2:]])
        elif kind == "queue":
            out.append([kind, op[1], [[u, n] for u, n in op[2].items()],
                        op[3] if len(op) > 3 else 0])
        else:
            out.append(list(op))
    return json.dumps(out)


def decode_line(text: bytes | str, capacity: int = 100_000) -> tuple[Line, float]:
    """The script's answer as (Line, Redis time); the line's `spent` holds
    the spends the answer carried (those since the exchange's `since`)."""
    last, serving, since, entries, admissions, queues, now, *rest = json.loads(text)

    def items(x: Any) -> list:  # cjson writes an empty array as {}
        return x if isinstance(x, list) else []

    data = [last, serving, float(since),
            [[bytes.fromhex(v), *rest_] for v, *rest_ in items(entries)],
            items(admissions),
            [[w, at, items(qq), *rest_] for w, at, qq, *rest_ in items(queues)],
            [[bytes.fromhex(v), float(at)] for v, at in items(rest[0] if rest else [])],
            items(rest[1] if len(rest) > 1 else [])]
    return Line.load(data, capacity), float(now)


def script_args(ops: list[tuple], capacity: int, rules: Rules = DEFAULT_RULES,
                since: float = 0.0) -> list[Any]:
    """ARGV of LINE_SCRIPT; `since`: the Redis time after which spends are
    returned (0: all still kept)."""
    return [encode_ops(ops), capacity, rules.grace, rules.go_grace, WINDOW, REPORT_TTL,
            REDIS_EXPIRE, rules.keep, since, STALE]


class RedisLineStore:
    """The lines of every instance naming the same Redis (async: `aexchange`).

    `client` is a redis.asyncio.Redis. Each exchange runs the script once per
    school, pipelined, and returns the lines and the offset of Redis's clock
    from `now` (so the worker measures rates on Redis's time). The spends a
    school's answers carried are kept here (`spent`, until `rules.keep` has
    passed) and handed on with each line.
    """

    shared = True

    def __init__(self, client: Any, prefix: str, capacity: int = 100_000,
                 rules: Rules = DEFAULT_RULES) -> None:
        self.client = client
        self.prefix = prefix
        self.capacity = capacity
        self.rules = rules
        self.script = client.register_script(LINE_SCRIPT)
        # School -> the Redis time of its last answer, and the spends known.
        self.synced: dict[str, float] = {}
        self.spent: dict[str, dict[bytes, float]] = {}

    async def aexchange(self, batches: dict[str, list[tuple]],
                        now: float) -> tuple[dict[str, Line], float]:
        pipe = self.client.pipeline(transaction=False)
        schools = list(batches)
        for school in schools:
            # Queued on the pipeline (EVALSHA, loaded again if Redis lost it).
            # A second's overlap: a spend made as the last answer was read.
            since = max(self.synced.get(school, 0.0) - 1.0, 0.0)
            await self.script(keys=line_keys(self.prefix, school),
                              args=script_args(batches[school], self.capacity, self.rules,
                                               since), client=pipe)
        answers = await pipe.execute()
        out: dict[str, Line] = {}
        offset = 0.0
        for school, text in zip(schools, answers, strict=True):
            line, redis_now = decode_line(text, self.capacity)
            known = self.spent.setdefault(school, {})
            known.update(line.spent)
            for vid in [v for v, at in known.items() if redis_now - at >= self.rules.keep]:
                del known[vid]
            line.spent = known
            self.synced[school] = redis_now
            out[school] = line
            offset = redis_now - now
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
    "LINE_SCRIPT",
    "LocalLineStore",
    "RedisLineStore",
    "ShmLineStore",
    "decode_line",
    "fleet_secret",
    "line_keys",
    "script_args",
]
