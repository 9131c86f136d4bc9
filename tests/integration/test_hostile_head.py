"""Hostile request heads: oversized, malformed or ambiguous ones.

Every refusal must be the gateway's own short plain-text answer with the
standard status line, followed by the gateway closing the connection (a
client that sent garbage cannot be trusted to frame its next request), and
the request must never reach the upstream. Each case targets its own path so
the upstream's per-path counters say whether it leaked through.

The gateway and upstream are shared by the whole module: starting them per
case would cost more than the cases, and a gateway that keeps serving after
each hostile input is part of what is being checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from http import HTTPStatus

import pytest

from tests.support.clients import HOST, RawConn, build_request, request
from tests.support.procs import Gateway, Upstream, gateway_config

LOG_TAIL = 40


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = Upstream(tmp_path_factory.mktemp("hostile-head"), "u1").start()
    yield up
    up.stop()


def _gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream,
             name: str, **overrides: object) -> Gateway:
    return Gateway(gateway_config([upstream.addr], **overrides),
                   tmp_path_factory.mktemp(name), name=name).start()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    gw = _gateway(tmp_path_factory, upstream, "gateway")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def strict_gateway(tmp_path_factory: pytest.TempPathFactory,
                   upstream: Upstream) -> Iterator[Gateway]:
    gw = _gateway(tmp_path_factory, upstream, "strict",
                  limits={"underscore_headers": "reject"})
    yield gw
    gw.stop()


def _tail(gw: Gateway) -> str:
    return "\n".join(gw.log().splitlines()[-LOG_TAIL:])


def expect_refusal(gw: Gateway, payload: bytes, status: int, words: tuple[str, ...]) -> None:
    """Send payload on a fresh connection; the gateway must refuse it and hang up.

    words: the body must name the problem with at least one of them.
    """
    with RawConn(gw.port) as conn:
        try:
            conn.send(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole payload was read; the answer is still queued
        resp = conn.recv_response()
        assert resp.status == status, f"{resp}\n{_tail(gw)}"
        assert resp.version == "HTTP/1.1"
        assert resp.reason.lower() == HTTPStatus(status).phrase.lower()
        assert resp.has_token("Connection", "close"), resp.headers
        assert resp.header("Content-Type") == "text/plain; charset=utf-8"
        body = resp.body.decode("utf-8").lower()
        assert 0 < len(body) <= 512, body
        assert any(w in body for w in words), f"{body!r} names none of {words}"
        assert conn.closed(), "the gateway kept the connection open after refusing"


def expect_unseen(upstream: Upstream, path: str) -> None:
    assert upstream.stats()["requests"].get(path) is None, f"{path} reached the upstream"


def raw_head(request_line: str, *lines: str) -> bytes:
    return ("\r\n".join((request_line, *lines)) + "\r\n\r\n").encode("latin-1")


# -- sizes ---------------------------------------------------------------------

def test_request_line_over_limit_is_414(gateway, upstream):
    target = "/h/long-line?q=" + "a" * 9000
    expect_refusal(gateway, build_request(target=target), 414,
                   ("line", "uri", "target", "url"))
    expect_unseen(upstream, "/h/long-line")


def test_long_request_line_under_limit_is_served(gateway):
    target = "/echo?q=" + "a" * 7000
    resp = request(gateway.port, target=target)
    assert resp.status == 200
    assert resp.json()["target"] == target


def test_header_block_over_max_header_bytes_is_431(gateway, upstream):
    # 5 x 8000 bytes: every line is unremarkable, only the total is too big.
    headers = [(f"X-Big-{i}", "v" * 8000) for i in range(5)]
    expect_refusal(gateway, build_request(target="/h/big-block", headers=headers), 431,
                   ("header",))
    expect_unseen(upstream, "/h/big-block")


def test_single_endless_header_line_is_431(gateway, upstream):
    # One line that never ends must be bounded by bytes, not by line count.
    payload = b"GET /h/endless HTTP/1.1\r\nHost: school.test\r\nX-Endless: " + b"v" * 60000
    expect_refusal(gateway, payload, 431, ("header",))
    expect_unseen(upstream, "/h/endless")


def test_more_than_max_headers_is_431(gateway, upstream):
    headers = [(f"X-N-{i}", "1") for i in range(101)]
    expect_refusal(gateway, build_request(target="/h/many", headers=headers), 431,
                   ("header",))
    expect_unseen(upstream, "/h/many")


def test_exactly_max_headers_is_served(gateway):
    # Host plus 99 more is the 100 allowed by [limits] max_headers.
    headers = [(f"X-N-{i}", str(i)) for i in range(99)]
    resp = request(gateway.port, headers=headers)
    assert resp.status == 200
    seen = {k for k, _ in resp.json()["headers"]}
    assert {f"X-N-{i}" for i in range(99)} <= seen


# -- Host ----------------------------------------------------------------------

def test_missing_host_is_400(gateway, upstream):
    expect_refusal(gateway, raw_head("GET /h/no-host HTTP/1.1"), 400, ("host",))
    expect_unseen(upstream, "/h/no-host")


@pytest.mark.parametrize("second", [HOST, "other.school.test"], ids=["same", "different"])
def test_duplicate_host_is_400(gateway, upstream, second):
    payload = raw_head("GET /h/two-hosts HTTP/1.1", f"Host: {HOST}", f"Host: {second}")
    expect_refusal(gateway, payload, 400, ("host",))
    expect_unseen(upstream, "/h/two-hosts")


# -- versions ------------------------------------------------------------------

# A version that is well formed but not 1.0/1.1 is 505: the gateway read the
# line and refuses the protocol. HTTP/1.2 too, since the gateway speaks 1.1
# only and must not guess what a later minor version would mean.
@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.0"])
def test_unsupported_version_is_505(gateway, upstream, version):
    path = f"/h/version-{version[5:]}"
    expect_refusal(gateway, raw_head(f"GET {path} {version}", f"Host: {HOST}"), 505,
                   ("version",))
    expect_unseen(upstream, path)


def test_request_line_without_version_is_refused(gateway, upstream):
    # An HTTP/0.9 simple request. It has no version to be unsupported and no
    # headers; either refusal is correct as long as it is one and the
    # connection ends (a 0.9 client could not read a status line anyway).
    with RawConn(gateway.port) as conn:
        conn.send(b"GET /h/simple\r\n\r\n")
        resp = conn.recv_response()
        assert resp.status in (400, 505), resp
        assert resp.has_token("Connection", "close")
        assert conn.closed()
    expect_unseen(upstream, "/h/simple")


@pytest.mark.parametrize("version", ["HTTP/1.x", "HTTPS/1.1", "HTTP/11", "http/1.1"])
def test_unreadable_version_is_400(gateway, upstream, version):
    payload = raw_head(f"GET /h/garbled {version}", f"Host: {HOST}")
    with RawConn(gateway.port) as conn:
        conn.send(payload)
        resp = conn.recv_response()
        assert resp.status == 400, resp
        assert resp.has_token("Connection", "close")
        assert conn.closed()
    expect_unseen(upstream, "/h/garbled")


# -- header lines --------------------------------------------------------------

@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\nb"], ids=["nul", "cr", "lf"])
def test_control_bytes_in_header_value_are_400(gateway, upstream, value):
    payload = (b"GET /h/ctl HTTP/1.1\r\nHost: school.test\r\nX-Evil: " + value
               + b"\r\nX-After: 1\r\n\r\n")
    expect_refusal(gateway, payload, 400, ("header", "lf", "cr", "char"))
    expect_unseen(upstream, "/h/ctl")


@pytest.mark.parametrize("fold", [" folded", "\tfolded"], ids=["space", "tab"])
def test_obs_fold_is_400(gateway, upstream, fold):
    payload = raw_head("GET /h/fold HTTP/1.1", f"Host: {HOST}", "X-Folded: first", fold)
    expect_refusal(gateway, payload, 400, ("header", "fold", "whitespace"))
    expect_unseen(upstream, "/h/fold")


@pytest.mark.parametrize("line", ["X-Bad Name: 1", "X-Bad\tName: 1", "X-Colon : 1",
                                  ": no-name", "X-Ünïcode: 1"],
                         ids=["space", "tab", "space-before-colon", "empty", "non-token"])
def test_invalid_header_name_is_400(gateway, upstream, line):
    payload = raw_head("GET /h/name HTTP/1.1", f"Host: {HOST}", line)
    expect_refusal(gateway, payload, 400, ("header",))
    expect_unseen(upstream, "/h/name")


def test_underscore_headers_are_dropped_by_default(gateway):
    resp = request(gateway.port, headers=[("X_User", "admin"), ("X-User", "pupil")])
    assert resp.status == 200
    names = [k for k, _ in resp.json()["headers"]]
    assert "X_User" not in names
    assert "X-User" in names


def test_underscore_headers_rejected_when_configured(strict_gateway, upstream):
    payload = build_request(target="/h/underscore", headers=[("X_User", "admin")])
    expect_refusal(strict_gateway, payload, 400, ("underscore", "header"))
    expect_unseen(upstream, "/h/underscore")


# -- Content-Length ------------------------------------------------------------

@pytest.mark.parametrize("lengths", [["-1"], ["1,2"], ["abc"], ["1", "2"], ["+1"], ["0x10"],
                                     ["1 2"], [""]],
                         ids=["negative", "list", "alpha", "conflicting", "plus", "hex",
                              "space", "empty"])
def test_invalid_content_length_is_400(gateway, upstream, lengths):
    headers = [("Content-Length", v) for v in lengths]
    payload = build_request("POST", "/h/bad-length", headers) + b"xy"
    expect_refusal(gateway, payload, 400, ("content-length", "length"))
    expect_unseen(upstream, "/h/bad-length")


# -- the gateway survives all of the above -------------------------------------

def test_gateway_still_serves_after_hostile_heads(gateway, strict_gateway):
    for gw in (gateway, strict_gateway):
        resp = request(gw.port)
        assert resp.status == 200
        assert resp.json()["target"] == "/echo"
