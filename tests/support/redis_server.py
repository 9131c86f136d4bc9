"""A real redis-server for the shared-limits tests, on a free port, with no
persistence (a restart starts empty, as after a crash without AOF)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.procs import ManagedProcess, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def have_redis() -> bool:
    return Path(REDIS_SERVER).exists()


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
        self._spawn()
        self.wait_port(self.port, timeout)
        return self
