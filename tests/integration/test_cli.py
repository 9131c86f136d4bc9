"""The command line and the demo upstream, as real processes over real sockets."""

from __future__ import annotations

import hashlib
import json
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.demo.launcher import free_port
from tests.support.clients import RawConn, build_request, chunked, wait_until
from tests.support.procs import gateway_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gateway.toml"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def read_line(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> str:
    """One stdout line, or "" if none arrives in time.

    The pipe must be unbuffered (bufsize=0): a buffered reader would take
    several lines at once, leaving select() nothing to report for the next.
    """
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().decode() if ready else ""


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


# -------------------------------------------------------------------- schoolgate check


def test_check_accepts_the_example():
    result = cli("check", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"schoolgate: configuration file {EXAMPLE} test is successful\n"


def test_check_names_file_key_and_problem(tmp_path):
    bad = tmp_path / "gw.toml"
    bad.write_text('[[schools]]\nname = "a"\nhosts = ["a.org"]\n'
                   'upstreams = ["127.0.0.1:80"]\nmax_inflight = "lots"\n')
    result = cli("check", "--config", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"schoolgate: {bad}: schools[0].max_inflight: expected int, got str",
        f"schoolgate: configuration file {bad} test failed",
    ]


def test_check_prints_warnings_and_succeeds(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[[schools]]\nname = "a"\nhosts = ["a.org"]\n'
                    'upstreams = ["127.0.0.1:80"]\nrequest_buffer_max = 4096\n')
    result = cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"schoolgate: configuration file {path} test is successful\n"
    assert result.stderr.startswith(
        f"schoolgate: warning: {path}: schools[0].request_buffer_memory: "
        "65536 is larger than request_buffer_max (4096): ")
    assert len(result.stderr.splitlines()) == 1


def test_check_reports_toml_syntax_with_line(tmp_path):
    bad = tmp_path / "gw.toml"
    bad.write_text('[server]\nlisten = "127.0.0.1:80"\n[schools\n')
    result = cli("check", "--config", str(bad))
    assert result.returncode == 1
    assert re.match(rf"schoolgate: {re.escape(str(bad))}:3:\d+: invalid TOML: ", result.stderr)


def test_check_missing_file_and_usage_errors(tmp_path):
    result = cli("check", "--config", str(tmp_path / "none.toml"))
    assert result.returncode == 1
    assert "none.toml: cannot read: " in result.stderr
    assert cli("check").returncode == 2
    assert cli("demo", "--port", "70000").returncode == 2


# ------------------------------------------------------------------ schoolgate run

WARNED = "schools[0].request_buffer_memory: 65536 is larger than request_buffer_max (4096)"


def test_run_logs_config_warnings_at_start_and_reload(make_gateway, upstream):
    gw = make_gateway(upstreams=[f"127.0.0.1:{upstream.port}"],
                      school={"request_buffer_max": 4096})
    assert wait_until(lambda: WARNED in gw.log(), timeout=10), gw.log()
    assert f"WARNING schoolgate: {gw.config_path}: {WARNED}" in gw.log()
    gw.write_config(gateway_config([f"127.0.0.1:{upstream.port}"],
                                   port=gw.port, school={"request_buffer_max": 4096}))
    gw.signal(signal.SIGHUP)
    assert wait_until(lambda: gw.log().count(WARNED) == 2, timeout=10), gw.log()


def test_run_names_the_listener_whose_port_is_taken(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        admin = busy.getsockname()[1]
        path = tmp_path / "gw.toml"
        path.write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
                        f'admin_listen = "127.0.0.1:{admin}"\n'
                        '[[schools]]\nname = "a"\nhosts = ["a.org"]\n'
                        'upstreams = ["127.0.0.1:80"]\n')
        result = cli("run", "--config", str(path))
    assert result.returncode == 3  # cannot listen: distinct from a config error (1)
    assert result.stderr == (f"schoolgate: {path}: server.admin_listen: cannot listen on "
                             f"127.0.0.1:{admin}: Address already in use\n")


def test_version():
    result = cli("--version")
    assert (result.returncode, result.stdout.split()[0]) == (0, "schoolgate")


# ----------------------------------------------------------------- demo upstream


@dataclass
class Upstream:
    proc: subprocess.Popen[bytes]
    port: int

    def conn(self) -> RawConn:
        return RawConn(self.port, timeout=10.0)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo.upstream", "--port", "0", "--school", "test",
         "--watch-stdin"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        start_new_session=True,
    )
    try:
        line = read_line(proc)
        match = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)\n", line)
        assert match, f"unexpected first line {line!r}"
        yield Upstream(proc, int(match[1]))
    finally:
        stop(proc)


def test_keep_alive_and_pipelining_in_order(upstream):
    with upstream.conn() as conn:
        conn.send(build_request("GET", "/health"))
        first = conn.recv_response()
        assert first.status == 200
        assert first.has_token("Connection", "keep-alive")
        assert first.json() == {"school": "test", "upstream": f"test@{upstream.port}",
                                "status": "ok"}
        # The slow one comes first, so an out-of-order server would answer /health first.
        conn.send(build_request("GET", "/slow?ms=300") + build_request("GET", "/health")
                  + build_request("GET", "/nowhere"))
        answers = [conn.recv_response() for _ in range(3)]
        assert [r.status for r in answers] == [200, 200, 404]
        assert answers[0].json()["slept_ms"] == 300
        conn.send(build_request("GET", "/health", headers=[("Connection", "close")]))
        last = conn.recv_response()
        assert last.has_token("Connection", "close")
        assert conn.closed()


def test_upload_reports_bytes_and_sha256(upstream):
    body = bytes(range(256)) * 20_000  # 5 MB, sent in pieces
    with upstream.conn() as conn:
        conn.send(build_request("PUT", "/upload", headers=[("Content-Length", str(len(body)))]))
        for i in range(0, len(body), 100_000):
            conn.send(body[i:i + 100_000])
        doc = conn.recv_response().json()
        assert (doc["bytes"], doc["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())

        pieces = (b"homework ", b"part two", b"")
        conn.send(build_request("POST", "/upload", headers=[("Transfer-Encoding", "chunked")],
                                body=chunked(*pieces)))
        doc = conn.recv_response().json()
        assert doc["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_expect_continue(upstream):
    with upstream.conn() as conn:
        conn.send(build_request("POST", "/upload", headers=[
            ("Content-Length", "5"), ("Expect", "100-continue")]))
        assert conn.recv_response(final=False).status == 100
        conn.send(b"hello")
        assert conn.recv_response().json()["sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_head_and_big_download(upstream):
    with upstream.conn() as conn:
        conn.send(build_request("HEAD", "/big?bytes=1000000"))
        head = conn.recv_response("HEAD")
        assert (head.status, head.header("Content-Length"), head.body) == (200, "1000000", b"")
        # Had the HEAD sent a body, these bytes would be read as the next response.
        conn.send(build_request("GET", "/big?bytes=300000"))
        big = conn.recv_response()
        assert big.body == (bytes(range(256)) * 1200)[:300000]
        for bad in ("lots", "-1", "%C2%B2"):  # the last is a superscript two
            conn.send(build_request("GET", f"/big?bytes={bad}"))
            assert conn.recv_response().status == 400


def test_login_form(upstream):
    with upstream.conn() as conn:
        conn.send(build_request("GET", "/login"))
        form = conn.recv_response()
        assert b'<form method="post" action="/login">' in form.body
        conn.send(build_request("POST", "/login", body=b"user=%3Cb%3EAda&password=x", headers=[
            ("Content-Type", "application/x-www-form-urlencoded")]))
        welcome = conn.recv_response()
        assert welcome.status == 200
        assert b"Hello, &lt;b&gt;Ada!" in welcome.body
        assert (welcome.header("Set-Cookie") or "").startswith("demo_session=")
        conn.send(build_request("POST", "/login", body=b"user="))
        assert conn.recv_response().status == 400


def test_wrong_method_and_malformed_request(upstream):
    with upstream.conn() as conn:
        conn.send(build_request("DELETE", "/health"))
        refused = conn.recv_response()
        assert (refused.status, refused.header("Allow")) == (405, "GET, HEAD")
    with upstream.conn() as conn:
        conn.send(b"NOT HTTP AT ALL\r\n\r\n")
        assert conn.recv_response().status == 400
        assert conn.closed()


def test_sigterm_closes_idle_connections_and_exits(upstream):
    with upstream.conn() as conn:
        conn.send(build_request("GET", "/health"))
        assert conn.recv_response().status == 200
        upstream.proc.send_signal(signal.SIGTERM)
        assert upstream.proc.wait(10) == 0
        assert conn.closed()


def test_sigterm_lets_a_request_in_flight_finish(upstream):
    with upstream.conn() as conn:
        # Both go out in one segment: once /health is answered, /slow is under way.
        conn.send(build_request("GET", "/health") + build_request("GET", "/slow?ms=500"))
        assert conn.recv_response().status == 200
        upstream.proc.send_signal(signal.SIGTERM)
        answer = conn.recv_response()
        assert answer.status == 200
        assert answer.has_token("Connection", "close")
        assert upstream.proc.wait(10) == 0


def test_exits_when_its_parent_pipe_closes(upstream):
    assert upstream.proc.stdin is not None
    upstream.proc.stdin.close()
    assert upstream.proc.wait(10) == 0
    assert not port_open(upstream.port)


# ------------------------------------------------------------------ schoolgate demo


def test_demo_on_a_busy_port_says_so_before_starting_anything():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = cli("demo", "--port", str(port))
    assert result.returncode == 1
    # No banner, no upstreams started, no temporary config file named.
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    m = re.fullmatch(rf"schoolgate demo: port {port} is in use; try ./scripts/demo --port "
                     r"(\d+) \(or schoolgate demo --port (\d+)\)", line)
    assert m is not None, line
    assert m[1] == m[2] and int(m[1]) > port


def test_demo_serves_pages_through_the_gateway_and_stops_cleanly(tmp_path):
    port = free_port()
    log = (tmp_path / "demo.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, bufsize=0,
                            start_new_session=True)
    try:
        banner = ""
        while "Stop with Ctrl-C." not in banner:
            line = read_line(proc)
            assert line, f"demo printed no banner; got {banner!r}"
            banner += line
        assert f"http://linden.localhost:{port}/" in banner
        upstream_ports = [int(p) for p in re.findall(r"\d+", " ".join(
            re.findall(r"\(upstream port ([\d, ]+)\)", banner)))]
        assert len(upstream_ports) == 3

        def page(host: str, target: str = "/") -> tuple[int, bytes]:
            with RawConn(port, timeout=10.0) as conn:
                conn.send(build_request("GET", target, host=host))
                resp = conn.recv_response()
                return resp.status, resp.body

        assert wait_until(lambda: port_open(port), timeout=15.0)
        status, body = page(f"berg.localhost:{port}")
        assert status == 200
        assert b"Gymnasium am Berg" in body
        status, body = page("127.0.0.1", "/health")
        assert (status, json.loads(body)["school"]) == (200, "linden")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for p in [port, *upstream_ports]:
            assert wait_until(lambda p=p: not port_open(p), timeout=10.0), p
    finally:
        stop(proc)
        log.close()
