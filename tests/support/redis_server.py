"""A real redis-server for the shared-limits tests, on a free port, with no
persistence (a restart starts empty, as after a crash without AOF).

Without the binary a test that needs it fails, naming what to run: CI
(`.ci/run` -> `./scripts/test` -> `scripts/bootstrap --test`) installs
redis-server with apt-get, so a missing one is a broken setup, never a
reason to skip the cloud edge's tests silently."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.procs import ManagedProcess, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def have_redis() -> bool:
    return Path(REDIS_SERVER).exists()


def require_redis() -> None:
    """Fail the calling test when there is no redis-server to start."""
    if not have_redis():
        import pytest

        pytest.fail(f"redis-server not found ({REDIS_SERVER}): `scripts/bootstrap --test` "
                    "installs it (apt-get install redis-server)", pytrace=False)


class RedisServer(ManagedProcess):
    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__("redis", [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--protected-mode", "no",
            "--dir", str(log_dir)], log_dir / f"redis-{self.port}.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        require_redis()
        self._spawn()
        self.wait_port(self.port, timeout)
        return self
