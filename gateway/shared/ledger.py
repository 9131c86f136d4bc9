"""The two ledgers of shared limits: shared memory and Redis.

Both carry out a participant's round (gateway.admission.sharing.Report)
with the same two steps, `claim` for a lease table and `gcra` for a token
bucket, and answer with SlotAnswer / TokenAnswer in op order:

- `LocalLedger`: the workers of one instance, in a segment of the shared
  memory region (gateway/shared/region.py) the supervisor made before
  forking. The state is one msgpack value ({"t": lease tables, "b": token
  TATs}) read, changed and stored under the segment's lock; the clock is
  CLOCK_MONOTONIC, which all processes of one machine share. A round runs
  in take_answer(), with a non-blocking lock: a busy segment leaves the
  round pending for the next tick, so nothing ever waits.
- `RedisLedger`: every instance naming the same Redis. The steps run in
  the Lua script ROUND, reading Redis's own TIME (no clock skew between
  instances); the keys of one school share a hash tag ({school:<name>}),
  so each scope's ops are one EVALSHA, and all scopes of a round go in one
  pipeline. The I/O runs in `run()`, a task of the worker's event loop;
  post() and take_answer() only hand reports and answers over, so the
  controller's tick never waits on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.admission.sharing import (
    ClientAnswer,
    ClientOp,
    Report,
    SlotAnswer,
    SlotOp,
    TokenAnswer,
    claim,
    gcra,
    presence,
    sweep_presence,
)
from gateway.shared.redis import scoped_key
from gateway.shared.region import Busy, Segment

log = logging.getLogger("schoolgate.ledger")

Answer = tuple[Report, list[SlotAnswer | TokenAnswer | ClientAnswer] | BaseException]



class LocalLedger:
    """Leases in shared memory between the workers of one instance."""

    def __init__(self, segment: Segment, clock: Callable[[], float] = time.monotonic) -> None:
        self.segment = segment
        self.clock = clock
        self.pending = False
        self._report: Report | None = None

    def post(self, report: Report) -> None:
        self._report = report
        self.pending = True

    def take_answer(self) -> Answer | None:
        report = self._report
        if report is None:
            return None
        try:
            with self.segment.locked(blocking=False):
                state = self.segment.load() or {}
                answers = run_round(state, report, self.clock())
                self.segment.store(state)
        except Busy:
            return None  # another worker's round: ours runs at the next tick
        except (ValueError, OSError) as err:
            answers_or_error: Any = err
        else:
            answers_or_error = answers
        self._report = None
        self.pending = False
        return report, answers_or_error


def run_round(state: dict, report: Report,
              now: float) -> list[SlotAnswer | TokenAnswer | ClientAnswer]:
    """Carry out `report` on a LocalLedger's state (mutated) at `now`."""
    tables = state.setdefault("t", {})
    tats = state.setdefault("b", {})
    seen = state.setdefault("c", {})
    answers: list[SlotAnswer | TokenAnswer | ClientAnswer] = []
    for op in report.ops:
        k = scoped_key("", op.scope, op.name)
        if isinstance(op, ClientOp):
            table = seen.setdefault(k, {})
            answers.append(ClientAnswer(presence(table, report.me, now, op.keys, op.window)))
            # The whole table now and then (the Redis twin samples a few
            # entries per call instead).
            if now >= table.get("", 0.0):
                table.pop("", None)
                sweep_presence(table, now)
                table[""] = now + op.window  # type: ignore[assignment]
            continue
        if isinstance(op, SlotOp):
            table = tables.setdefault(k, {})
            grant, age, others = claim(
                table, report.me, now, limit=op.limit, want=op.want, allot=op.allot,
                inuse=op.inuse, cap=op.cap, spec=op.spec, ttl=report.ttl, grace=report.grace)
            answers.append(SlotAnswer(grant, age, others, now))
        else:
            tat, taken = gcra(tats.get(k), now, rate=op.rate, burst=op.burst,
                              take=op.take, give=op.give)
            tats[k] = tat
            answers.append(TokenAnswer(taken))
    # Tables nobody renews any more (a school removed from the config).
    for k in [k for k, t in tables.items() if len(t) <= 1 and k not in
              {scoped_key("", op.scope, op.name) for op in report.ops}]:
        del tables[k]
    return answers


# The Lua twin of sharing.claim, sharing.gcra and sharing.presence; ARGV: me,
# ttl, grace, then per key "s" limit want allot inuse cap spec, "t" rate
# burst take give, or "c" window n key1 .. keyn.
ROUND = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local me, ttl, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local a = 4
for i, key in ipairs(KEYS) do
  if ARGV[a] == 's' then
    local limit, want = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local allot, inuse = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
    local cap, spec = tonumber(ARGV[a + 5]), ARGV[a + 6]
    a = a + 7
    local flat = redis.call('HGETALL', key)
    local born = nil
    local others = 0
    local live = {}
    for j = 1, #flat, 2 do
      local f, v = flat[j], flat[j + 1]
      if f == '_born' then
        born = tonumber(v)
      else
        local held, used, expires = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|')
        if tonumber(expires) <= now then
          redis.call('HDEL', key, f)
        elseif f ~= me then
          others = others + math.max(tonumber(held), tonumber(used))
          live[#live + 1] = f
          live[#live + 1] = v
        end
      end
    end
    if born == nil then
      born = now
      redis.call('HSET', key, '_born', string.format('%.6f', now))
    end
    if now - born < grace then want = math.min(want, cap) end
    local grant = math.max(0, math.min(want, limit - others))
    local held = math.max(grant, allot, inuse)
    redis.call('HSET', key, me, string.format('%d|%d|%.6f|%s', held, inuse, now + ttl, spec))
    redis.call('PEXPIRE', key, math.ceil(math.max(ttl, 1) * 3000))
    out[i] = {grant, string.format('%.6f', now - born), live, string.format('%.6f', now)}
  elseif ARGV[a] == 't' then
    local rate, burst = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local take, give = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
    a = a + 5
    local period = 1 / rate
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    if give > 0 then tat = math.max(now, tat - give * period) end
    local available = math.floor((now + burst * period - tat) / period + 1e-9)
    local taken = math.max(0, math.min(take, available))
    tat = tat + taken * period
    redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
    out[i] = {taken}
  elseif ARGV[a] == 'c' then
    local window, n = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local counts = {}
    for j = 1, n do
      local client = ARGV[a + 2 + j]
      local old = redis.call('HGET', key, client)
      local seen = {}
      local names = {me}
      seen[me] = now + window
      if old then
        for name, expires in string.gmatch(old, '([^,]+)=([^,=]+)') do
          if name ~= me and tonumber(expires) > now then
            seen[name] = tonumber(expires)
            names[#names + 1] = name
          end
        end
      end
      table.sort(names)
      local parts = {}
      for _, name in ipairs(names) do
        parts[#parts + 1] = name .. '=' .. string.format('%.3f', seen[name])
      end
      redis.call('HSET', key, client, table.concat(parts, ','))
      counts[j] = #names
    end
    a = a + 3 + n
    -- A few entries nobody renews any more go at each call.
    local sample = redis.call('HRANDFIELD', key, 4)
    for _, client in ipairs(sample) do
      local value = redis.call('HGET', key, client)
      local live = false
      if value then
        for _, expires in string.gmatch(value, '([^,]+)=([^,=]+)') do
          if tonumber(expires) > now then live = true end
        end
        if not live then redis.call('HDEL', key, client) end
      end
    end
    redis.call('PEXPIRE', key, math.ceil(window * 3000))
    out[i] = counts
  end
end
return out
"""


class RedisLedger:
    """Leases in Redis, for every instance naming it. `client` is the
    worker's redis.asyncio client (gateway.shared.redis.client); `prefix`
    [redis] prefix. Start `run()` as a task of the worker's loop and cancel
    it (or call close()) at shutdown."""

    def __init__(self, client: Any, prefix: str, timeout: float = 2.0) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.pending = False
        self._report: Report | None = None
        self._answer: Answer | None = None
        self._wake = asyncio.Event()
        self._script = client.register_script(ROUND)
        self.failures = 0  # rounds that failed (Redis down, slow, refused)

    def post(self, report: Report) -> None:
        self._report = report
        self.pending = True
        self._wake.set()

    def take_answer(self) -> Answer | None:
        answer, self._answer = self._answer, None
        if answer is not None:
            self.pending = False
        return answer

    async def run(self) -> None:
        """Carry out each posted round, one at a time, forever."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            report = self._report
            if report is None:
                continue
            self._report = None
            try:
                result: Any = await asyncio.wait_for(self.round(report), self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure: the round is lost, fail static
                self.failures += 1
                result = err
            self._answer = (report, result)

    async def round(self, report: Report) -> list[SlotAnswer | TokenAnswer | ClientAnswer]:
        """One round trip: one script call per scope, pipelined."""
        by_scope: dict[str, list[int]] = {}
        for i, op in enumerate(report.ops):
            by_scope.setdefault(op.scope, []).append(i)
        if not by_scope:
            return []
        # `async with`: the pipeline gives its connection back to the pool
        # whichever way the round ends (refused, reset, cancelled by the
        # timeout). Without it a round failing in load_scripts' SCRIPT
        # EXISTS kept the connection, and the pipeline's __del__ reported
        # "Unclosed Pipeline client" through the loop's exception handler.
        async with self.client.pipeline(transaction=False) as pipe:
            for sc, indices in by_scope.items():
                keys: list[str] = []
                args: list[Any] = [report.me, report.ttl, report.grace]
                for i in indices:
                    op = report.ops[i]
                    keys.append(scoped_key(self.prefix, sc, op.name))
                    if isinstance(op, SlotOp):
                        args += ["s", op.limit, op.want, op.allot, op.inuse, op.cap, op.spec]
                    elif isinstance(op, ClientOp):
                        args += ["c", repr(op.window), len(op.keys), *op.keys]
                    else:
                        args += ["t", repr(op.rate), repr(op.burst), op.take, repr(op.give)]
                await self._script(keys=keys, args=args, client=pipe)
            replies = await pipe.execute()
        answers: list[SlotAnswer | TokenAnswer | ClientAnswer | None] = [None] * len(report.ops)
        for (_, indices), reply in zip(by_scope.items(), replies, strict=True):
            for i, item in zip(indices, reply, strict=True):
                if isinstance(report.ops[i], ClientOp):
                    answers[i] = ClientAnswer([int(n) for n in item])
                elif isinstance(report.ops[i], SlotOp):
                    flat = item[2]
                    others = {_str(flat[j]): _str(flat[j + 1]) for j in range(0, len(flat), 2)}
                    answers[i] = SlotAnswer(int(item[0]), float(item[1]), others,
                                            float(item[3]))
                else:
                    answers[i] = TokenAnswer(int(item[0]))
        return answers  # type: ignore[return-value]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value




async def give_back(task: Any, timeout: float = 1.0) -> None:
    """An orderly stop's last round (SharedAllotment.final_report): this
    participant's leases and tokens go back now rather than at the ttl.
    Best effort: a ledger that does not answer within `timeout` seconds
    keeps them until the ttl, as after a kill."""
    report = task.final_report(time.time())
    ledger = task.ledger
    try:
        if isinstance(ledger, RedisLedger):
            await asyncio.wait_for(ledger.round(report), timeout)
        elif isinstance(ledger, LocalLedger):
            with ledger.segment.locked(blocking=True):
                state = ledger.segment.load() or {}
                run_round(state, report, ledger.clock())
                ledger.segment.store(state)
    except Exception as err:  # the ttl still frees them
        log.info("shared limits: leases not given back at stop (%s); they expire", err)


def shared_allotment(cfg: Any, index: int, region: Any = None,
                     instance: str | None = None) -> tuple[Any, RedisLedger | None]:
    """The allotment task for worker `index` under `cfg`, and the Redis
    ledger whose run() the worker must start (None without Redis).

    - `[redis] url` set: a SharedAllotment on a RedisLedger (participant
      "<instance>/<index>", instance default "<host>:<supervisor pid>").
    - no URL, several workers and the supervisor's `region`: a
      SharedAllotment on a LocalLedger in its "ledger" segment.
    - otherwise: None and None (the caller keeps StaticAllotment: one
      worker enforces the limits whole).
    """
    import os
    import socket

    from gateway.admission.sharing import SharedAllotment

    red = cfg.redis
    workers = cfg.server.workers
    if red.url:
        from gateway.shared.redis import client

        ledger = RedisLedger(client(red), red.prefix)
        if instance is None:
            instance = f"{socket.gethostname()}:{os.getppid()}"
        task = SharedAllotment(ledger, f"{instance}/{index}", peers=workers,
                               interval=red.sync_interval, ttl=red.lease_ttl)
        return task, ledger
    if workers > 1 and region is not None:
        task = SharedAllotment(LocalLedger(region.segment("ledger")), str(index),
                               peers=workers, interval=red.sync_interval, ttl=red.lease_ttl)
        return task, None
    return None, None


__all__ = ["ROUND", "LocalLedger", "RedisLedger", "give_back", "run_round",
           "shared_allotment"]
