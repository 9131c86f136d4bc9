"""The parent process: validates the config, forks `workers` worker
processes, forwards signals and replaces workers that die.

The parent never runs an event loop or touches client traffic; it waits in
sigtimedwait so that signal handling is synchronous and race-free.

- SIGHUP: the file is re-read and checked here first; a bad file is logged
  and nothing is touched. A good one is announced to the workers with
  SIGHUP, and each re-reads it and swaps in a new App that keeps the
  worker's admission state (limits keep counting; see Worker.reload).
- SIGTERM / SIGINT: forwarded to the workers, which drain; after the drain
  timeout plus a grace period the rest are killed.
- SIGUSR1: forwarded to the workers, which reopen their access log file
  (`[log] access`; logrotate renames the file, then sends it).

With `admin_listen` set, one more child, the admin process
(gateway/server/admin.py), serves the admin listener for the whole gateway:
the workers send it snapshots of their counters over a Unix socket the
parent makes before forking anyone. It gets SIGHUP and SIGTERM like the
workers, ends after them, and is started again if it dies.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from gateway import exitcodes
from gateway.config import Config, ConfigError, config_warnings, load_config
from gateway.server.instance import AddressTaken, Claim, claim_addresses, listen_addresses

log = logging.getLogger("schoolgate")

GRACE = 5.0
RESPAWN_BACKOFF = 1.0
# A worker that dies this soon after starting, this many times in a row, is
# failing at startup (bad certificate, missing file): give up instead of
# respawning it forever.
EARLY_DEATH = 5.0
MAX_EARLY_DEATHS = 5
PR_SET_PDEATHSIG = 1


def _setup_logging() -> None:
    if logging.getLogger().handlers:
        return
    logging.basicConfig(
        level=os.environ.get("SCHOOLGATE_LOG", "INFO").upper(),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _claim_listeners(cfg: Config, config_path: str) -> Claim | None:
    """Claim the listen addresses before any worker is forked (see
    gateway.server.instance): the claim, or None after saying on stderr
    which address is taken and why (another schoolgate, another program)."""
    try:
        return claim_addresses(listen_addresses(cfg))
    except AddressTaken as err:
        print(f"schoolgate: {config_path}: {err}", file=sys.stderr)
        return None


def _log_warnings(cfg: Config, config_path: str) -> None:
    for warning in config_warnings(cfg, config_path):
        log.warning("%s", warning)


def _die_with_parent(parent: int) -> None:
    """A worker whose supervisor was killed (SIGKILL, OOM) must not keep the
    port: the kernel sends it SIGTERM, and it drains and exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: workers then outlive a killed supervisor
    if os.getppid() != parent:
        # The parent died before prctl took effect.
        os.kill(os.getpid(), signal.SIGTERM)


def preload() -> None:
    """Import everything a worker uses, then freeze it: called once, before
    the first fork.

    Why here and not in each worker: a worker that inherits the proxy's
    modules (uvloop, OpenSSL, the native modules) holds about 4.5 MiB less
    resident memory than one that imports them itself, since only the pages
    of those shared libraries that it touches after the fork count in its
    RSS (24.7 against 29.1 MiB with 64 clients, bench.memory's setup). That
    outweighs the supervisor's own larger share from three workers on, and
    is what the per-worker memory target is about. Frozen (gc.freeze), the
    objects made so far are never visited by a worker's garbage collector,
    so copy-on-write leaves their pages shared (about 1 MiB less private
    memory per worker).
    """
    import gateway.server.worker  # noqa: F401

    gc.freeze()


def _fork(what: str, main: Callable[[], int]) -> int:
    """Fork a child that runs `main` and exits with its code; returns the
    child's pid. The child restores default signal handling before its
    event loop installs its own, and dies with this process."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent(parent)
        code = main()
    except BaseException:
        log.exception("%s crashed", what)
    finally:
        logging.shutdown()
        os._exit(code)


def _spawn(config_path: str, cfg: Config, index: int,
           stats: socket.socket | None = None) -> int:
    """Fork worker `index`; `stats` is the admin process's snapshot socket
    (the worker connects to its address), or None."""
    def main() -> int:
        # Until the worker's loop handles it, a logrotate's SIGUSR1 must not
        # kill a starting worker (its default action).
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        stats_addr = None
        if stats is not None:
            stats_addr = stats.getsockname()
            stats.close()  # the admin process's to accept on, not ours
        from gateway.server.worker import worker_main

        return worker_main(config_path, cfg, index, stats_addr)

    return _fork(f"worker {index}", main)


def _spawn_admin(config_path: str, cfg: Config, stats: socket.socket) -> int:
    """Fork the admin process, which accepts the workers' snapshots on
    `stats` and serves admin_listen."""
    def main() -> int:
        from gateway.server.admin import admin_main

        return admin_main(config_path, cfg, stats)

    return _fork("admin process", main)


def run(config_path: str) -> int:
    _setup_logging()
    try:
        cfg = load_config(config_path)
    except ConfigError as err:
        print(f"schoolgate: {err}", file=sys.stderr)
        return exitcodes.CONFIG
    except OSError as err:
        print(f"schoolgate: {config_path}: {err.strerror}", file=sys.stderr)
        return exitcodes.CONFIG
    # Held while this process lives (and inherited by the workers).
    claim = _claim_listeners(cfg, config_path)
    if claim is None:
        return exitcodes.LISTEN
    _log_warnings(cfg, config_path)

    # Shared memory for the workers (limits shared between them without
    # Redis; gateway/shared/region.py), made before forking so all inherit it.
    from gateway.shared.region import Region, publish
    publish(Region.create())
    # Made before forking, so every worker signs waiting-room tickets with
    # the same key when the config sets none.
    from gateway.proxy.admission import process_secret
    from gateway.waiting.line_store import fleet_secret
    fleet = None
    if cfg.redis.url and not cfg.admission.secret:
        # Every instance naming this Redis signs with the key kept there.
        fleet = fleet_secret(cfg.redis)
        if fleet is None:
            log.warning("redis.url: Redis unreachable at start, so waiting-room tickets are "
                        "signed with a key of this instance only (set [admission] secret)")
    process_secret(fleet)
    preload()

    watched = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    stats: socket.socket | None = None
    admin: int | None = None  # the admin process's pid
    if cfg.server.admin_listen:
        from gateway.server.telemetry import stats_listener
        stats = stats_listener()
        admin = _spawn_admin(config_path, cfg, stats)
    workers: dict[int, int] = {}  # pid -> index
    started: dict[int, float] = {}  # pid -> spawn time
    early_deaths = [0] * cfg.server.workers
    for i in range(cfg.server.workers):
        pid = _spawn(config_path, cfg, i, stats)
        workers[pid] = i
        started[pid] = time.monotonic()
    log.info("schoolgate %s: %d worker(s) on %s", os.getpid(), len(workers), cfg.server.listen)

    stopping_since: float | None = None
    exit_code = 0
    while workers or admin:
        info = signal.sigtimedwait(watched, 0.5)
        sig = info.si_signo if info is not None else None
        if sig in (signal.SIGTERM, signal.SIGINT) and stopping_since is None:
            stopping_since = time.monotonic()
            log.info("stopping: draining %d worker(s)", len(workers))
            _signal_all(workers, signal.SIGTERM)
            _signal_one(admin, signal.SIGTERM)
        elif sig == signal.SIGHUP and stopping_since is None:
            _signal_one(admin, signal.SIGHUP)  # it reads the file itself, as workers do
            try:
                new_cfg = load_config(config_path)
            except (ConfigError, OSError) as err:
                log.error("reload refused, keeping the running configuration: %s", err)
            else:
                _log_warnings(new_cfg, config_path)
                if new_cfg.server.workers != cfg.server.workers:
                    log.warning("server.workers changes take effect on restart only")
                cfg = new_cfg
                _signal_all(workers, signal.SIGHUP)
                log.info("reloading %s", config_path)
        elif sig == signal.SIGUSR1:
            _signal_all(workers, signal.SIGUSR1)  # reopen the access log
        # Reap whatever exited (SIGCHLD or not: signals coalesce).
        while workers or admin:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                workers.clear()
                admin = None
                break
            if pid == 0:
                break
            if pid == admin:
                admin = None
                if stopping_since is None and stats is not None:
                    log.error("the admin process (pid %d) exited with %d; starting a new one",
                              pid, os.waitstatus_to_exitcode(status))
                    time.sleep(RESPAWN_BACKOFF)
                    admin = _spawn_admin(config_path, cfg, stats)
                continue
            index = workers.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            lived = time.monotonic() - started.pop(pid, 0.0)
            if stopping_since is None:
                early_deaths[index] = early_deaths[index] + 1 if lived < EARLY_DEATH else 0
                if early_deaths[index] >= MAX_EARLY_DEATHS:
                    log.error("worker %d failed %d times in a row at startup; giving up",
                              index, early_deaths[index])
                    stopping_since = time.monotonic()
                    exit_code = exitcodes.WORKERS
                    _signal_all(workers, signal.SIGTERM)
                    _signal_one(admin, signal.SIGTERM)
                    continue
                log.error("worker %d (pid %d) exited with %d; starting a new one",
                          index, pid, code)
                time.sleep(RESPAWN_BACKOFF)
                pid = _spawn(config_path, cfg, index, stats)
                workers[pid] = index
                started[pid] = time.monotonic()
            elif code not in (0, -signal.SIGTERM, -signal.SIGINT):
                # A worker still starting when the stop came dies of the
                # SIGTERM it was sent (its handler is set once it serves, so
                # it held nothing): an orderly stop, not a failure.
                exit_code = exitcodes.WORKERS
        if stopping_since is not None and (workers or admin) and \
                time.monotonic() - stopping_since > cfg.timeouts.drain + GRACE:
            log.error("drain deadline passed; killing %d worker(s)", len(workers))
            _signal_all(workers, signal.SIGKILL)
            _signal_one(admin, signal.SIGKILL)
    log.info("stopped")
    claim.close()
    return exit_code


def _signal_one(pid: int | None, sig: int) -> None:
    if pid is not None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _signal_all(workers: dict[int, int], sig: int) -> None:
    for pid in workers:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
