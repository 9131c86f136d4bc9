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
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time

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
        # Until the worker's loop handles it, a logrotate's SIGUSR1 must not
        # kill a starting worker (its default action).
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
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
        return exitcodes.CONFIG
    except OSError as err:
        print(f"schoolgate: {config_path}: {err.strerror}", file=sys.stderr)
        return exitcodes.CONFIG
    # Held while this process lives (and inherited by the workers).
    claim = _claim_listeners(cfg, config_path)
    if claim is None:
        return exitcodes.LISTEN
    _log_warnings(cfg, config_path)

    if cfg.redis.url:
        log.warning("redis.url is set: the waiting line and the ticket key are shared "
                    "through Redis, but the limits (max_inflight, rates) are not yet: "
                    "this instance enforces its own limits")
    # Made before forking, so every worker signs waiting-room tickets with
    # the same key when the config sets none.
    from gateway.proxy.admission import process_secret
    from gateway.waiting.line_store import fleet_secret, prepare_region
    fleet = None
    if cfg.redis.url and not cfg.admission.secret:
        # Every instance naming this Redis signs with the key kept there.
        fleet = fleet_secret(cfg.redis)
        if fleet is None:
            log.warning("redis.url: Redis unreachable at start, so waiting-room tickets are "
                        "signed with a key of this instance only (set [admission] secret)")
    process_secret(fleet)
    if not cfg.redis.url:
        # The waiting lines shared by this instance's workers (made before
        # forking, so every worker maps the same memory).
        prepare_region()

    watched = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1}
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
        elif sig == signal.SIGUSR1:
            _signal_all(workers, signal.SIGUSR1)  # reopen the access log
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
                    exit_code = exitcodes.WORKERS
                    _signal_all(workers, signal.SIGTERM)
                    continue
                log.error("worker %d (pid %d) exited with %d; starting a new one",
                          index, pid, code)
                time.sleep(RESPAWN_BACKOFF)
                pid = _spawn(config_path, cfg, index)
                workers[pid] = index
                started[pid] = time.monotonic()
            elif code != 0:
                exit_code = exitcodes.WORKERS
        if stopping_since is not None and workers and \
                time.monotonic() - stopping_since > cfg.timeouts.drain + GRACE:
            log.error("drain deadline passed; killing %d worker(s)", len(workers))
            _signal_all(workers, signal.SIGKILL)
    log.info("stopped")
    claim.close()
    return exit_code


def _signal_all(workers: dict[int, int], sig: int) -> None:
    for pid in workers:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
