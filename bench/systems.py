"""Starting, watching and always stopping the processes a benchmark measures.

Every process runs in its own session (so one signal reaches nginx's master
and workers alike) inside one temporary directory, and is told by the kernel
to die with the harness (PR_SET_PDEATHSIG) so that even a SIGKILLed harness
leaves no proxy behind. `Stack` owns all of it: leaving its `with` block, by
return, exception or Ctrl-C, stops every process and removes the directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import configs, cpu

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
# Children run in the temp dir, so they find `gateway` and `bench` through this.
REPO_ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A system could not be started or misbehaved in a way that voids a run."""


def run_main(name: str, main, errors: tuple[type[BaseException], ...] = ()) -> None:
    """Run a bench's main() as a command: its return value is the exit status;
    2 when a system could not be set up or measured, 130 on Ctrl-C (every
    process was stopped by then)."""
    try:
        sys.exit(main())
    except (BenchError, *errors) as exc:
        print(f"bench.{name}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"bench.{name}: interrupted; every system was stopped", file=sys.stderr)
        sys.exit(130)


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def hard_fd_limit() -> int:
    """The most descriptors a child may raise its own limit to."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted`; children inherit it.

    Returns the soft limit now in force, which is capped by the hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM (and SIGINT, even if inherited as ignored) unwind like Ctrl-C.

    SIGTERM is re-raised as SIGINT rather than turned into an exception on
    the spot: while an event loop runs, an exception raised in a signal
    handler lands in whatever callback was executing and is swallowed as a
    transport error, whereas asyncio.Runner answers SIGINT by cancelling its
    main task and raising KeyboardInterrupt afterwards. Outside a loop,
    SIGINT raises KeyboardInterrupt directly. Either way `finally` blocks
    stop the systems.
    """

    def _as_sigint(signum: int, frame: object) -> None:
        signal.raise_signal(signal.SIGINT)

    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_term = signal.signal(signal.SIGTERM, _as_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found.extend(int(c) for c in fh.read().split())
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Service:
    """One started system: its listening port and its process (tree)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def rss_kib(self) -> int:
        """Resident memory of the whole process tree right now."""
        return sum(_status_kib(p, "VmRSS") for p in process_tree(self.proc.pid))

    def peak_rss_kib(self) -> int:
        """Sum of each live process's own high-water mark (VmHWM)."""
        return sum(_status_kib(p, "VmHWM") for p in process_tree(self.proc.pid))

    def cpu_snapshot(self) -> cpu.Snapshot:
        """CPU ticks so far of every process in the tree (see bench.cpu)."""
        return cpu.snapshot(process_tree(self.proc.pid))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def wait_listening(service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not service.alive():
            raise BenchError(
                f"{service.name} exited with {service.proc.returncode} before listening;"
                f" log:\n{service.log_tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((HOST, service.port), 0.5):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{service.name} not listening on {service.port} after {timeout}s")
        time.sleep(0.05)


class Stack(contextlib.AbstractContextManager["Stack"]):
    """A temporary directory plus every process started in it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="schoolgate-bench-"))
        # nginx workers drop to `nobody` when started as root and must still
        # reach their prefix.
        self.dir.chmod(0o755)
        self.services: list[Service] = []

    def subdir(self, name: str) -> Path:
        path = self.dir / name
        path.mkdir(mode=0o755, exist_ok=True)
        return path

    def start(
        self, name: str, argv: Sequence[str], port: int, *, ready_timeout: float = 15.0
    ) -> Service:
        log = self.dir / f"{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        service = Service(name, port, proc, log)
        self.services.append(service)
        wait_listening(service, ready_timeout)
        return service

    def stop(self, service: Service) -> None:
        if service in self.services:
            self.services.remove(service)
        _stop(service.proc)

    def close(self) -> None:
        while self.services:
            self.stop(self.services[-1])
        shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    # The process leads its own session, so its pid is also the group id of
    # everything it forked (nginx workers, gateway workers).
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)


# -- the systems ------------------------------------------------------------


def start_upstream(stack: Stack, *, workers: int = 1) -> Service:
    """nginx as origin: `/` answers "ok", `/64k` serves a 64 KiB file."""
    root = stack.subdir("upstream")
    (root / "64k").write_bytes(bytes(range(256)) * 256)
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(configs.nginx_upstream(port=port, workers=workers, root=root))
    return stack.start("upstream", ["nginx", "-p", str(root), "-c", str(conf)], port)


def start_nginx(
    stack: Stack, upstream_port: int, *, workers: int = 1,
    overload: configs.OverloadPolicy | None = None, keepalive_timeout: float = 75.0,
    max_clients: int = 4096,
) -> Service:
    prefix = stack.subdir("nginx")
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(configs.nginx_proxy(
        port=port, upstream_port=upstream_port, workers=workers, prefix=prefix,
        overload=overload, keepalive_timeout=keepalive_timeout, max_clients=max_clients,
        fd_limit=hard_fd_limit(),
    ))
    return stack.start("nginx", ["nginx", "-p", str(prefix), "-c", str(conf)], port)


def start_haproxy(
    stack: Stack, upstream_port: int, *, threads: int = 1,
    overload: configs.OverloadPolicy | None = None, keepalive_timeout: float = 75.0,
    max_clients: int = 4096,
) -> Service:
    port = free_port()
    conf = stack.subdir("haproxy") / "haproxy.cfg"
    conf.write_text(configs.haproxy(
        port=port, upstream_port=upstream_port, threads=threads, overload=overload,
        keepalive_timeout=keepalive_timeout, max_clients=max_clients,
        fd_limit=hard_fd_limit(),
    ))
    return stack.start("haproxy", ["haproxy", "-db", "-f", str(conf)], port)


def gateway_unavailable() -> str | None:
    """Why `python -m gateway run` cannot be benchmarked yet, or None if it can."""
    if importlib.util.find_spec("gateway.__main__") is None:
        return "gateway/__main__.py does not exist yet"
    return None


# The gateway as measured: admission on, the same config with it off, and
# admission on with the limits shared through a Redis the bench starts.
GATEWAYS = {"gateway": True, "gateway-noadm": False, "gateway-redis": True}


def start_redis(stack: Stack) -> Service:
    """A redis-server of the stack's own on a free port, no persistence;
    stopped (by its PID, the leader of its own session) with the stack.
    The same one for every gateway that asks (several instances share it)."""
    for service in stack.services:
        if service.name == "redis":
            return service
    port = free_port()
    root = stack.subdir("redis")
    argv = ["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
            "--appendonly", "no", "--dir", str(root)]
    return stack.start("redis", argv, port)


def start_gateway(
    stack: Stack, upstream_port: int, *, workers: int = 1,
    overload: configs.OverloadPolicy | None = None, keepalive_timeout: float = 75.0,
    name: str = "gateway", instance: str | None = None,
) -> Service:
    """`name` is one of GATEWAYS: "gateway-noadm" runs with `[admission]
    enabled = false`, "gateway-redis" shares its limits through the stack's
    redis-server (start_redis). `instance` names a second instance of the
    same system (its own directory and service name)."""
    label = instance or name
    port = free_port()
    conf = stack.subdir(label) / "gateway.toml"
    redis_url = ""
    if name == "gateway-redis":
        redis_url = f"redis://{HOST}:{start_redis(stack).port}/0"
    conf.write_text(configs.gateway(
        port=port, upstream_port=upstream_port, workers=workers, overload=overload,
        keepalive_timeout=keepalive_timeout, admission_enabled=GATEWAYS[name],
        redis_url=redis_url,
    ))
    argv = [sys.executable, "-m", "gateway", "run", "--config", str(conf)]
    return stack.start(label, argv, port, ready_timeout=30.0)


def start_slow_upstream(stack: Stack, *, capacity: int, service_time: float) -> Service:
    port = free_port()
    argv = [
        sys.executable, "-m", "bench.slow_upstream", "--port", str(port),
        "--capacity", str(capacity), "--service-time", str(service_time),
    ]
    return stack.start("slow-upstream", argv, port)


def start_proxies(
    stack: Stack, names: Sequence[str], upstream: Service, *, workers: int = 1,
    overload: configs.OverloadPolicy | None = None, keepalive_timeout: float = 75.0,
    max_clients: int = 4096,
) -> dict[str, Service]:
    """The named systems in front of `upstream`; "direct" is the upstream itself.

    "gateway-noadm" is the gateway with admission switched off.

    `workers` is nginx's worker_processes, HAProxy's nbthread and the
    gateway's workers. `max_clients` sizes nginx's worker_connections and
    HAProxy's maxconn, which refuse clients past them; the gateway has no
    such global cap.
    """
    common = {"overload": overload, "keepalive_timeout": keepalive_timeout}
    started: dict[str, Service] = {}
    for name in names:
        if name == "direct":
            started[name] = upstream
        elif name in GATEWAYS:
            started[name] = start_gateway(
                stack, upstream.port, workers=workers, name=name, **common
            )
        elif name == "nginx":
            started[name] = start_nginx(
                stack, upstream.port, workers=workers, max_clients=max_clients, **common
            )
        elif name == "haproxy":
            started[name] = start_haproxy(
                stack, upstream.port, threads=workers, max_clients=max_clients, **common
            )
        else:
            raise BenchError(f"unknown system {name!r}")
    return started


# The programs a system (or the harness, under the key "wrk") runs.
BINARIES = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk",
            "gateway-redis": "redis-server", "gateway-redis-x2": "redis-server"}


def resolve_systems(
    requested: Sequence[str], known: Sequence[str], extra_binaries: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """Split the requested systems into runnable ones and notes on skipped ones.

    Raises BenchError naming every program that is needed but missing: the
    chosen proxies' own, and `extra_binaries` ("wrk", or "nginx" for an
    nginx origin).
    """
    chosen, notes = [], []
    for name in requested:
        if name not in known:
            raise BenchError(f"unknown system {name!r}; choose from {', '.join(known)}")
        if name in GATEWAYS and (reason := gateway_unavailable()):
            notes.append(f"{name} skipped: {reason}")
            continue
        chosen.append(name)
    needed = {BINARIES[n] for n in [*chosen, *extra_binaries] if n in BINARIES}
    missing = sorted(b for b in needed if shutil.which(b) is None)
    if missing:
        raise BenchError(
            f"not on PATH: {', '.join(missing)} (Debian packages of the same names;"
            " `scripts/bootstrap --test` installs them)"
        )
    return chosen, notes
