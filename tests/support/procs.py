"""Real processes for the integration tests: the test upstream and the gateway.

Every process runs in its own session (process group), so stopping it also
stops whatever it forked (gateway workers), and nothing outlives a test. Output
goes to a log file the fixtures attach to the report of a failing test.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from signal import SIGKILL, SIGTERM
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
HOSTS = ["school.test", "*.school.test"]


class ProcessDied(RuntimeError):
    """A process exited before it was ready; the message carries its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The children import tests.support.* and gateway from the checkout.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ManagedProcess:
    """A child process in its own process group with its output in a file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._group_done = False

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self) -> None:
        if self.alive():
            raise RuntimeError(f"{self.name} is already running")
        with open(self.log_path, "ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._group_done = False
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=REPO_ROOT, env=_child_env(), start_new_session=True,
            )

    def wait_port(self, port: int, timeout: float) -> None:
        """Block until port accepts connections; raise with the log if we died."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise ProcessDied(
                    f"{self.name} exited with {self.returncode} before listening on "
                    f"{port}\n{self.log()}"
                )
            if port_open(port):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ProcessDied(
                    f"{self.name} did not listen on {port} within {timeout}s\n{self.log()}"
                )
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        """Send sig to the main process only (workers get it from their parent)."""
        if not self.alive():
            # Its pid may already belong to someone else.
            raise ProcessLookupError(f"{self.name} is not running")
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self._proc is not None
        return self._proc.wait(timeout)

    def stop(self, timeout: float = 5.0, sig: int = SIGTERM) -> int | None:
        """Ask the group to stop, then kill it; always reaps. Returns the exit code."""
        if self._proc is None:
            return None
        proc = self._proc
        if self._group_done:
            return proc.returncode
        if proc.poll() is None:
            self._killpg(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg(SIGKILL)
                proc.wait()
        # Forked workers may outlive a crashed parent; they share its group.
        # Only once: a later call could hit a recycled process-group id.
        self._killpg(SIGKILL)
        self._group_done = True
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole group at once, as a crash would."""
        return self.stop(timeout=5.0, sig=SIGKILL)

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pids(self) -> list[int]:
        """The main process and all its live descendants."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may contain spaces and parentheses: split after it.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def rss(self, include_children: bool = True) -> int:
        """Resident memory in bytes (summed over descendants by default)."""
        total = 0
        for pid in self.pids() if include_children else [self.pid]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total


class Upstream(ManagedProcess):
    """The test upstream (tests/support/upstream.py) on a fixed port.

    The port stays the same across kill()/start() so a gateway configured
    with ``addr`` finds the upstream again after a restart.
    """

    def __init__(self, log_dir: Path, name: str = "upstream", port: int | None = None) -> None:
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        super().__init__(
            f"upstream {name}",
            [sys.executable, "-m", "tests.support.upstream", "--port", str(self.port),
             "--name", name],
            log_dir / f"upstream-{name}-{self.port}.log",
        )
        self.upstream_name = name

    def start(self, timeout: float = 10.0) -> Upstream:
        self._spawn()
        self.wait_port(self.port, timeout)
        # The readiness probe was an accepted connection; tests count from zero.
        self.reset_stats()
        return self

    def _get(self, path: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            # Closing from the upstream side first keeps its open-connection
            # gauge from still counting this query when the next one arrives.
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            return json.loads(resp.read())
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        """{"requests": {path: {method: n}}, "connections": n, "open_connections": n}.

        Connections opened for these queries are not counted.
        """
        return self._get("/__stats")

    def requests(self, path: str, method: str = "GET") -> int:
        """How many requests for path with method arrived (counted at their head)."""
        return self.stats()["requests"].get(path, {}).get(method, 0)

    def reset_stats(self) -> None:
        self._get("/__reset")


def render_toml(config: Mapping[str, Any]) -> str:
    """TOML for the config shapes the gateway uses (tables, arrays of tables).

    None values are left out, which lets an override delete a default key.
    """
    lines: list[str] = []
    scalars = {k: v for k, v in config.items() if not _is_table(v) and not _is_table_array(v)}
    lines.extend(_key_lines(scalars))
    for key, value in config.items():
        if _is_table(value):
            lines.append(f"\n[{key}]")
            lines.extend(_key_lines(value))
        elif _is_table_array(value):
            for item in value:
                lines.append(f"\n[[{key}]]")
                lines.extend(_key_lines(item))
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(
        isinstance(v, Mapping) for v in value
    )


def _key_lines(table: Mapping[str, Any]) -> list[str]:
    return [f"{_key(k)} = {_value(v)}" for k, v in table.items() if v is not None]


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML basic-string escapes.
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()
                               if v is not None) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def gateway_config(upstreams: Sequence[str], *, port: int | None = None,
                   school: Mapping[str, Any] | None = None, **overrides: Any) -> str:
    """A minimal config: one school "school" for school.test in front of upstreams.

    ``school`` updates the school's keys; every other keyword names a section
    whose keys are merged into the defaults (a non-dict replaces the section,
    e.g. ``schools=[...]``); a None value removes a key.
    """
    config: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{port or free_port()}"},
        "schools": [{"name": "school", "hosts": list(HOSTS), "upstreams": list(upstreams)}],
    }
    if school:
        config["schools"][0].update(school)
    for section, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(config.get(section), Mapping):
            config[section] = {**config[section], **value}
        else:
            config[section] = value
    return render_toml(config)


class Gateway(ManagedProcess):
    """``python -m gateway run --config <file>`` from a TOML string or a dict."""

    def __init__(self, config: str | Mapping[str, Any], log_dir: Path,
                 name: str = "gateway") -> None:
        self.config_path = log_dir / f"{name}.toml"
        super().__init__(name, [sys.executable, "-m", "gateway", "run", "--config",
                                str(self.config_path)], log_dir / f"{name}.log")
        self.write_config(config)

    def write_config(self, config: str | Mapping[str, Any]) -> None:
        """Replace the config file (a reload signal is up to the caller)."""
        text = config if isinstance(config, str) else render_toml(config)
        self.config = tomllib.loads(text)
        self.config_path.write_text(text)
        server = self.config.get("server", {})
        self.host, port = server.get("listen", "127.0.0.1:8080").rsplit(":", 1)
        self.port = int(port)
        admin = server.get("admin_listen")
        self.admin_port = int(admin.rsplit(":", 1)[-1]) if admin else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str | None:
        return None if self.admin_port is None else f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 15.0) -> Gateway:
        self._spawn()
        self.wait_port(self.port, timeout)
        if self.admin_port is not None:
            self.wait_admin(timeout)
        return self

    def wait_admin(self, timeout: float) -> None:
        """Block until the admin process answers /healthz with 200: a worker
        has sent it a snapshot, so its figures describe the gateway."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            if not self.alive():
                raise ProcessDied(f"{self.name} exited with {self.returncode}\n{self.log()}")
            if time.monotonic() > deadline:
                raise ProcessDied(f"{self.name}: admin /healthz not ready within "
                                  f"{timeout}s\n{self.log()}")
            time.sleep(0.05)


class RssSampler:
    """Samples a process tree's RSS in a thread while a transfer runs.

    ``with RssSampler(gw) as rss: ...`` then ``rss.idle`` (before) and
    ``rss.peak`` (the highest sample, including one taken at exit).
    """

    def __init__(self, proc: ManagedProcess, interval: float = 0.05) -> None:
        self._proc = proc
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.idle = 0
        self.peak = 0
        self.samples = 0

    def _sample(self) -> None:
        self.peak = max(self.peak, self._proc.rss())
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self.idle = self.peak = self._proc.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def growth(self) -> int:
        return self.peak - self.idle
