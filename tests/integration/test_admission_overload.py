"""The overload scenario of issue 3, point 7, end to end: a fragile origin
(bench.slow_upstream: 20 workers, 50 ms each, 503 at once when all are busy,
so 400 requests/s at most) behind the gateway, offered five times what it
can take, 20% of it bulk, open loop (bench.loadgen: requests go out on a
fixed schedule whatever the answers).

Checked: every request gets an HTTP answer, none 502 or 504; the origin
never has to shed load itself; interactive requests are admitted ahead of
bulk; refused browsers get the waiting page with their position and
Retry-After, API clients JSON, bulk 429. Nothing here asserts a latency.

Also here: the gateway with admission switched off, and in front of an
upstream that is down.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_admission_support import (
    HTML_ACCEPT,
    JSON_ACCEPT,
    STATUS_PATH,
    gateway_for,
    read_all,
    retry_after,
    send,
)

from bench import loadgen
from tests.support.clients import FORBIDDEN_STATUSES, request
from tests.support.procs import ManagedProcess, free_port

CAPACITY = 20
SERVICE_TIME = 0.05
ORIGIN_RATE = CAPACITY / SERVICE_TIME  # 400 requests/s
LOADGEN_HOST = "bench.school"  # the Host bench.loadgen sends

pytestmark = pytest.mark.usefixtures("admission_connections")


class SlowOrigin(ManagedProcess):
    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        super().__init__("slow origin", [
            sys.executable, "-m", "bench.slow_upstream", "--port", str(self.port),
            "--capacity", str(CAPACITY), "--service-time", str(SERVICE_TIME),
        ], log_dir / f"slow-upstream-{self.port}.log")

    def start(self) -> SlowOrigin:
        self._spawn()
        self.wait_port(self.port, 10.0)
        return self

    def stats(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/__stats")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()


@pytest.fixture
def origin(procs, tmp_path) -> SlowOrigin:
    proc = SlowOrigin(tmp_path)
    procs.append(proc)
    return proc.start()



# -- a sampler keeping whole answers, next to the load --------------------------------


@dataclass
class Sample:
    accept: str
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Sampler:
    port: int
    samples: list[Sample] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    async def one(self, n: int) -> None:
        accept = HTML_ACCEPT[1] if n % 2 == 0 else JSON_ACCEPT[1]
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(f"GET /courses/{n} HTTP/1.1\r\nHost: {LOADGEN_HOST}\r\n"
                                 f"Accept: {accept}\r\nConnection: close\r\n\r\n".encode())
                    head = await reader.readuntil(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    headers = {}
                    for line in lines[1:]:
                        if line:
                            name, _, value = line.partition(":")
                            headers[name.strip().lower()] = value.strip()
                    body = await reader.readexactly(int(headers["content-length"]))
                    self.samples.append(Sample(accept, int(lines[0].split()[1]), headers, body))
                finally:
                    writer.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self.failures[type(exc).__name__] += 1

    async def run(self, duration: float, every: float = 0.05) -> None:
        tasks = []
        for n in range(int(duration / every)):
            tasks.append(asyncio.create_task(self.one(n)))
            await asyncio.sleep(every)
        await asyncio.gather(*tasks)


async def overload(port: int, load: float, duration: float
                   ) -> tuple[loadgen.RunResult, Sampler]:
    sampler = Sampler(port)
    run, _ = await asyncio.gather(
        loadgen.open_loop(port, rate=ORIGIN_RATE * load, duration=duration, bulk_share=0.2,
                          timeout=15.0, max_connections=4000),
        sampler.run(duration),
    )
    return run, sampler


def run_overload(port: int, load: float, duration: float) -> tuple[loadgen.RunResult, Sampler]:
    import uvloop
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(overload(port, load, duration))


def overload_gateway(make_gateway, origin: SlowOrigin, **admission: Any):
    # The bench's policy: at most the origin's capacity upstream, a queue of
    # one second's worth of its throughput, nobody waiting over a second.
    return gateway_for(
        make_gateway, origin.addr,
        school={"max_inflight": CAPACITY, "hosts": [LOADGEN_HOST, "school.test"]},
        admission={"max_queue": int(ORIGIN_RATE), **admission},
        klasses=[
            {"name": "bulk", "priority": 0, "match": {"paths": ["/api/import"]},
             "max_wait": 1.0, "reject_status": 429},
            {"name": "interactive", "priority": 10, "max_wait": 1.0},
        ])


_POSITION = re.compile(rb'id="sg-position">(\d+)<')


def check_overload(run: loadgen.RunResult, sampler: Sampler, origin: SlowOrigin,
                   before: dict[str, Any]) -> dict[str, Any]:
    inter, bulk = run.classes["interactive"], run.classes["bulk"]
    statuses = inter.statuses + bulk.statuses
    # Every request got an HTTP answer, and never a bare gateway error.
    assert not inter.failures and not bulk.failures, (inter.failures, bulk.failures)
    assert sum(inter.statuses.values()) == inter.sent
    assert sum(bulk.statuses.values()) == bulk.sent
    assert not FORBIDDEN_STATUSES & set(statuses), statuses
    assert set(statuses) <= {200, 429, 503}, statuses
    # The origin never had to refuse anything: the gateway let through only
    # what it could take, and it was kept busy.
    assert not inter.origin_errors and not bulk.origin_errors
    after = origin.stats()
    assert after["refused"] == before["refused"]
    assert after["peak_inflight"] == CAPACITY
    # Interactive first: bulk, a fifth of what was offered, gets far less of
    # what was admitted, and is told 429 rather than left waiting.
    admitted = len(inter.ok_latency) + len(bulk.ok_latency)
    bulk_share = len(bulk.ok_latency) / admitted
    assert admitted > 0 and len(inter.ok_latency) > 0
    assert bulk_share < 0.1, (bulk_share, statuses)
    assert bulk.statuses[429] > bulk.statuses[200]
    assert inter.statuses[503] > 0  # the overload was real
    # The waiting page, as browsers and API clients saw it.
    assert not sampler.failures, sampler.failures
    assert {s.status for s in sampler.samples} <= {200, 503}
    pages = [s for s in sampler.samples if s.status == 503 and s.accept == HTML_ACCEPT[1]]
    apis = [s for s in sampler.samples if s.status == 503 and s.accept == JSON_ACCEPT[1]]
    assert pages and apis, Counter((s.accept[:9], s.status) for s in sampler.samples)
    for page in pages:
        assert page.headers["content-type"].startswith("text/html")
        assert int(page.headers["retry-after"]) >= 1
        assert page.headers["cache-control"] == "no-store"
        match = _POSITION.search(page.body)
        assert match is not None and int(match.group(1)) >= 1, page.body[:300]
        assert STATUS_PATH.encode() in page.body
        assert "schoolgate_ticket=" in page.headers["set-cookie"]
    for api in apis:
        body = json.loads(api.body)
        assert int(api.headers["retry-after"]) == body["retry_after"] >= 1
        assert isinstance(body["position"], int) and body["position"] >= 1
    return {"statuses": dict(statuses), "bulk_share": bulk_share, "admitted": admitted}


def test_five_times_capacity_is_queued_and_refused_never_dropped(make_gateway, origin):
    gw = overload_gateway(make_gateway, origin)
    before = origin.stats()
    run, sampler = run_overload(gw.port, load=5.0, duration=2.5)
    check_overload(run, sampler, origin, before)


@pytest.mark.slow
@pytest.mark.parametrize("load", [2.0, 5.0, 10.0])
def test_sustained_overload(make_gateway, origin, load):
    gw = overload_gateway(make_gateway, origin)
    before = origin.stats()
    run, sampler = run_overload(gw.port, load=load, duration=10.0)
    check_overload(run, sampler, origin, before)


@pytest.mark.slow
def test_without_admission_the_origin_sheds_load_itself(make_gateway, origin):
    # The control for the test above: the same overload with admission off
    # reaches the origin, which has to refuse it (its own 503s).
    gw = overload_gateway(make_gateway, origin, enabled=False)
    run, _ = run_overload(gw.port, load=5.0, duration=2.5)
    refused = sum(c.origin_errors[503] for c in run.classes.values())
    assert refused > 0
    assert origin.stats()["peak_inflight"] == CAPACITY


# -- admission off ----------------------------------------------------------------------



def test_admission_disabled_forwards_everything(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr,
                     school={"max_inflight": 1, "max_connections": 1, "rate": 0.1, "burst": 1,
                             "client_rate": 0.01, "client_burst": 1},
                     admission={"enabled": False, "max_queue": 1})
    held = [send(gw.port, "GET", f"/hold/x?i={i}") for i in range(5)]
    # Five at once, past every limit: nothing queues, nothing is refused.
    assert gate.wait_count(5, "/hold/x")
    assert gate.peak == 5
    assert request(gw.port, "GET", "/import/x").status == 200
    poll = request(gw.port, "GET", STATUS_PATH, headers=[JSON_ACCEPT])
    assert poll.status == 200 and poll.json()["state"] == "go"
    gate.release("x")
    assert [r.status for r in read_all(held)] == [200] * 5


# -- upstream down ---------------------------------------------------------------------


def test_upstream_down_under_load_is_the_not_answering_page(make_gateway):
    gw = gateway_for(make_gateway, f"127.0.0.1:{free_port()}",
                     school={"max_inflight": 2}, admission={"max_queue": 50})
    conns = [send(gw.port, "GET", f"/lesson/{i}",
                  [HTML_ACCEPT if i % 2 else JSON_ACCEPT, ("Accept-Language", "de")])
             for i in range(20)]
    answers = list(read_all(conns))
    assert [r.status for r in answers] == [503] * 20
    for resp in answers:
        retry_after(resp)
        if (resp.header("Content-Type") or "").startswith("text/html"):
            # The "not answering" page, not the "it's busy" one.
            assert "Der Server der Schule antwortet gerade nicht" in resp.body.decode()
            assert resp.header("Set-Cookie") is None
        else:
            assert resp.json()["error"] == "unavailable"
