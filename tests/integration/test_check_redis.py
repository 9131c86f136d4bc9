"""`schoolgate check` tries the [redis] url it is given (issue 10): a server
nobody answers at is a warning (exit 0, or 5 with --strict), --offline skips
the attempt, and a real redis-server passes without a word."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from gateway import exitcodes
from tests.support.clients import wait_until
from tests.support.procs import REPO_ROOT, free_port, port_open

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def check(path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "check", str(path), *flags],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def config(tmp_path, url: str):
    path = tmp_path / "gw.toml"
    path.write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\n'
                    f'[redis]\nurl = "{url}"\n'
                    '[[schools]]\nname = "a"\nhosts = ["a.org"]\nupstreams = ["127.0.0.1:80"]\n')
    return path


@pytest.fixture
def redis_port(tmp_path) -> Iterator[int]:
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.fail(f"needs redis-server ({REDIS_SERVER}); ./scripts/test installs it",
                    pytrace=False)
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(lambda: port_open(port) or proc.poll() is not None, timeout=10)
        assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
        yield port
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_unreachable_redis_is_a_warning_and_the_check_passes(tmp_path):
    port = free_port()  # nobody listens here
    path = config(tmp_path, f"redis://127.0.0.1:{port}/0")
    result = check(path)
    assert result.returncode == exitcodes.OK
    assert result.stdout == f"schoolgate: configuration file {path} test is successful\n"
    assert result.stderr == (f"schoolgate: warning: {path}: redis.url: cannot reach "
                             f"redis://127.0.0.1:{port}/0: Connection refused "
                             "(--offline skips this check)\n")


def test_unreachable_redis_fails_with_strict(tmp_path):
    port = free_port()
    path = config(tmp_path, f"redis://127.0.0.1:{port}/0")
    result = check(path, "--strict")
    assert result.returncode == exitcodes.WARNINGS
    assert "cannot reach" in result.stderr
    assert result.stderr.endswith(f"schoolgate: configuration file {path} test failed: "
                                  "1 warning(s) and --strict\n")
    assert result.stdout == ""


def test_offline_does_not_try_redis(tmp_path):
    path = config(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    result = check(path, "--offline", "--strict")
    assert (result.returncode, result.stderr) == (exitcodes.OK, "")


def test_the_password_in_the_url_is_not_printed(tmp_path):
    port = free_port()
    path = config(tmp_path, f"redis://gate:s3cret@127.0.0.1:{port}/0")
    result = check(path)
    assert result.returncode == exitcodes.OK
    assert "s3cret" not in result.stderr
    assert f"cannot reach redis://gate:***@127.0.0.1:{port}/0: " in result.stderr


def test_a_running_redis_passes_quietly(tmp_path, redis_port):
    path = config(tmp_path, f"redis://127.0.0.1:{redis_port}/0")
    result = check(path, "--strict")
    assert (result.returncode, result.stderr) == (exitcodes.OK, "")
    assert result.stdout == f"schoolgate: configuration file {path} test is successful\n"


def test_a_redis_that_wants_a_password_is_named(tmp_path, redis_port):
    # A server that answers but refuses us is a different problem from no server.
    with redis.Redis(port=redis_port, socket_timeout=5) as client:
        client.config_set("requirepass", "pw")
    path = config(tmp_path, f"redis://:wrong@127.0.0.1:{redis_port}/0")
    result = check(path)
    assert result.returncode == exitcodes.OK
    assert result.stderr == (f"schoolgate: warning: {path}: redis.url: "
                             f"redis://:***@127.0.0.1:{redis_port}/0 refused the credentials "
                             "in the URL (--offline skips this check)\n")
