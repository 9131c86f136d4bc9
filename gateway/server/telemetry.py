"""Telemetry of the whole gateway: worker snapshots, their sum, and the
Prometheus collector that publishes it.

Why this shape: every worker counts its own requests in C arrays
(gateway._native.stats, added to at exchange end, no Python call per
request). Once every PUBLISH_INTERVAL seconds a worker sends a Snapshot of
its counters and gauges over a Unix socket to the one admin process
(gateway/server/admin.py), framed as a 4-byte big-endian length and
msgpack (msgspec), and one at once whenever the admin process asks (a
4-byte request number; the Snapshot answering it carries the number): a
scrape asks every worker, so it describes the gateway as it is, not as it
was up to PUBLISH_INTERVAL ago. The admin process keeps the last Snapshot of each live
worker; when a worker's connection ends (it exited, or was killed and
restarted) its counters are folded into a base that stays, so a counter
summed over all workers never goes backwards. What a killed worker counted
after its last Snapshot (at most PUBLISH_INTERVAL's worth) is lost; a
worker that exits normally sends a last Snapshot first. Gauges (in flight,
queued, upstream up) come from the live workers only.

Labels are bounded by the config: schools, classes and upstreams by name,
status codes (at most gateway._native.stats.MAX_CODES of them); never client
addresses or paths.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from gateway._native.stats import DURATION_BUCKETS, PAGE_429, PAGE_WAITING, WAIT_BUCKETS
from gateway.proxy.spool import RESPONSE_STATS, STATS

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.server.worker import Worker

log = logging.getLogger("schoolgate.telemetry")

# Seconds between two snapshots of a worker.
PUBLISH_INTERVAL = 0.5
# Largest frame the admin process accepts (a snapshot of hundreds of
# schools is tens of kilobytes).
MAX_FRAME = 16 << 20
_LEN = struct.Struct("!I")


class LineState(msgspec.Struct, array_like=True):
    """One school's waiting line as a worker's copy has it
    (Admission.waiting_lines). The line is shared by every worker (and
    instance), so the admin process takes one copy, the freshest, never a
    sum."""

    synced_at: float          # Unix seconds: when the copy was last brought up to date
    waiting: dict[str, int]   # tickets waiting (a waiting page, polling), by class name
    called: int               # tickets called whose visitor is not back yet
    now_serving: int          # highest number called
    last_ticket: int          # highest number drawn
    estimated_wait: float | None  # seconds a newcomer would wait (None: nothing measured)
    admission_rate: float     # the fleet's admissions per second
    shared: bool              # False while the shared store is away (a local line)


class SchoolState(msgspec.Struct, array_like=True):
    """One school at one worker: gauges, the worker's allotment of each
    limit (its lease when limits are shared: it moves with demand, so it is
    never the configured limit; None: no limit), per-class queues, counters
    since the worker started."""

    name: str
    inflight: int
    max_inflight: int | None
    connections: int
    max_connections: int | None
    max_queue: int | None
    queued: dict[str, int]
    admitted: dict[str, int]
    rejected: dict[str, int]
    cancelled: int
    admission_rate: float     # admissions per second, measured
    estimated_wait: float     # seconds a request arriving now would wait
    line: LineState | None = None  # the school's waiting line


class PoolState(msgspec.Struct, array_like=True):
    """One pool at one worker: requests in flight over its member schools
    and the worker's allotment of the pool's max_inflight."""

    name: str
    inflight: int
    allotment: int


class SharedState(msgspec.Struct, array_like=True):
    """The worker's shared-limits participant (gateway.admission.sharing
    SharedAllotment): where the leases are kept and whether it is failing
    static."""

    store: str                # "redis" (across instances) or "memory" (this instance's workers)
    fallback: bool            # failing static now: the ledger has not answered
    fallbacks: int            # times it started to (since the worker started)
    errors: int               # ledger rounds that failed
    participants: int         # participants seen in the last answer, this one included


class UpstreamState(msgspec.Struct, array_like=True):
    addr: str
    up: bool
    inflight: int
    connect_failures: int
    retries: int
    timeouts: int


class Snapshot(msgspec.Struct, array_like=True):
    """What a worker publishes: its identity, counters since it started
    (cumulative) and gauges now."""

    worker: int
    pid: int
    answers: int              # the admin's request number it answers (0: periodic)
    admission: bool
    connections_total: int
    connections_open: int
    local_responses: dict[int, int]
    requests: list[tuple[str, str, int, int]]
    duration: list[tuple[str, str, list[int], float]]
    wait: list[tuple[str, str, list[int], float]]
    pages: list[tuple[str, str, int, int]]
    schools: list[SchoolState]
    upstreams: list[UpstreamState]
    spools: list[int]         # request bodies, bytes, files; responses, bytes, files
    pools: list[PoolState] = []
    shared: SharedState | None = None  # None: limits not shared (one worker)


_encoder = msgspec.msgpack.Encoder()


def snapshot(worker: Worker, answers: int = 0) -> Snapshot:
    """The worker's Snapshot now (answering request number `answers`)."""
    app = worker.app
    apps = (app, *worker.retired)
    admission = app.admission
    controller = admission.controller
    now = time.time()
    schools = []
    lines = admission.waiting_lines() if admission.enabled else {}
    for i, name in enumerate(controller.school_names):
        use = controller.usage(i, now)
        st = controller.stats(i, now)
        queued = st["queued_total"]
        w = lines.get(name)
        line = None if w is None else LineState(
            synced_at=w["synced_at"], waiting=w["waiting"], called=w["called"],
            now_serving=w["now_serving"], last_ticket=w["last_ticket"],
            estimated_wait=w["eta"], admission_rate=w["admission_rate"], shared=w["shared"])
        schools.append(SchoolState(
            name=name, inflight=use["inflight"], max_inflight=use["max_inflight"],
            connections=use["connections"], max_connections=use["max_connections"],
            max_queue=use["max_queue"], queued=st["queued"], admitted=st["admitted"],
            rejected=st["rejected"], cancelled=st["cancelled"],
            admission_rate=st["admission_rate"],
            estimated_wait=controller.queue_eta(i, queued + 1, now) if queued else 0.0,
            line=line,
        ))
    pools = []
    for p, pool in enumerate(app.cfg.pools):
        pu = controller.pool_usage(p, now)
        pools.append(PoolState(name=pool.name, inflight=pu["inflight"],
                               allotment=pu["max_inflight"]))
    task = worker.allotment
    shared = None
    if task is not None:
        from gateway.shared.ledger import RedisLedger
        shared = SharedState(store="redis" if isinstance(task.ledger, RedisLedger) else "memory",
                             fallback=task.fallback, fallbacks=task.fallbacks,
                             errors=task.errors, participants=task.participants)
    mono = time.monotonic()
    upstreams = [UpstreamState(addr=addr, up=bool(s.available(mono)), inflight=s.inflight,
                               connect_failures=s.connect_failures, retries=s.retries,
                               timeouts=s.timeouts)
                 for addr, s in app.servers.items()]
    exported = admission.core.stats.export()
    m = app.metrics
    return Snapshot(
        worker=worker.index, pid=os.getpid(), answers=answers, admission=admission.enabled,
        connections_total=m.connections_total,
        connections_open=sum(len(a.connections) for a in apps),
        local_responses=dict(m.responses_local),
        requests=exported["requests"], duration=exported["duration"], wait=exported["wait"],
        pages=exported["pages"], schools=schools, upstreams=upstreams,
        spools=[STATS.bodies, STATS.bytes, STATS.files,
                RESPONSE_STATS.bodies, RESPONSE_STATS.bytes, RESPONSE_STATS.files],
        pools=pools, shared=shared,
    )


def frame(snap: Snapshot) -> bytes:
    body = _encoder.encode(snap)
    return _LEN.pack(len(body)) + body


def stats_listener() -> socket.socket:
    """The admin process's Unix socket for snapshots, made by the supervisor
    before it forks anyone: an abstract name (Linux; no file to clean up),
    random so that two gateways on one host never meet."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(f"\0schoolgate-{os.getpid()}-{os.urandom(8).hex()}")
    sock.listen(64)
    return sock


class Publisher:
    """A worker's side: a Snapshot every PUBLISH_INTERVAL to `addr`,
    reconnecting (the admin process may restart) without ever blocking the
    worker's loop for long: a snapshot not taken in time is dropped."""

    def __init__(self, worker: Worker, addr: str) -> None:
        self.worker = worker
        self.addr = addr
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            await self.publish()
            await asyncio.sleep(PUBLISH_INTERVAL)

    async def _answer(self, reader: asyncio.StreamReader) -> None:
        """The admin process's requests: a Snapshot at once for each."""
        try:
            while True:
                data = await reader.readexactly(4)
                await self.publish(_LEN.unpack(data)[0])
        except (asyncio.IncompleteReadError, OSError):
            self.close()

    async def publish(self, answers: int = 0) -> None:
        """Send one Snapshot now (connecting first if need be); errors only
        drop the connection, to be made again next time."""
        try:
            if self.writer is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await asyncio.get_running_loop().sock_connect(sock, self.addr)
                except BaseException:
                    sock.close()
                    raise
                reader, self.writer = await asyncio.open_unix_connection(sock=sock)
                self.reading = asyncio.get_running_loop().create_task(self._answer(reader))
            writer = self.writer
            if writer.transport.get_write_buffer_size() > MAX_FRAME:
                return  # the admin process is not reading: skip, do not pile up
            writer.write(frame(snapshot(self.worker, answers)))
            await asyncio.wait_for(writer.drain(), 5.0)
        except (OSError, TimeoutError) as err:
            log.debug("worker %d: snapshot not sent: %s", self.worker.index, err)
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.reading is not None and self.reading is not asyncio.current_task():
            self.reading.cancel()
        self.reading = None


# -- the admin side -----------------------------------------------------------

Key = tuple  # (metric, *label values)


def counters(snap: Snapshot) -> dict[Key, float | list[float]]:
    """The cumulative part of a Snapshot, flat: a number, or for a
    histogram the per-bucket counts followed by the sum."""
    out: dict[Key, float | list[float]] = {("connections",): snap.connections_total}
    for status, n in snap.local_responses.items():
        out[("local", str(status))] = n
    for school, klass, code, n in snap.requests:
        out[("requests", school, klass, str(code))] = n
    for school, klass, buckets, total in snap.duration:
        out[("duration", school, klass)] = [*buckets, total]
    for school, klass, buckets, total in snap.wait:
        out[("wait", school, klass)] = [*buckets, total]
    for school, klass, kind, n in snap.pages:
        out[("pages", school, klass, str(kind))] = n
    for s in snap.schools:
        for klass, n in s.admitted.items():
            out[("admitted", s.name, klass)] = n
        for klass, n in s.rejected.items():
            out[("rejected", s.name, klass)] = n
        out[("cancelled", s.name)] = s.cancelled
    if snap.shared is not None:
        out[("shared_fallbacks",)] = snap.shared.fallbacks
        out[("shared_errors",)] = snap.shared.errors
    for u in snap.upstreams:
        out[("connect_failures", u.addr)] = u.connect_failures
        out[("retries", u.addr)] = u.retries
        out[("timeouts", u.addr)] = u.timeouts
    return out


def _add(into: dict[Key, float | list[float]], more: dict[Key, float | list[float]]) -> None:
    for key, value in more.items():
        have = into.get(key)
        if have is None:
            into[key] = list(value) if isinstance(value, list) else value
        elif isinstance(value, list):
            for i, v in enumerate(value):
                have[i] += v  # type: ignore[index]
        else:
            into[key] = have + value  # type: ignore[operator]


class Aggregate:
    """The sum over the gateway's workers, live and gone (see the module's
    docstring); the admin process's counts of reloads. `cfg`: the config
    the admin process loaded (it reloads on SIGHUP, as the workers do): the
    configured limits come from it, never from the workers' allotments."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg
        self.live: dict[int, Snapshot] = {}   # connection id -> last snapshot
        self.base: dict[Key, float | list[float]] = {}
        self.workers_gone = 0
        self.generation = 1
        self.reloads = {"success": 0, "failure": 0}

    def update(self, conn: int, snap: Snapshot) -> None:
        self.live[conn] = snap

    def gone(self, conn: int) -> None:
        """A worker's connection ended: its counters stay in the sum."""
        snap = self.live.pop(conn, None)
        if snap is not None:
            _add(self.base, counters(snap))
            self.workers_gone += 1

    def totals(self) -> dict[Key, float | list[float]]:
        out: dict[Key, float | list[float]] = {}
        _add(out, self.base)
        for snap in self.live.values():
            _add(out, counters(snap))
        return out

    def limits(self, school: str) -> dict[str, int | None]:
        """The school's configured limits (None: none, or no config known):
        max_inflight, max_connections, max_queue ([admission] max_queue,
        per school)."""
        cfg = self.cfg
        found = None if cfg is None else next(
            (s for s in cfg.schools if s.name == school), None)
        if found is None or cfg is None:
            return {"max_inflight": None, "max_connections": None, "max_queue": None}
        return {"max_inflight": found.max_inflight or None,
                "max_connections": found.max_connections or None,
                "max_queue": cfg.admission.max_queue}

    def schools(self) -> dict[str, dict]:
        """Per school, summed over live workers: inflight, connections, the
        configured limits (max_inflight, max_connections, max_queue, from
        `cfg`; None: unlimited), this instance's allotment of each
        (inflight_allotment, connections_allotment, queue_allotment: the sum
        of its workers' leases, which move with demand when limits are
        shared, so with Redis another instance holds the rest; None:
        unlimited), queued by class (the workers' own queues), admission
        rate, estimated wait (the longest of the workers', or of the
        line's). The waiting line is one for all workers: taken from the
        freshest worker's copy (never summed): waiting by class, called,
        now_serving, last_ticket, line_wait (seconds a newcomer would wait
        in it, None: nothing measured)."""
        out: dict[str, dict] = {}
        lines: dict[str, LineState] = {}
        for snap in self.live.values():
            for s in snap.schools:
                d = out.get(s.name)
                if d is None:
                    d = out[s.name] = {
                        "inflight": 0, "connections": 0, **self.limits(s.name),
                        "inflight_allotment": 0, "connections_allotment": 0,
                        "queue_allotment": 0, "queued": {},
                        "admission_rate": 0.0, "estimated_wait": 0.0}
                for key in ("inflight", "connections"):
                    d[key] += getattr(s, key)
                for key, limit in (("inflight_allotment", "max_inflight"),
                                   ("connections_allotment", "max_connections"),
                                   ("queue_allotment", "max_queue")):
                    value = getattr(s, limit)
                    d[key] = None if value is None or d[key] is None else d[key] + value
                for klass, n in s.queued.items():
                    d["queued"][klass] = d["queued"].get(klass, 0) + n
                d["admission_rate"] += s.admission_rate
                d["estimated_wait"] = max(d["estimated_wait"], s.estimated_wait)
                line = s.line
                if line is not None and (s.name not in lines or
                                         line.synced_at > lines[s.name].synced_at):
                    lines[s.name] = line
        for name, d in out.items():
            line = lines.get(name)
            d["waiting"] = dict(line.waiting) if line is not None else {}
            d["called"] = line.called if line is not None else 0
            d["now_serving"] = line.now_serving if line is not None else 0
            d["last_ticket"] = line.last_ticket if line is not None else 0
            d["line_wait"] = line.estimated_wait if line is not None else 0.0
            if line is not None and line.waiting and line.estimated_wait is not None:
                # A newcomer joins the line's end while tickets wait.
                d["estimated_wait"] = max(d["estimated_wait"], line.estimated_wait)
        return out

    def pools(self) -> dict[str, dict]:
        """Per pool of the config: inflight (over live workers), max_inflight
        (configured), allotment (this instance's part: the sum of its
        workers' leases)."""
        out: dict[str, dict] = {}
        if self.cfg is not None:
            for pool in self.cfg.pools:
                out[pool.name] = {"inflight": 0, "max_inflight": pool.max_inflight,
                                  "allotment": 0}
        for snap in self.live.values():
            for p in snap.pools:
                d = out.get(p.name)
                if d is not None:
                    d["inflight"] += p.inflight
                    d["allotment"] += p.allotment
        return out

    def shared(self) -> dict | None:
        """The shared limits over live workers (None: not shared): store
        ("redis" or "memory"), fallback (workers failing static now),
        workers (those sharing), participants (the most any worker saw in
        its last answer: all workers of all instances)."""
        states = [snap.shared for snap in self.live.values() if snap.shared is not None]
        if not states:
            return None
        return {"store": "redis" if any(s.store == "redis" for s in states) else "memory",
                "fallback": sum(1 for s in states if s.fallback),
                "workers": len(states),
                "participants": max(s.participants for s in states)}

    def upstreams(self) -> dict[str, dict]:
        """Per upstream over live workers: up (every worker that uses it
        finds it available), in flight."""
        out: dict[str, dict] = {}
        for snap in self.live.values():
            for u in snap.upstreams:
                d = out.setdefault(u.addr, {"up": True, "inflight": 0})
                d["up"] = d["up"] and u.up
                d["inflight"] += u.inflight
        return out


class GatewayCollector:
    """A prometheus_client collector over an Aggregate (register it in a
    CollectorRegistry; each scrape reads the Aggregate anew)."""

    def __init__(self, agg: Aggregate) -> None:
        self.agg = agg

    def describe(self) -> list[Metric]:
        return []  # no fixed set: the families follow the workers' snapshots

    def collect(self) -> Iterator[Metric]:
        agg = self.agg
        totals = agg.totals()

        def counter(name: str, text: str, labels: list[str], kind: str) -> CounterMetricFamily:
            fam = CounterMetricFamily(name, text, labels=labels)
            for key, value in sorted(totals.items()):
                if key[0] == kind:
                    fam.add_metric(list(key[1:]), value)
            return fam

        yield counter("schoolgate_requests", "Requests answered (by the upstream or the "
                      "gateway), at the end of each exchange; school and class are empty "
                      "for requests no school serves; code 0: a status beyond the codes "
                      "counted apart.", ["school", "class", "code"], "requests")
        per_school: dict[str, float] = {}
        for key, value in totals.items():
            if key[0] == "requests" and key[1]:
                per_school[key[1]] = per_school.get(key[1], 0) + value  # type: ignore[operator]
        fam = CounterMetricFamily("schoolgate_school_requests",
                                  "Requests answered, per school.", labels=["school"])
        for school, n in sorted(per_school.items()):
            fam.add_metric([school], n)
        yield fam
        for kind, name, text, bounds in (
                ("duration", "schoolgate_request_duration_seconds",
                 "Time from a request head read to the end of its response at the gateway.",
                 DURATION_BUCKETS),
                ("wait", "schoolgate_queue_wait_seconds",
                 "Time an admitted request waited for its slot.", WAIT_BUCKETS)):
            hist = HistogramMetricFamily(name, text, labels=["school", "class"])
            for key, value in sorted(totals.items()):
                if key[0] != kind:
                    continue
                counts = value[:-1]  # type: ignore[index]
                running, buckets = 0.0, []
                for le, n in zip((*map(_le, bounds), "+Inf"), counts, strict=True):
                    running += n
                    buckets.append((le, running))
                hist.add_metric(list(key[1:]), buckets, value[-1])  # type: ignore[index]
            yield hist
        pages = {PAGE_WAITING: CounterMetricFamily(
                     "schoolgate_waiting_pages", "Waiting pages served (the school full).",
                     labels=["school", "class"]),
                 PAGE_429: CounterMetricFamily(
                     "schoolgate_too_many_requests",
                     "429 Too Many Requests served (bulk classes, clients over their rate).",
                     labels=["school", "class"])}
        for key, value in sorted(totals.items()):
            if key[0] == "pages":
                pages[int(key[3])].add_metric([key[1], key[2]], value)
        yield from pages.values()
        yield counter("schoolgate_local_responses", "Responses made by the gateway itself.",
                      ["status"], "local")
        fam = CounterMetricFamily("schoolgate_connections", "Client connections accepted.")
        fam.add_metric([], totals.get(("connections",), 0))
        yield fam
        live = list(agg.live.values())
        yield _gauge("schoolgate_connections_open", "Client connections open now.",
                     sum(s.connections_open for s in live))

        schools = agg.schools()
        yield counter("schoolgate_school_admitted", "Requests admitted.", ["school", "class"],
                      "admitted")
        yield counter("schoolgate_school_rejected",
                      "Requests turned away (waiting page, 429).", ["school", "class"],
                      "rejected")
        yield counter("schoolgate_school_cancelled", "Queued requests whose client left.",
                      ["school"], "cancelled")
        lease = ("this instance's current part of it (the sum of its workers' leases; "
                 "they move with demand when limits are shared through Redis or shared "
                 "memory, the other instances hold the rest; absent: no limit).")
        for key, text in (
                ("inflight", "Admitted requests not yet finished (at this instance)."),
                ("max_inflight", "Configured limit of requests in flight (max_inflight, "
                 "for the whole fleet when shared; absent: none)."),
                ("inflight_allotment", "Of max_inflight, " + lease),
                ("connections", "Client connections counted against the school."),
                ("max_connections", "Configured limit of client connections (absent: none)."),
                ("connections_allotment", "Of max_connections, " + lease),
                ("max_queue", "Configured limit of queued requests ([admission] max_queue)."),
                ("queue_allotment", "Of max_queue, " + lease),
                ("admission_rate", "Measured admissions per second."),
                ("estimated_wait", "Seconds a request arriving now would wait for a slot.")):
            name = "schoolgate_school_" + key + ("_seconds" if key == "estimated_wait" else "")
            fam = GaugeMetricFamily(name, text, labels=["school"])
            for school, d in sorted(schools.items()):
                if d[key] is not None:
                    fam.add_metric([school], d[key])
            yield fam
        fam = GaugeMetricFamily("schoolgate_school_queued",
                                "Requests queued for admission at the workers (held open; "
                                "the visitors on a waiting page are schoolgate_school_waiting).",
                                labels=["school", "class"])
        for school, d in sorted(schools.items()):
            for klass, n in d["queued"].items():
                fam.add_metric([school, klass], n)
        yield fam
        fam = GaugeMetricFamily("schoolgate_school_waiting",
                                "Visitors waiting in the school's line (shown the waiting "
                                "page, not yet called; dropped after waiting_grace without "
                                "a poll).", labels=["school", "class"])
        for school, d in sorted(schools.items()):
            for klass, n in sorted(d["waiting"].items()):
                fam.add_metric([school, klass], n)
        yield fam
        for key, name, text in (
                ("called", "schoolgate_school_called",
                 "Visitors told their turn has come whose reload has not got in yet."),
                ("now_serving", "schoolgate_school_now_serving",
                 "Highest ticket number called in the school's line."),
                ("last_ticket", "schoolgate_school_last_ticket",
                 "Highest ticket number drawn in the school's line."),
                ("line_wait", "schoolgate_school_line_wait_seconds",
                 "Seconds a visitor joining the line now would wait (absent: no "
                 "admission rate measured yet).")):
            fam = GaugeMetricFamily(name, text, labels=["school"])
            for school, d in sorted(schools.items()):
                if d[key] is not None:
                    fam.add_metric([school], d[key])
            yield fam

        pools = agg.pools()
        for key, name, text in (
                ("inflight", "schoolgate_pool_inflight",
                 "Admitted requests of the pool's schools not yet finished (this instance)."),
                ("max_inflight", "schoolgate_pool_max_inflight",
                 "Configured limit of the pool's requests in flight."),
                ("allotment", "schoolgate_pool_inflight_allotment",
                 "Of the pool's max_inflight, " + lease)):
            fam = GaugeMetricFamily(name, text, labels=["pool"])
            for pool, d in sorted(pools.items()):
                fam.add_metric([pool], d[key])
            yield fam
        shared = agg.shared()
        fam = GaugeMetricFamily("schoolgate_shared_limits",
                                "1 for the store the limits are shared through: redis "
                                "(every instance naming it) or memory (this instance's "
                                "workers); absent: not shared (one worker).",
                                labels=["store"])
        if shared is not None:
            fam.add_metric([shared["store"]], 1)
        yield fam
        yield _gauge("schoolgate_shared_limits_fallback",
                     "Workers failing static now (the ledger, Redis, has not answered: each "
                     "limit falls back to its part divided by the participants last seen); "
                     "0: none.", shared["fallback"] if shared else 0)
        yield _gauge("schoolgate_shared_limits_participants",
                     "Participants (workers of every instance) seen in the last answer of "
                     "the ledger.", shared["participants"] if shared else 0)
        for kind, name, text in (
                ("shared_fallbacks", "schoolgate_shared_limits_fallbacks",
                 "Times a worker started to fail static (once per outage per worker)."),
                ("shared_errors", "schoolgate_shared_limits_errors",
                 "Rounds of the shared-limits ledger that failed (Redis down, slow, "
                 "refused).")):
            fam = CounterMetricFamily(name, text)
            fam.add_metric([], totals.get((kind,), 0))
            yield fam

        ups = agg.upstreams()
        up = GaugeMetricFamily("schoolgate_upstream_up",
                               "1 if every worker finds the upstream server available "
                               "(not cooling down after connect failures).",
                               labels=["upstream"])
        inflight = GaugeMetricFamily("schoolgate_upstream_inflight",
                                     "Requests in flight per upstream server.",
                                     labels=["upstream"])
        for addr, d in sorted(ups.items()):
            up.add_metric([addr], 1 if d["up"] else 0)
            inflight.add_metric([addr], d["inflight"])
        yield up
        yield inflight
        yield counter("schoolgate_upstream_connect_failures",
                      "Connects to the upstream server that failed or timed out.",
                      ["upstream"], "connect_failures")
        yield counter("schoolgate_upstream_retries",
                      "Requests given another attempt after this server failed them.",
                      ["upstream"], "retries")
        yield counter("schoolgate_upstream_timeouts",
                      "Connect and read timeouts of the upstream server.",
                      ["upstream"], "timeouts")

        spools = [sum(s.spools[i] for s in live) for i in range(6)]
        for i, (name, text) in enumerate((
                ("request_bodies_buffered", "Request bodies held at the gateway."),
                ("request_body_bytes_buffered", "Bytes of those bodies, memory and files."),
                ("request_body_files", "Temporary files holding request bodies."),
                ("responses_spooled", "Responses held for clients that read slowly."),
                ("response_bytes_spooled", "Bytes of those responses, memory and files."),
                ("response_spool_files", "Temporary files holding spooled responses."))):
            yield _gauge("schoolgate_" + name, text, spools[i])

        yield _gauge("schoolgate_workers", "Worker processes reporting now.", len(live))
        fam = CounterMetricFamily("schoolgate_worker_exits",
                                  "Worker processes that ended (their counts stay in the "
                                  "totals).")
        fam.add_metric([], agg.workers_gone)
        yield fam
        fam = CounterMetricFamily("schoolgate_reloads", "Configuration reloads (SIGHUP).",
                                  labels=["result"])
        for result, n in sorted(agg.reloads.items()):
            fam.add_metric([result], n)
        yield fam
        yield _gauge("schoolgate_config_generation",
                     "Configurations loaded since start (1, plus one per successful reload).",
                     agg.generation)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _le(bound: float) -> str:
    return repr(float(bound))


class WaitingPageRate:
    """Waiting pages per minute per school, from the counter's samples
    over the last minute (sampled each second by the admin process)."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, dict[str, float]]] = deque()

    def sample(self, now: float, totals: dict[Key, float | list[float]]) -> None:
        per: dict[str, float] = {}
        for key, value in totals.items():
            if key[0] == "pages" and int(key[3]) == PAGE_WAITING:
                per[key[1]] = per.get(key[1], 0) + value  # type: ignore[operator]
        self.samples.append((now, per))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()

    def per_minute(self, school: str) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        if t1 <= t0:
            return 0.0
        return max(0.0, last.get(school, 0) - first.get(school, 0)) * 60.0 / (t1 - t0)


def school_status(cfg: Config, agg: Aggregate, rate: WaitingPageRate) -> dict:
    """The status page's figures (GET /status.json)."""
    live = agg.schools()
    ups = agg.upstreams()
    schools = []
    for school in cfg.schools:
        d = live.get(school.name)
        schools.append({
            "name": school.name,
            "title": school.title or school.name,
            "inflight": d["inflight"] if d else 0,
            # The configured limits (the fleet's, when shared) and this
            # instance's current part of each.
            "max_inflight": school.max_inflight or None,
            "inflight_allotment": d["inflight_allotment"] if d else None,
            "connections": d["connections"] if d else 0,
            "max_connections": school.max_connections or None,
            "connections_allotment": d["connections_allotment"] if d else None,
            "queued": d["queued"] if d else {},
            "max_queue": cfg.admission.max_queue,
            "queue_allotment": d["queue_allotment"] if d else None,
            # The shared waiting line (one for all workers and instances).
            "waiting": d["waiting"] if d else {},
            "called": d["called"] if d else 0,
            "now_serving": d["now_serving"] if d else 0,
            "last_ticket": d["last_ticket"] if d else 0,
            "waiting_pages_per_minute": round(rate.per_minute(school.name), 2),
            "admission_rate": round(d["admission_rate"], 2) if d else 0.0,
            "estimated_wait": round(d["estimated_wait"], 1) if d else 0.0,
            "upstreams": [{"addr": addr, "up": ups.get(addr, {}).get("up"),
                           "inflight": ups.get(addr, {}).get("inflight", 0)}
                          for addr in school.upstreams],
        })
    pools = [{"name": name, **d} for name, d in agg.pools().items()]
    return {"time": time.time(), "workers": len(agg.live), "configured_workers":
            cfg.server.workers, "generation": agg.generation,
            # None: limits not shared (one worker); else the store, workers
            # failing static now, participants seen.
            "shared": agg.shared(), "redis": bool(cfg.redis.url),
            "schools": schools, "pools": pools}
