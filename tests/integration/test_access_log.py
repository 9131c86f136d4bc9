"""The access log and the rate-limited warnings, from a real gateway process.

Each request's line is checked for what the gateway decided (admitted,
queued, waiting page, 429, refused with its reason, its own 503 for an
upstream that is down), against what the upstream counted. Lines reach the
log within the worker's flush interval, so tests wait for them (bounded).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

from tests.support.clients import build_request, raw_request, request, wait_until
from tests.support.procs import Gateway, Upstream, free_port

# The interactive class waits briefly, so a full school answers with the
# waiting page soon; /import is bulk, refused with 429 when it cannot get in.
CLASSES = [
    {"name": "bulk", "priority": 0, "max_wait": 0.2, "reject_status": 429,
     "match": {"paths": ["/import"]}},
    {"name": "interactive", "priority": 10, "max_wait": 5.0},
]


def read_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_lines(path: Path, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    wait_until(lambda: len(read_lines(path)) >= n, timeout=timeout)
    lines = read_lines(path)
    assert len(lines) >= n, f"expected {n} access-log line(s), got {lines}"
    return lines


def json_lines(text: str) -> list[dict[str, Any]]:
    """The access-log lines among a process's output (stdout and stderr)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def start(make_gateway, upstreams, tmp_path: Path, log: dict[str, Any] | None = None,
          **overrides: Any) -> tuple[Gateway, Path]:
    path = tmp_path / "access.log"
    gw = make_gateway(upstreams=upstreams, log={"access": str(path), **(log or {})},
                      **overrides)
    return gw, path


def test_default_is_json_on_stdout(make_gateway, upstream: Upstream) -> None:
    gw = make_gateway(upstreams=[upstream])
    resp = request(gw.port, "GET", "/echo")
    assert resp.status == 200
    assert wait_until(lambda: json_lines(gw.log()))
    [line] = json_lines(gw.log())
    assert line["status"] == 200
    assert line["decision"] == "admitted"
    assert line["school"] == "school"
    assert line["class"] == "interactive"
    assert line["method"] == "GET" and line["path"] == "/echo"
    assert line["upstream"] == upstream.addr
    assert line["upstream_ms"] >= 0
    assert line["bytes_in"] > 0 and line["bytes_out"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


def test_ten_503s_for_a_dead_upstream_leave_ten_lines(make_gateway, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    gw, path = start(make_gateway, [dead], tmp_path)
    for _ in range(10):
        resp = request(gw.port, "GET", "/page")
        assert resp.status == 503
    lines = wait_lines(path, 10)
    assert len(lines) == 10
    for line in lines:
        assert line["status"] == 503
        assert line["decision"] == "local"
        assert line["reason"] == "upstream not answering"
        assert line["upstream"] == dead
        assert line["path"] == "/page"
    # The warning about it is rate-limited: at most warn_burst (5) lines
    # for the ten failures, and each names the upstream.
    assert wait_until(lambda: "is not answering" in gw.log())
    warnings = [ln for ln in gw.log().splitlines() if "is not answering" in ln]
    assert 1 <= len(warnings) <= 5
    assert all(dead in ln for ln in warnings)


def _hold(port: int, target: str, results: list, headers=()) -> threading.Thread:
    def run() -> None:
        results.append(request(port, "GET", target, list(headers), timeout=15))

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_queued_request_shows_its_queued_ms(make_gateway, upstream: Upstream,
                                              tmp_path: Path) -> None:
    gw, path = start(make_gateway, [upstream], tmp_path, school={"max_inflight": 1},
                     classes=CLASSES)
    results: list = []
    first = _hold(gw.port, "/slow?ms=1500", results)
    assert wait_until(lambda: upstream.requests("/slow") == 1)
    resp = request(gw.port, "GET", "/echo", timeout=15)
    first.join(15)
    assert resp.status == 200 and results[0].status == 200
    lines = {ln["path"]: ln for ln in wait_lines(path, 2)}
    assert lines["/slow"]["decision"] == "admitted"
    assert lines["/slow"]["queue_ms"] == 0.0
    queued = lines["/echo"]
    assert queued["decision"] == "queued"
    assert queued["queue_ms"] > 0
    assert queued["status"] == 200
    assert queued["upstream"] == upstream.addr


def test_waiting_page_and_429_are_logged(make_gateway, upstream: Upstream,
                                         tmp_path: Path) -> None:
    classes = [dict(c) for c in CLASSES]
    classes[1]["max_wait"] = 0.2
    gw, path = start(make_gateway, [upstream], tmp_path, school={"max_inflight": 1},
                     classes=classes)
    results: list = []
    first = _hold(gw.port, "/slow?ms=2000", results)
    assert wait_until(lambda: upstream.requests("/slow") == 1)
    page = request(gw.port, "GET", "/lesson", [("Accept", "text/html")])
    bulk = request(gw.port, "GET", "/import")
    first.join(15)
    assert page.status == 503 and bulk.status == 429
    assert upstream.requests("/lesson") == 0 and upstream.requests("/import") == 0
    lines = {ln["path"]: ln for ln in wait_lines(path, 3)}
    assert lines["/lesson"]["decision"] == "waiting_page"
    assert lines["/lesson"]["status"] == 503
    assert lines["/lesson"]["class"] == "interactive"
    assert lines["/import"]["decision"] == "429"
    assert lines["/import"]["status"] == 429
    assert lines["/import"]["class"] == "bulk"
    assert "upstream" not in lines["/import"]


def test_hostile_request_is_logged_as_refused_with_its_reason(
        make_gateway, upstream: Upstream, tmp_path: Path) -> None:
    gw, path = start(make_gateway, [upstream], tmp_path)
    out = raw_request(gw.port, b"GET /x HTTP/1.1\r\nHost: school.test\r\n"
                               b"Bad Header: 1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    # Ambiguous framing (both Content-Length and chunked) is refused too.
    out = raw_request(gw.port, build_request(
        "POST", "/y", [("Content-Length", "3"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"))
    assert out.startswith(b"HTTP/1.1 400 ")
    lines = wait_lines(path, 2)
    assert [ln["decision"] for ln in lines] == ["refused", "refused"]
    assert all(ln["status"] == 400 and ln["reason"] for ln in lines)
    assert upstream.requests("/x") == 0 and upstream.requests("/y", "POST") == 0
    assert wait_until(lambda: "refused a request: 400" in gw.log())


def test_a_body_too_large_names_the_request_it_cut_short(
        make_gateway, upstream: Upstream, tmp_path: Path) -> None:
    gw, path = start(make_gateway, [upstream], tmp_path, limits={"max_body": 10},
                     school={"request_buffering": False})
    body = b"5\r\nhello\r\n5\r\nhello\r\n5\r\nhello\r\n0\r\n\r\n"
    out = raw_request(gw.port, build_request(
        "POST", "/upload", [("Transfer-Encoding", "chunked")], body))
    assert b" 413 " in out.split(b"\r\n", 1)[0]
    [line] = wait_lines(path, 1)
    assert line["decision"] == "refused" and line["status"] == 413
    assert line["reason"] == "request body too large"
    assert line["method"] == "POST" and line["path"] == "/upload"
    assert line["school"] == "school"


def test_query_strings_are_left_out_unless_configured(
        make_gateway, upstream: Upstream, tmp_path: Path) -> None:
    gw, path = start(make_gateway, [upstream], tmp_path)
    assert request(gw.port, "GET", "/echo?pupil=Anna+Schmidt").status == 200
    [line] = wait_lines(path, 1)
    assert line["path"] == "/echo"
    assert "Anna" not in path.read_text()

    gw2, path2 = make_gateway(upstreams=[upstream], log={
        "access": str(tmp_path / "query.log"), "query": True}), tmp_path / "query.log"
    assert request(gw2.port, "GET", "/echo?pupil=Anna").status == 200
    [line] = wait_lines(path2, 1)
    assert line["path"] == "/echo?pupil=Anna"


def test_sampling_keeps_errors_and_refusals(make_gateway, upstream: Upstream,
                                            tmp_path: Path) -> None:
    gw, path = start(make_gateway, [upstream], tmp_path, log={"sample": 0.0})
    for _ in range(5):
        assert request(gw.port, "GET", "/echo").status == 200
    assert request(gw.port, "GET", "/status/500").status == 500
    raw_request(gw.port, b"GET / HTTP/1.1\r\nHost: school.test\r\nBad Header: 1\r\n\r\n")
    out = raw_request(gw.port, build_request("GET", "/", host="nobody.example"))
    assert out.startswith(b"HTTP/1.1 421 ")
    lines = wait_lines(path, 3)
    assert sorted(ln["status"] for ln in lines) == [400, 421, 500]
    assert upstream.requests("/echo") == 5


def test_sigusr1_reopens_the_file(make_gateway, upstream: Upstream, tmp_path: Path) -> None:
    gw, path = start(make_gateway, [upstream], tmp_path, server={"workers": 2})
    assert request(gw.port, "GET", "/status/204?p=before").status == 204
    wait_lines(path, 1)
    rotated = tmp_path / "access.log.1"
    os.rename(path, rotated)
    gw.signal(signal.SIGUSR1)
    assert wait_until(lambda: path.exists())  # every worker reopened, creating it
    # Both workers must have moved: each connection may land on either.
    for _ in range(8):
        assert request(gw.port, "GET", "/status/204?p=after").status == 204
    new = wait_lines(path, 8)
    assert len(new) == 8
    assert len(read_lines(rotated)) == 1
    assert gw.alive()


def test_a_flood_of_bad_requests_leaves_few_warnings(make_gateway, upstream: Upstream,
                                                     tmp_path: Path) -> None:
    gw, path = start(make_gateway, [upstream], tmp_path, log={"warn_burst": 3})
    n = 200
    for i in range(n):
        out = raw_request(gw.port, b"GET /f HTTP/1.1\r\nHost: school.test\r\nBad Header: %d\r\n\r\n"
                          % i, read_timeout=2.0)
        assert out.startswith(b"HTTP/1.1 400 ")
    lines = wait_lines(path, n)
    assert len(lines) == n  # the access log keeps every refusal
    warnings = [ln for ln in gw.log().splitlines() if "refused a request" in ln]
    # One kind of refusal: at most warn_burst lines (the window is 60 s, so
    # the "suppressed" summary comes later, at the window's end).
    assert 1 <= len(warnings) <= 3


class _UnreadStdoutGateway(Gateway):
    """A gateway whose standard output is a pipe nobody reads (a log
    collector that stopped); its warnings go to the log file."""

    def _spawn(self) -> None:
        import subprocess

        from tests.support.procs import REPO_ROOT, _child_env

        with open(self.log_path, "ab") as log:
            self._group_done = False
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                cwd=REPO_ROOT, env=_child_env(), start_new_session=True)


def test_a_stdout_nobody_reads_does_not_stall_the_workers(procs, upstream: Upstream,
                                                           tmp_path: Path) -> None:
    """Access lines on standard output, which nobody reads: once the pipe is
    full (64 KiB, a few hundred lines) the workers keep answering; the lines
    the pipe does not take are held (bounded) or dropped with a warning."""
    from tests.support.procs import gateway_config

    gw = _UnreadStdoutGateway(gateway_config([upstream.addr], server={"workers": 2}), tmp_path)
    procs.append(gw)
    gw.start()
    # ~2 KiB per line: the pipe is full after ~30; the upstream answers 404.
    target = "/missing-" + "x" * 2000
    for i in range(400):
        resp = request(gw.port, "GET", target, timeout=10.0)
        assert (resp.status, resp.header("x-upstream")) == (404, "u1"), i
    assert upstream.requests(target) == 400
    assert gw._proc is not None and gw._proc.stdout is not None
    # The lines the pipe took are whole JSON lines of these requests.
    os.set_blocking(gw._proc.stdout.fileno(), False)
    got = gw._proc.stdout.read() or b""
    lines = [json.loads(x) for x in got.splitlines()]
    assert lines and all(line["path"] == target for line in lines)
