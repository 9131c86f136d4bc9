"""Fixtures that start real processes: test upstreams and gateways.

Every process a fixture starts is stopped and reaped at teardown (its whole
process group), and the logs of all of them are attached to the report of a
failing test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx
import pytest

from tests.support.clients import http_client
from tests.support.procs import Gateway, ManagedProcess, Upstream, gateway_config

_PROCS = pytest.StashKey[list[ManagedProcess]]()
_LOG_TAIL_LINES = 200


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.failed:
        for proc in item.stash.get(_PROCS, []):
            tail = proc.log().splitlines()[-_LOG_TAIL_LINES:]
            report.sections.append((f"log of {proc.name} ({proc.log_path})", "\n".join(tail)))
    return report


@pytest.fixture
def procs(request: pytest.FixtureRequest) -> Iterator[list[ManagedProcess]]:
    """The processes started for this test; stopped in reverse order afterwards."""
    started: list[ManagedProcess] = []
    request.node.stash[_PROCS] = started
    yield started
    for proc in reversed(started):
        proc.stop(timeout=3.0)


@pytest.fixture
def make_upstream(procs: list[ManagedProcess], tmp_path) -> Callable[..., Upstream]:
    """make_upstream(name=None, port=None, start=True) -> a test upstream."""

    def make(name: str | None = None, port: int | None = None, start: bool = True) -> Upstream:
        up = Upstream(tmp_path, name or f"u{len(procs) + 1}", port)
        procs.append(up)
        return up.start() if start else up

    return make


@pytest.fixture
def upstream(make_upstream: Callable[..., Upstream]) -> Upstream:
    return make_upstream("u1")


@pytest.fixture
def make_gateway(procs: list[ManagedProcess], tmp_path) -> Callable[..., Gateway]:
    """make_gateway(config=None, *, upstreams=(), start=True, **overrides) -> Gateway.

    Without a config, one is rendered by gateway_config() from upstreams
    (Upstream objects or "host:port" strings) and the overrides.
    """

    def make(config: str | Mapping[str, Any] | None = None, *,
             upstreams: Sequence[Upstream | str] = (), start: bool = True,
             **overrides: Any) -> Gateway:
        if config is None:
            addrs = [u.addr if isinstance(u, Upstream) else u for u in upstreams]
            config = gateway_config(addrs, **overrides)
        elif overrides:
            raise TypeError("overrides only apply when the config is rendered here")
        n = sum(isinstance(p, Gateway) for p in procs)
        gw = Gateway(config, tmp_path, name="gateway" if n == 0 else f"gateway-{n + 1}")
        procs.append(gw)
        return gw.start() if start else gw

    return make


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway], upstream: Upstream) -> Gateway:
    """A gateway with the default config in front of `upstream`."""
    return make_gateway(upstreams=[upstream])


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    """httpx client for `gateway`, sending Host: school.test."""
    with http_client(gateway.url) as c:
        yield c


# -- admission tests (helpers in test_admission_support.py) -------------------------


@pytest.fixture
def gate() -> Iterator[Any]:
    """An upstream in this process that holds requests until released."""
    from test_admission_support import start_gate, stop_gate

    g = start_gate()
    yield g
    stop_gate(g)


@pytest.fixture
def admission_connections(procs: list[ManagedProcess]) -> Iterator[None]:
    """Closes the connections the admission helpers opened. Depends on procs
    so that it is torn down first: the gateway then stops with no client
    connection left to drain."""
    from test_admission_support import close_all

    yield
    close_all()

