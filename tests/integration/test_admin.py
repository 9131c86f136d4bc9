"""The admin listener: /healthz and Prometheus /metrics, scraped with httpx
from a running gateway after real traffic."""

from __future__ import annotations

import signal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import RawConn, build_request, request, wait_until
from tests.support.procs import free_port


def _read(gw) -> dict[tuple[str, frozenset], float]:
    resp = httpx.get(gw.admin_url + "/metrics", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def _scrape(gw, requests: int) -> dict[tuple[str, frozenset], float]:
    """The samples once `requests` answered requests are counted: the admin
    process sums the workers' snapshots, which they send every half second."""
    assert wait_until(lambda: sum(v for (n, _), v in _read(gw).items()
                                  if n == "schoolgate_requests_total") >= requests, timeout=10)
    return _read(gw)


def _value(samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert found, f"no sample {name} {labels}"
    return sum(found)


def test_metrics_count_requests_admissions_and_local_answers(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream],
                      server={"admin_listen": f"127.0.0.1:{free_port()}"},
                      school={"max_inflight": 4})
    for _ in range(3):
        assert request(gw.port, "GET", "/echo").status == 200
    assert request(gw.port, "POST", "/echo", body=b"x").status == 200
    with RawConn(gw.port) as conn:
        conn.send(build_request(target="/echo", host="nobody.test"))
        assert conn.recv_response().status == 421
    samples = _scrape(gw, 5)
    assert _value(samples, "schoolgate_requests_total") == 5
    assert _value(samples, "schoolgate_school_requests_total", school="school") == 4
    assert _value(samples, "schoolgate_local_responses_total", status="421") == 1
    assert _value(samples, "schoolgate_school_admitted_total",
                  school="school", **{"class": "interactive"}) == 3
    assert _value(samples, "schoolgate_school_admitted_total",
                  school="school", **{"class": "submit"}) == 1
    assert _value(samples, "schoolgate_school_inflight", school="school") == 0
    assert _value(samples, "schoolgate_school_queued", school="school",
                  **{"class": "bulk"}) == 0


def test_healthz_reports_draining(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream],
                      server={"admin_listen": f"127.0.0.1:{free_port()}"},
                      timeouts={"drain": 10.0})
    assert httpx.get(gw.admin_url + "/healthz", timeout=5).text == "ok\n"
    assert httpx.get(gw.admin_url + "/nothing", timeout=5).status_code == 404
    # /metrics on the proxy listener belongs to the school, not to the admin.
    resp = request(gw.port, "GET", "/metrics")
    assert resp.status == 404  # the test upstream has no /metrics
    gw.signal(signal.SIGTERM)
    assert gw.wait(timeout=10) == 0
