"""``schoolgate demo``: the gateway in front of demo school platforms.

Starts the demo upstream servers as subprocesses on free loopback ports,
writes a gateway config for them into a temporary directory, prints the URLs
to open (the schools, the status page) and runs the gateway in this process,
whose access log comes out on the console as one readable line per request
(admitted, queued, waiting page), so admission can be watched at work.
Whatever way the gateway ends
(Ctrl-C, SIGTERM, an error), the upstreams are stopped; and since each one
also exits when its stdin pipe from this process closes, not even a SIGKILL
here leaves them behind.
"""

from __future__ import annotations

import errno
import json
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..config import parse_config

START_TIMEOUT = 10.0  # for an upstream to report its port
STOP_TIMEOUT = 5.0  # for an upstream to exit after SIGTERM, before SIGKILL


@dataclass(frozen=True)
class DemoSchool:
    name: str
    title: str
    upstreams: int  # how many upstream processes, to show balancing


SCHOOLS = (
    DemoSchool("linden", "Lindenschule", 2),
    DemoSchool("berg", "Gymnasium am Berg", 1),
)


class Upstreams:
    """The demo upstream processes; a context manager that always stops them."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, school: DemoSchool) -> int:
        """Start one upstream for ``school``; returns its port once it listens."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.demo.upstream", "--port", "0",
             "--school", school.name, "--title", school.title, "--watch-stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Own session: Ctrl-C reaches only the gateway, which drains its
            # requests before the upstreams are told to stop.
            start_new_session=True,
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        line = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
        if not line.startswith("listening on http://"):
            raise RuntimeError(f"demo upstream for {school.name!r} did not start "
                               f"(exit status {proc.poll()}, said {line!r})")
        return int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        for proc in self._procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.stdout.close()
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def __enter__(self) -> Upstreams:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for the admin listener)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_problem(port: int, host: str = "127.0.0.1") -> str | None:
    """Why the gateway could not listen on ``host:port``, or None if it can.

    Bound without SO_REUSEPORT, unlike the gateway's own listeners, so that
    a gateway already running there (a second demo, say) counts as using
    the port instead of silently sharing it. SO_REUSEADDR as there, so a
    port left in TIME_WAIT by the last demo is free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} is in use; try {_try_port(port, host)}"
            if exc.errno == errno.EACCES and port < 1024:
                return (f"cannot listen on {host}:{port}: ports below 1024 need root; "
                        "try --port 8080")
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _try_port(port: int, host: str) -> str:
    """The advice for a busy port: the next free one above it, if one is near."""
    for candidate in range(port + 1, min(port + 100, 65535) + 1):
        if _free(candidate, host):
            return f"./scripts/demo --port {candidate} (or schoolgate demo --port {candidate})"
    return "another with --port N"


def _free(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _toml(value: object) -> str:
    # JSON strings and arrays of strings are valid TOML basic strings/arrays.
    return json.dumps(value)


def demo_config(port: int, admin_port: int, ports: dict[str, list[int]]) -> str:
    """The gateway config for the demo: tight limits so queueing is visible."""
    parts = [
        "# Written by `schoolgate demo`; deleted when the demo stops.\n",
        "[server]",
        f"listen = {_toml(f'127.0.0.1:{port}')}",
        f"admin_listen = {_toml(f'127.0.0.1:{admin_port}')}",
        "",
        "[admission]",
        f"secret = {_toml(secrets.token_hex(32))}",
        "max_queue = 200",
        "",
        "# The access log on the console, one readable line per request.",
        "[log]",
        "access = \"stdout\"",
        "format = \"text\"",
        "",
    ]
    for i, school in enumerate(SCHOOLS):
        hosts = [f"{school.name}.localhost"] + (["*"] if i == 0 else [])
        upstreams = [f"127.0.0.1:{p}" for p in ports[school.name]]
        parts += [
            "[[schools]]",
            f"name = {_toml(school.name)}",
            f"title = {_toml(school.title)}",
            f"hosts = {_toml(hosts)}",
            f"upstreams = {_toml(upstreams)}",
            "max_inflight = 6",
            "rate = 30.0",
            "burst = 60",
            "balance = \"least_inflight\"",
            "",
        ]
    parts += [
        "# Joining a lesson beats everything; bulk jobs wait and get a small share.",
        "[[classes]]",
        "name = \"lesson\"",
        "priority = 30",
        "max_wait = 20.0",
        "match = { paths = [\"/lesson/join\"] }",
        "",
        "[[classes]]",
        "name = \"bulk\"",
        "priority = 0",
        "max_wait = 30.0",
        "max_share = 0.3",
        "reject_status = 429",
        "match = { paths = [\"/api/import\", \"/big\"] }",
        "",
        "[[classes]]",
        "name = \"submit\"",
        "priority = 20",
        "max_wait = 60.0",
        "match = { methods = [\"POST\", \"PUT\"] }",
        "",
        "[[classes]]",
        "name = \"interactive\"",
        "priority = 10",
        "# Short, so the waiting page shows up soon when the demo school is full.",
        "max_wait = 5.0",
        "",
    ]
    return "\n".join(parts)


class _Stopped(Exception):
    """SIGTERM arrived outside the gateway's own handling."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def main(port: int = 8080) -> int:
    """Run the demo with the gateway on 127.0.0.1:``port``; returns an exit status
    (1, with one line saying why and what to try, when the port is taken)."""
    # Checked before anything starts or is printed: the gateway's own check
    # would come after the banner and name the demo's temporary config file.
    problem = port_problem(port)
    if problem is not None:
        print(f"schoolgate demo: {problem}", file=sys.stderr)
        return 1
    # Until the gateway installs its own handlers (and after it removes
    # them), SIGTERM unwinds through the finally blocks below.
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="schoolgate-demo-") as tmp, \
                Upstreams() as upstreams:
            ports = {s.name: [upstreams.start(s) for _ in range(s.upstreams)] for s in SCHOOLS}
            admin_port = free_port()
            text = demo_config(port, admin_port, ports)
            path = Path(tmp) / "gateway.toml"
            path.write_text(text, encoding="utf-8")
            parse_config(text.encode(), str(path), base_dir=tmp)
            _banner(port, admin_port, ports, path)
            from ..server.supervisor import run

            return run(str(path))
    except _Stopped:
        return 128 + signal.SIGTERM
    except RuntimeError as exc:  # an upstream that would not start
        print(f"schoolgate demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _banner(port: int, admin_port: int, ports: dict[str, list[int]], path: Path) -> None:
    lines = ["", "schoolgate demo", ""]
    for school in SCHOOLS:
        backends = ", ".join(str(p) for p in ports[school.name])
        lines.append(f"  {school.title:<20} http://{school.name}.localhost:{port}/"
                     f"   (upstream port {backends})")
    lines += [
        # demo_config gives the first school the catch-all host "*".
        f"  {'catch-all school':<20} http://127.0.0.1:{port}/"
        f"   (any other host name reaches {SCHOOLS[0].title})",
        f"  {'status page':<20} http://127.0.0.1:{admin_port}/",
        f"  {'metrics':<20} http://127.0.0.1:{admin_port}/metrics",
        "",
        f"  config: {path}",
        "  Browsers (and curl) resolve *.localhost to this machine, e.g.",
        f"  curl -T homework.pdf http://berg.localhost:{port}/upload",
        "",
        "  To see the waiting room, fill Lindenschule (6 requests at once) with slow",
        "  requests, then open it in a browser; it lets you in when they finish:",
        f"  for i in $(seq 40); do curl -s -o /dev/null "
        f"'http://linden.localhost:{port}/slow?ms=30000' & done",
        "",
        "  Each request is logged below: time, school/class, method and path, the",
        "  status, and what admission decided (admitted, queued N ms, waiting page).",
        "  Stop with Ctrl-C.",
        "",
    ]
    print("\n".join(lines), flush=True)
