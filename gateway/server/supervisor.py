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
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time

from gateway.config import Config, ConfigError, config_warnings, load_config

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


def _check_bind(cfg: Config) -> tuple[str, str, OSError] | None:
    """Fail in the parent, with one clear message, if a port is taken:
    None, or the key, the address and the error of the first that is."""
    from gateway.server.worker import bind_socket

    for key, addr in (("server.listen", cfg.server.listen),
                      ("server.admin_listen", cfg.server.admin_listen)):
        if addr:
            try:
                bind_socket(addr, 1).close()
            except OSError as err:
                return key, addr, err
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


def _spawn(config_path: str, cfg: Config, index: int) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    # Child: restore default signal handling before the event loop installs its own.
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent(parent)
        from gateway.server.worker import worker_main

        code = worker_main(config_path, cfg, index)
    except BaseException:
        log.exception("worker %d crashed", index)
    finally:
        logging.shutdown()
        os._exit(code)


def run(config_path: str) -> int:
    _setup_logging()
    try:
        cfg = load_config(config_path)
    except ConfigError as err:
        print(f"schoolgate: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"schoolgate: {config_path}: {err.strerror}", file=sys.stderr)
        return 1
    taken = _check_bind(cfg)
    if taken is not None:
        key, addr, err = taken
        print(f"schoolgate: {config_path}: {key}: cannot listen on {addr}: "
              f"{err.strerror or err}", file=sys.stderr)
        return 1
    _log_warnings(cfg, config_path)

    # Shared memory for the workers (limits shared between them without
    # Redis; gateway/shared/region.py), made before forking so all inherit it.
    from gateway.shared.region import Region, publish
    publish(Region.create())
    # Made before forking, so every worker signs waiting-room tickets with
    # the same key when the config sets none.
    from gateway.proxy.admission import process_secret
    process_secret()

    watched = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    workers: dict[int, int] = {}  # pid -> index
    started: dict[int, float] = {}  # pid -> spawn time
    early_deaths = [0] * cfg.server.workers
    for i in range(cfg.server.workers):
        pid = _spawn(config_path, cfg, i)
        workers[pid] = i
        started[pid] = time.monotonic()
    log.info("schoolgate %s: %d worker(s) on %s", os.getpid(), len(workers), cfg.server.listen)

    stopping_since: float | None = None
    exit_code = 0
    while workers:
        info = signal.sigtimedwait(watched, 0.5)
        sig = info.si_signo if info is not None else None
        if sig in (signal.SIGTERM, signal.SIGINT) and stopping_since is None:
            stopping_since = time.monotonic()
            log.info("stopping: draining %d worker(s)", len(workers))
            _signal_all(workers, signal.SIGTERM)
        elif sig == signal.SIGHUP and stopping_since is None:
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
        # Reap whatever exited (SIGCHLD or not: signals coalesce).
        while workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                workers.clear()
                break
            if pid == 0:
                break
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
                    exit_code = 1
                    _signal_all(workers, signal.SIGTERM)
                    continue
                log.error("worker %d (pid %d) exited with %d; starting a new one",
                          index, pid, code)
                time.sleep(RESPAWN_BACKOFF)
                pid = _spawn(config_path, cfg, index)
                workers[pid] = index
                started[pid] = time.monotonic()
            elif code != 0:
                exit_code = 1
        if stopping_since is not None and workers and \
                time.monotonic() - stopping_since > cfg.timeouts.drain + GRACE:
            log.error("drain deadline passed; killing %d worker(s)", len(workers))
            _signal_all(workers, signal.SIGKILL)
    log.info("stopped")
    return exit_code


def _signal_all(workers: dict[int, int], sig: int) -> None:
    for pid in workers:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
