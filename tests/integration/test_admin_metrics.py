"""One scrape describes the whole gateway: a two-worker gateway's /metrics,
read with prometheus_client's own parser, sums both workers, agrees with
itself from scrape to scrape, and keeps a killed worker's counts."""

from __future__ import annotations

import os
import re
import signal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import RawConn, build_request, request, wait_until
from tests.support.procs import free_port

N = 30


def scrape(gw) -> dict[str, list]:
    """Family name -> its samples (prometheus_client.samples.Sample)."""
    resp = httpx.get(gw.admin_url + "/metrics", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(resp.text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


def worker_pids(gw) -> dict[int, int]:
    """Worker index -> pid of the latest process serving it (from the log)."""
    found = {}
    for m in re.finditer(r" (\d+) INFO schoolgate\.worker: worker (\d+) serving", gw.log()):
        found[int(m[2])] = int(m[1])
    return found


def test_metrics_sum_both_workers_and_survive_a_killed_worker(make_gateway, upstream):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    gw = make_gateway(
        upstreams=[upstream],
        server={"admin_listen": f"127.0.0.1:{free_port()}", "workers": 2},
        school={"max_inflight": 8},
        schools=[{"name": "school", "hosts": ["school.test", "*.school.test"],
                  "upstreams": [upstream.addr], "max_inflight": 8},
                 {"name": "closed", "hosts": ["closed.test"], "upstreams": [dead]}])
    assert wait_until(lambda: total(scrape(gw), "schoolgate_workers") == 2, timeout=10)
    # One connection each: the kernel spreads them over both workers.
    for i in range(N):
        assert request(gw.port, "GET", f"/echo?n={i}").status == 200
    with RawConn(gw.port) as conn:
        conn.send(build_request(target="/echo", host="closed.test"))
        assert conn.recv_response().status == 503

    def counted(samples) -> float:
        return total(samples, "schoolgate_requests_total", school="school")

    assert wait_until(lambda: counted(scrape(gw)) == N, timeout=10)
    # Scrapes agree with one another once nothing new happens.
    scrapes = [scrape(gw) for _ in range(4)]
    for s in scrapes:
        assert counted(s) == N
        assert total(s, "schoolgate_requests_total", school="school", code="200") == N
        assert total(s, "schoolgate_school_requests_total", school="school") == N
        assert total(s, "schoolgate_request_duration_seconds_count", school="school") == N
        # Admitted at once: every wait is in the lowest bucket.
        assert total(s, "schoolgate_queue_wait_seconds_count", school="school") == N
        assert total(s, "schoolgate_queue_wait_seconds_bucket", school="school",
                     le="+Inf") == N
        assert total(s, "schoolgate_connections_total") >= N + 1
        assert total(s, "schoolgate_school_inflight", school="school") == 0
        assert total(s, "schoolgate_school_max_inflight", school="school") == 8
        assert total(s, "schoolgate_workers") == 2
        assert total(s, "schoolgate_requests_total", school="closed", code="503") == 1
        assert total(s, "schoolgate_upstream_connect_failures_total", upstream=dead) >= 1
        assert total(s, "schoolgate_upstream_up", upstream=upstream.addr) == 1
        assert total(s, "schoolgate_config_generation") == 1
    # Cumulative buckets: never decreasing up to +Inf.
    buckets = sorted((float(b.labels["le"]), b.value)
                      for b in scrapes[0]["schoolgate_request_duration_seconds_bucket"]
                      if b.labels["school"] == "school" and b.labels["class"] == "interactive")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1] == (float("inf"), N)

    # Both workers served some: each one's own count is short of the total,
    # which only the sum reaches (a worker's snapshot has its own requests).
    pids = worker_pids(gw)
    assert sorted(pids) == [0, 1]
    os.kill(pids[0], signal.SIGKILL)
    assert wait_until(lambda: worker_pids(gw)[0] != pids[0], timeout=15)
    assert wait_until(lambda: total(scrape(gw), "schoolgate_workers") == 2, timeout=15)
    after = scrape(gw)
    # The killed worker's counts stay: the counter does not go backwards.
    assert counted(after) == N
    assert total(after, "schoolgate_worker_exits_total") == 1
    for i in range(N):
        assert request(gw.port, "GET", f"/echo?again={i}").status == 200
    assert wait_until(lambda: counted(scrape(gw)) == 2 * N, timeout=10)
    assert total(scrape(gw), "schoolgate_request_duration_seconds_count",
                 school="school") == 2 * N


def test_reloads_count_and_config_generation(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream],
                      server={"admin_listen": f"127.0.0.1:{free_port()}", "workers": 2})
    gw.signal(signal.SIGHUP)
    assert wait_until(lambda: total(scrape(gw), "schoolgate_config_generation") == 2, timeout=10)
    good = gw.config_path.read_text()
    gw.config_path.write_text(good + "\n[nonsense\n")
    gw.signal(signal.SIGHUP)
    assert wait_until(lambda: total(scrape(gw), "schoolgate_reloads_total",
                                    result="failure") == 1, timeout=10)
    s = scrape(gw)
    assert total(s, "schoolgate_reloads_total", result="success") == 1
    assert total(s, "schoolgate_config_generation") == 2


def test_waiting_pages_and_429_are_counted(make_gateway, upstream):
    # One connection at a time, and one request per client for a long while.
    gw = make_gateway(upstreams=[upstream],
                      server={"admin_listen": f"127.0.0.1:{free_port()}"},
                      school={"max_connections": 1, "client_rate": 0.001, "client_burst": 1})
    html = [("Accept", "text/html")]
    with RawConn(gw.port) as held:
        held.send(build_request(target="/echo", headers=html))
        assert held.recv_response().status == 200
        # The school is at max_connections: a waiting page.
        with RawConn(gw.port) as other:
            other.send(build_request(target="/echo", headers=html))
            assert other.recv_response().status == 503
        # The client is over its own rate: 429.
        held.send(build_request(target="/echo", headers=html))
        assert held.recv_response().status == 429
    assert wait_until(lambda: total(scrape(gw), "schoolgate_requests_total") == 3, timeout=10)
    s = scrape(gw)
    assert total(s, "schoolgate_waiting_pages_total", school="school") == 1
    assert total(s, "schoolgate_too_many_requests_total", school="school") == 1
    assert total(s, "schoolgate_requests_total", school="school", code="429") == 1
    assert total(s, "schoolgate_requests_total", school="school", code="503") == 1
