"""The parent process: validates the config, forks `workers` worker
processes, forwards signals and replaces workers that die.

The parent never runs an event loop or touches client traffic; it waits in
sigtimedwait so that signal handling is synchronous and race-free.

- SIGHUP: the file is re-read and checked here first; a bad file is logged
  and nothing is touched. A good one is announced to the workers with
  SIGHUP, and each re-reads it and swaps its App for new requests.
- SIGTERM / SIGINT: forwarded to the workers, which drain; after the drain
  timeout plus a grace period the rest are killed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from gateway.config import Config, ConfigError, load_config

log = logging.getLogger("schoolgate")

GRACE = 5.0
RESPAWN_BACKOFF = 1.0


def _setup_logging() -> None:
    if logging.getLogger().handlers:
        return
    logging.basicConfig(
        level=os.environ.get("SCHOOLGATE_LOG", "INFO").upper(),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _check_bind(cfg: Config) -> None:
    """Fail in the parent, with one clear message, if the port is taken."""
    from gateway.server.worker import bind_socket

    bind_socket(cfg.server.listen, 1).close()
    if cfg.server.admin_listen:
        bind_socket(cfg.server.admin_listen, 1).close()


def _spawn(config_path: str, cfg: Config, index: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    # Child: restore default signal handling before the event loop installs its own.
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
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
    try:
        _check_bind(cfg)
    except OSError as err:
        print(f"schoolgate: {config_path}: server.listen: cannot listen on "
              f"{cfg.server.listen}: {err.strerror}", file=sys.stderr)
        return 1

    watched = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    workers: dict[int, int] = {}  # pid -> index
    for i in range(cfg.server.workers):
        workers[_spawn(config_path, cfg, i)] = i
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
            if stopping_since is None:
                log.error("worker %d (pid %d) exited with %d; starting a new one",
                          index, pid, code)
                time.sleep(RESPAWN_BACKOFF)
                workers[_spawn(config_path, cfg, index)] = index
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
