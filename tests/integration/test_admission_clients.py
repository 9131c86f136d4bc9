"""Per-school token bucket, per-client buckets (and whom X-Forwarded-For is
believed from), and max_connections, on a real gateway.

Buckets are checked by counts, not times: rates are chosen so slow that no
token can refill while a test runs (0.1/s for the school, 0.01/s per
client), which makes "exactly burst requests pass" exact.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_admission_support import (
    HTML_ACCEPT,
    JSON_ACCEPT,
    STATUS_PATH,
    classes,
    connect_from,
    gateway_for,
    hold,
    queue,
    read_all,
    retry_after,
    send,
)

from tests.support.clients import RawConn, Response, build_request, request, wait_until

pytestmark = pytest.mark.usefixtures("admission_connections")




def get_from(source_ip: str, port: int, target: str = "/page",
             headers: tuple[tuple[str, str], ...] = ()) -> Response:
    conn = connect_from(source_ip, port)
    conn.send(build_request("GET", target, [JSON_ACCEPT, *headers]))
    return conn.recv_response()


# -- the school's bucket ----------------------------------------------------------


def test_school_bucket_admits_its_burst_then_turns_away(make_gateway, gate):
    # Interactive requests may not wait: what the bucket refuses is answered.
    gw = gateway_for(make_gateway, gate.addr,
                     school={"max_inflight": 0, "rate": 0.1, "burst": 5},
                     klasses=classes(interactive={"max_wait": 0.0}))
    statuses = [request(gw.port, "GET", f"/page/{i}", headers=[JSON_ACCEPT]).status
                for i in range(8)]
    assert statuses == [200] * 5 + [503] * 3
    assert gate.count("/page/") == 5


def test_school_bucket_queues_what_can_wait_and_admits_at_its_rate(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr,
                     school={"max_inflight": 0, "rate": 4.0, "burst": 1})
    assert request(gw.port, "GET", "/page/0").status == 200  # the burst
    # The bucket is empty: each further request waits for a token, in order.
    waiting = [queue(gw.port, "GET", f"/page/{i}") for i in range(1, 4)]
    assert [r.status for r in read_all(waiting)] == [200] * 3
    assert gate.paths() == [f"/page/{i}" for i in range(4)]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in ticks
    return total / os.sysconf("SC_CLK_TCK")


def test_full_rate_limited_school_waits_without_burning_cpu(make_gateway, gate):
    # Full (max_inflight) and rate limited, with a request queued: nothing can
    # happen until the slot frees, and the worker must idle meanwhile, not
    # poll its admission timer in a busy loop.
    gw = gateway_for(make_gateway, gate.addr,
                     school={"max_inflight": 1, "rate": 5.0, "burst": 1})
    holder = hold(gw.port, gate, "a")
    waiting = queue(gw.port, "GET", "/page")
    pids = gw.pids()
    before = cpu_seconds(pids)
    time.sleep(1.0)
    used = cpu_seconds(pids) - before
    assert used < 0.5, f"gateway used {used:.2f} s of CPU in 1 s while idle"
    gate.release("a")
    assert [r.status for r in read_all([holder, waiting])] == [200, 200]


# -- per-client buckets -------------------------------------------------------------

CLIENT_LIMIT = {"max_inflight": 0, "client_rate": 0.01, "client_burst": 2}


def test_per_client_bucket_limits_one_address_not_the_others(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, school=CLIENT_LIMIT)
    first = [get_from("127.0.0.1", gw.port) for _ in range(3)]
    assert [r.status for r in first] == [200, 200, 429]
    assert retry_after(first[2]) > 1
    # Another address has its own bucket, and the school is not limited.
    assert [get_from("127.0.0.2", gw.port).status for _ in range(3)] == [200, 200, 429]
    assert get_from("127.0.0.3", gw.port).status == 200
    assert gate.count("/page") == 5


def test_browser_over_its_own_rate_gets_a_429_waiting_page(make_gateway, gate):
    # The limit is the client's own: 429 (not "the school is full"), but a
    # browser still gets a page that comes back by itself, not plain text.
    gw = gateway_for(make_gateway, gate.addr, school=CLIENT_LIMIT)
    for _ in range(2):
        assert get_from("127.0.0.4", gw.port).status == 200
    conn = connect_from("127.0.0.4", gw.port)
    conn.send(build_request("GET", "/page", [HTML_ACCEPT]))
    resp = conn.recv_response()
    assert resp.status == 429
    assert resp.header("Content-Type").startswith("text/html")
    assert retry_after(resp) > 1
    assert b'http-equiv="refresh"' in resp.body


def test_forwarded_for_from_an_untrusted_peer_is_ignored(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, school=CLIENT_LIMIT)
    statuses = [get_from("127.0.0.1", gw.port,
                         headers=(("X-Forwarded-For", f"198.51.100.{i}"),)).status
                for i in range(3)]
    # Three "different" clients by their header, one by their address.
    assert statuses == [200, 200, 429]


def test_forwarded_for_from_a_trusted_proxy_keys_the_client(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, school=CLIENT_LIMIT,
                     server={"trusted_proxies": ["127.0.0.1/32"]})

    def via_proxy(xff: str | None) -> int:
        headers = () if xff is None else (("X-Forwarded-For", xff),)
        return get_from("127.0.0.1", gw.port, headers=headers).status

    assert [via_proxy("198.51.100.1") for _ in range(3)] == [200, 200, 429]
    # Another client behind the same proxy is not held back by the first.
    assert [via_proxy("198.51.100.2") for _ in range(2)] == [200, 200]
    # Entries left of the last untrusted hop are whatever the client wrote:
    # prepending a fresh address does not buy a fresh bucket.
    assert via_proxy("203.0.113.9, 198.51.100.1") == 429
    # Trusted hops are skipped to find the client.
    assert via_proxy("198.51.100.2, 127.0.0.1") == 429
    # Without the header, the proxy itself is the client.
    assert [via_proxy(None) for _ in range(3)] == [200, 200, 429]
    # A peer that is not a trusted proxy is keyed on its address, whatever
    # it claims.
    untrusted = [get_from("127.0.0.2", gw.port,
                          headers=(("X-Forwarded-For", f"198.51.100.{10 + i}"),)).status
                 for i in range(3)]
    assert untrusted == [200, 200, 429]


def test_per_client_limit_answers_html_clients_too(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, school=CLIENT_LIMIT)
    for _ in range(2):
        assert request(gw.port, "GET", "/page", headers=[HTML_ACCEPT]).status == 200
    resp = request(gw.port, "GET", "/page", headers=[HTML_ACCEPT])
    assert resp.status == 429
    retry_after(resp)
    assert resp.header("Cache-Control") == "no-store"


# -- max_connections ------------------------------------------------------------------


def open_with_request(port: int, target: str = "/page") -> RawConn:
    conn = send(port, "GET", target)
    assert conn.recv_response().status == 200
    return conn


def test_max_connections_turns_the_next_connection_away(make_gateway, gate):
    gw = gateway_for(make_gateway, gate.addr, school={"max_inflight": 0, "max_connections": 2})
    # Connections that never asked for anything do not count.
    silent = [connect_from("127.0.0.1", gw.port) for _ in range(3)]
    kept = [open_with_request(gw.port) for _ in range(2)]
    # Both still open (keep-alive): the third connection's request is turned
    # away with the waiting page, and that connection is closed.
    third = send(gw.port, "GET", "/lesson", [HTML_ACCEPT])
    resp = third.recv_response()
    assert resp.status == 503
    retry_after(resp)
    assert resp.header("Cache-Control") == "no-store"
    assert (resp.header("Content-Type") or "").startswith("text/html")
    assert resp.has_token("Connection", "close")
    assert third.closed()
    assert "/lesson" not in gate.targets()
    # The waiting page's status poll is served regardless.
    poll = request(gw.port, "GET", STATUS_PATH, headers=[JSON_ACCEPT])
    assert poll.status == 200
    # A connection already counted keeps working.
    kept[0].send(build_request("GET", "/again"))
    assert kept[0].recv_response().status == 200
    # Once one closes, a new connection gets in.
    kept[1].close()
    assert wait_until(lambda: request(gw.port, "GET", "/later").status == 200)
    for conn in silent:
        conn.close()
