"""Process lifecycle: several workers on one port, graceful drain on SIGTERM,
configuration reload on SIGHUP (and refusal of a bad one).

Which worker served a request is not visible on the wire (the gateway adds no
pid header), so worker-level facts are read from /proc: each worker's own
listening socket (SO_REUSEPORT) and the client connections each one holds.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.support.clients import HOST, RawConn, build_request, request, wait_until
from tests.support.procs import gateway_config, port_open

TCP_LISTEN, TCP_ESTABLISHED = "0A", "01"


# -- /proc helpers ---------------------------------------------------------------

def _tcp_sockets(port: int, state: str) -> set[int]:
    """Inodes of IPv4 sockets whose local port is port, in the given state."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, st, inode = fields[1], fields[3], int(fields[9])
        if int(local.rsplit(":", 1)[1], 16) == port and st == state and inode:
            inodes.add(inode)
    return inodes


def _socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets pid has open."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _workers(gw) -> list[int]:
    return [pid for pid in gw.pids() if pid != gw.pid]


async def _burst(port: int, n: int, target: str) -> list[bytes]:
    """n requests at once, each on its own connection; the raw answers."""

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(build_request(target=target, headers=[("Connection", "close")]))
            await writer.drain()
            return await asyncio.wait_for(reader.read(-1), 30)
        finally:
            writer.close()
            await writer.wait_closed()

    return await asyncio.gather(*(one() for _ in range(n)))


# -- workers ---------------------------------------------------------------------

def test_two_workers_each_listen_and_both_serve(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream], server={"workers": 2})
    assert wait_until(lambda: len(_workers(gw)) == 2), gw.pids()
    workers = _workers(gw)

    # SO_REUSEPORT: two listening sockets on the port, one owned by each worker
    # (a socket inherited from the parent would be one socket, shared).
    assert wait_until(lambda: len(_tcp_sockets(gw.port, TCP_LISTEN)) == 2)
    listening = _tcp_sockets(gw.port, TCP_LISTEN)
    owned = [_socket_inodes(pid) & listening for pid in workers]
    assert all(len(o) == 1 for o in owned) and owned[0] != owned[1], owned
    assert not _socket_inodes(gw.pid) & listening, "the parent should not hold the listener"

    # 200 requests in flight together; while they wait on the upstream, each
    # worker must be holding some of the client connections.
    held: list[list[int]] = []

    def sample() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not held:
            conns = _tcp_sockets(gw.port, TCP_ESTABLISHED)
            counts = [len(_socket_inodes(pid) & conns) for pid in workers]
            if sum(counts) >= 100:
                held.append(counts)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    answers = asyncio.run(_burst(gw.port, 200, "/slow?ms=600"))
    sampler.join()
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 200
    assert held, "never saw the burst's connections in flight"
    assert all(c > 0 for c in held[0]), f"connections per worker: {held[0]}"


# -- SIGTERM -------------------------------------------------------------------------

def test_sigterm_finishes_in_flight_request_then_exits(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream], timeouts={"drain": 10.0})
    result: dict[str, object] = {}

    def slow() -> None:
        with RawConn(gw.port, timeout=15) as conn:
            conn.send(build_request(target="/slow?ms=1500"))
            result["resp"] = conn.recv_response()
            result["closed"] = conn.closed()

    with RawConn(gw.port) as idle:
        idle.send(build_request())
        assert idle.recv_response().status == 200
        worker = threading.Thread(target=slow)
        worker.start()
        assert wait_until(lambda: upstream.requests("/slow") == 1)

        stopped_at = time.monotonic()
        gw.signal(signal.SIGTERM)
        # The listener goes at once, long before the slow answer is due.
        assert wait_until(lambda: not port_open(gw.port), timeout=1.0), \
            "new connections still accepted after SIGTERM"
        assert worker.is_alive()
        # An idle keep-alive connection has nothing to finish: closed now.
        assert idle.closed(timeout=1.0)

    worker.join(timeout=10)
    resp = result["resp"]
    assert resp.status == 200, resp  # type: ignore[attr-defined]
    assert resp.json()["target"] == "/slow?ms=1500"  # type: ignore[attr-defined]
    assert resp.has_token("Connection", "close")  # type: ignore[attr-defined]
    assert result["closed"]
    assert gw.wait(timeout=10) == 0, gw.log()
    assert time.monotonic() - stopped_at < 10, "exit waited for the drain deadline"


def test_sigterm_with_nothing_in_flight_exits_at_once(make_gateway, upstream):
    gw = make_gateway(upstreams=[upstream], server={"workers": 2}, timeouts={"drain": 30.0})
    assert request(gw.port).status == 200
    gw.signal(signal.SIGTERM)
    assert gw.wait(timeout=5) == 0, gw.log()
    assert not any(Path(f"/proc/{pid}").exists() for pid in _workers(gw))


def test_workers_exit_when_the_supervisor_is_killed(make_gateway, upstream):
    # SIGKILL (or the OOM killer) gives the supervisor no chance to stop its
    # workers; they must not keep serving the port unsupervised.
    gw = make_gateway(upstreams=[upstream], server={"workers": 2})
    assert request(gw.port).status == 200
    workers = _workers(gw)
    assert len(workers) == 2
    os.kill(gw.pid, signal.SIGKILL)
    gw.wait(timeout=5)
    assert wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=10), gw.log()
    assert wait_until(lambda: not port_open(gw.port), timeout=5)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- SIGHUP --------------------------------------------------------------------------

def _two_schools(port: int, first: str, second: str) -> str:
    return gateway_config([first], port=port, server={"workers": 2}, schools=[
        {"name": "school", "hosts": [HOST], "upstreams": [first]},
        {"name": "newcomer", "hosts": ["new.test"], "upstreams": [second]},
    ])


def _on_host(port: int, host: str):
    with RawConn(port) as conn:
        conn.send(build_request(target="/echo", host=host))
        return conn.recv_response()


def test_sighup_with_new_school_routes_it(make_gateway, make_upstream):
    first, second = make_upstream("u1"), make_upstream("u2")
    gw = make_gateway(upstreams=[first], server={"workers": 2})
    assert wait_until(lambda: len(_workers(gw)) == 2)
    assert _on_host(gw.port, "new.test").status == 421

    gw.write_config(_two_schools(gw.port, first.addr, second.addr))
    gw.signal(signal.SIGHUP)
    assert wait_until(lambda: _on_host(gw.port, "new.test").status == 200), gw.log()
    # Every worker reloaded: fresh connections land on either, all route.
    for _ in range(20):
        resp = _on_host(gw.port, "new.test")
        assert resp.status == 200 and resp.header("X-Upstream") == "u2"
        assert _on_host(gw.port, HOST).header("X-Upstream") == "u1"


BAD_CONFIGS = {
    "wrong-type": lambda cfg: cfg.replace('upstreams = [', 'max_inflight = "lots"\nupstreams = ['),
    "unknown-key": lambda cfg: cfg.replace('upstreams = [', 'max_inflght = 5\nupstreams = ['),
    "toml-syntax": lambda cfg: cfg + "\n[[schools]\nname = \n",
    "bad-upstream": lambda cfg: re.sub(r'upstreams = \["127\.0\.0\.1:\d+"',
                                       'upstreams = ["127.0.0.1:65536"', cfg),
}


@pytest.mark.parametrize("bad", list(BAD_CONFIGS))
def test_sighup_with_invalid_config_keeps_serving_old_one(make_gateway, upstream, bad):
    gw = make_gateway(upstreams=[upstream], server={"workers": 2})
    good = gw.config_path.read_text()
    broken = BAD_CONFIGS[bad](good)
    assert broken != good
    gw.config_path.write_text(broken)
    with pytest.raises(ConfigError) as expected:
        load_config(gw.config_path)
    problem = str(expected.value)

    gw.signal(signal.SIGHUP)
    assert wait_until(lambda: problem in gw.log()), \
        f"log does not name the problem {problem!r}:\n{gw.log()}"
    assert gw.alive()
    for _ in range(10):
        resp = request(gw.port)
        assert resp.status == 200 and resp.json()["target"] == "/echo"
