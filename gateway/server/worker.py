"""One worker process: a uvloop event loop serving the listener.

Each worker binds its own listening socket with SO_REUSEPORT, so the kernel
spreads new connections across workers without a shared accept lock.
Signals: SIGTERM/SIGINT drain (stop accepting, finish in-flight requests,
close idle keep-alive connections, exit when none is left or at the drain
deadline); SIGHUP reloads the config file (a bad file keeps the old config
and logs why); SIGUSR1 reopens the access log file (logrotate). The access
log is written every FLUSH_INTERVAL and at the end (gateway.server.logs);
warnings about requests and connections, the event loop's included, go
through one RateLimitedLog. A reload keeps the worker's admission state (App.take_over),
so limits hold across it, and open connections move to the new config at
their next request.

A worker serves no admin listener: it sends snapshots of its counters to
the supervisor's admin process (gateway/server/telemetry.py), which
answers for the whole gateway.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import time

import uvloop

from gateway.config import Config, ConfigError, load_config, parse_hostport
from gateway.proxy.app import App
from gateway.proxy.client import IDLE, ClientProtocol
from gateway.server.logs import FLUSH_INTERVAL, AccessLog, LimitFilter, RateLimitedLog
from gateway.server.telemetry import Publisher
from gateway.server.tlsport import TLSPortProtocol
from gateway.shared.ledger import give_back, shared_allotment
from gateway.shared.region import inherited
from gateway.waiting import clear_cache

log = logging.getLogger("schoolgate.worker")

REAP_INTERVAL = 0.25


def bind_socket(addr: str, backlog: int, reuse_port: bool = True) -> socket.socket:
    host, port = parse_hostport(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.server.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.server.tls_cert, cfg.server.tls_key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Worker:
    def __init__(self, config_path: str, cfg: Config, index: int,
                 stats_addr: str | None = None) -> None:
        """`stats_addr`: the admin process's snapshot socket (None: no
        admin listener, nothing is published)."""
        self.config_path = config_path
        self.index = index
        # The process count is fixed at start; a reload cannot change it.
        self.workers = cfg.server.workers
        # Limits shared with the other workers (shared memory) or instances
        # (Redis); None: this worker's static part (gateway/shared/ledger.py).
        allotment, self.ledger = shared_allotment(cfg, index, inherited())
        self.allotment = allotment
        # The waiting lines use the ledger's Redis client: one pool per worker.
        self.app = App(cfg, worker=index, workers=self.workers, allotment=allotment,
                       redis=getattr(self.ledger, "client", None))
        self.warnings = RateLimitedLog(log, cfg.log.warn_burst, cfg.log.warn_interval)
        self.access = AccessLog(cfg.log, self.warnings)
        # What asyncio/uvloop log per connection on their own, limited too.
        logging.getLogger("asyncio").addFilter(LimitFilter(self.warnings))
        # Apps replaced by a reload that still have connections (each moves to
        # the current App at its next request head).
        self.retired: list[App] = []
        self.server: asyncio.AbstractServer | None = None
        self.publisher = Publisher(self, stats_addr) if stats_addr else None
        self.stopping: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ledger_task: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        cfg = self.app.cfg
        proto = b"https" if cfg.server.tls_cert else b"http"
        # The ledger's I/O runs beside the requests, never in their way; the
        # admission timer drives the rounds (the allotment task's tick), armed
        # below, once the waiting lines run too.
        self.ledger_task = (loop.create_task(self.ledger.run())
                            if self.ledger is not None else None)
        if self.allotment is not None:
            # Like a proxy that joins its balancer only once ready, take no
            # connection before the shared limits first answered (or failed
            # over to the static part): a joiner enforcing no lease yet
            # would turn clients away from a fleet with room. Nothing is
            # queued yet, so these rounds admit nothing.
            deadline = time.monotonic() + self.allotment.stale_after + 1.0
            while not self.allotment.ready and time.monotonic() < deadline:
                self.allotment.tick(time.time())
                await asyncio.sleep(self.allotment.interval / 4)
        sock = bind_socket(cfg.server.listen, cfg.server.backlog)
        context = tls_context(cfg)
        if context is None:
            factory = lambda: ClientProtocol(self.app, proto)  # noqa: E731
        else:
            # TLS starts after a look at the first byte, so that plain HTTP
            # sent to this port gets a 400 (gateway/server/tlsport.py).
            factory = lambda: TLSPortProtocol(  # noqa: E731
                context, lambda: ClientProtocol(self.app, proto), self.app.timeouts.header)
        self.server = await loop.create_server(factory, sock=sock, backlog=cfg.server.backlog)
        if self.publisher is not None:
            publishing = loop.create_task(self.publisher.run())
        self.stopping = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.access.reopen)
        loop.set_exception_handler(self._loop_error)
        loop.call_later(REAP_INTERVAL, self._reap)
        loop.call_later(FLUSH_INTERVAL, self._flush_logs)
        self.app.admission.start()  # the waiting lines' syncs
        self.app.admission._rearm()
        log.info("worker %d serving %s", self.index, cfg.server.listen)
        await self.stopping
        if self.publisher is not None:
            publishing.cancel()
            # The last counts, so that none of this worker's are lost.
            await self.publisher.publish()
            self.publisher.close()

    # -- signals ----------------------------------------------------------------
    def drain(self) -> None:
        if self.app.draining:
            return
        busy = sum(len(app.connections) for app in (self.app, *self.retired))
        log.info("worker %d draining (%d client connection(s) open)", self.index, busy)
        deadline = time.monotonic() + self.app.timeouts.drain
        if self.server is not None:
            self.server.close()
        for app in (self.app, *self.retired):
            app.draining = True
            for conn in list(app.connections):
                if conn.phase == IDLE and not conn.queue:
                    conn.close()
        self.loop.create_task(self._wait_drained(deadline))  # type: ignore[union-attr]

    async def _wait_drained(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not any(app.connections for app in (self.app, *self.retired)):
                break
            await asyncio.sleep(0.05)
        for app in (self.app, *self.retired):
            for conn in list(app.connections):
                conn.abort()
            for server in app.servers.values():
                server.close_all()
        self.app.admission.close()  # one for all Apps
        if self.allotment is not None:
            if self.ledger_task is not None:
                self.ledger_task.cancel()  # no round of its own in between
            await give_back(self.allotment)
        if self.ledger_task is not None:
            self.ledger_task.cancel()
            await self.ledger.close()  # type: ignore[union-attr]
        if self.stopping is not None and not self.stopping.done():
            self.stopping.set_result(None)

    def reload(self) -> None:
        if self.app.draining:
            log.warning("worker %d is draining: reload ignored", self.index)
            return
        try:
            cfg = load_config(self.config_path)
        except ConfigError as err:
            log.error("reload failed, keeping the running configuration: %s", err)
            return
        except OSError as err:
            log.error("reload failed, keeping the running configuration: %s: %s",
                      self.config_path, err)
            return
        old = self.app
        if cfg.server != old.cfg.server:
            log.warning("[server] changes (listen, workers, TLS) take effect on restart only")
        previous = [old, *self.retired]
        try:
            new = App(cfg, servers=old.servers, worker=self.index, workers=self.workers,
                      admission=old.admission)
            new.take_over(previous)
        except (ValueError, OSError) as err:
            log.error("reload failed, keeping the running configuration: %s", err)
            return
        clear_cache()  # school templates may have changed on disk
        self.app = new
        self.access.configure(cfg.log)
        self.retired = [app for app in previous if app.connections]
        log.info("worker %d reloaded %s", self.index, self.config_path)

    def _flush_logs(self) -> None:
        self.access.flush()
        self.warnings.tick()
        if self.stopping is not None and not self.stopping.done():
            self.loop.call_later(FLUSH_INTERVAL, self._flush_logs)  # type: ignore[union-attr]

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """The event loop's reports (a callback that raised, a transport's
        fatal error, a failed TLS handshake) come per connection: rate-limited
        by kind, so a flood cannot fill the disk."""
        exc = context.get("exception")
        message = context.get("message") or "event loop error"
        key = ("loop", message, type(exc).__name__ if exc is not None else None)
        self.warnings.error(key, "%s: %r", message, exc,
                            exc_info=exc if isinstance(exc, BaseException) else None)

    def _reap(self) -> None:
        now = time.monotonic()
        self.app.reap(now)
        if self.retired:
            for app in self.retired:
                app.reap(now)
            self.retired = [a for a in self.retired if a.connections]
        if self.stopping is not None and not self.stopping.done():
            self.loop.call_later(REAP_INTERVAL, self._reap)  # type: ignore[union-attr]


def worker_main(config_path: str, cfg: Config, index: int, stats_addr: str | None = None) -> int:
    """Entry point of a forked worker process."""
    worker = Worker(config_path, cfg, index, stats_addr)
    try:
        uvloop.run(worker.serve())
    finally:
        # What ended during the drain (and its aborts) is written too.
        worker.access.close()
        worker.warnings.tick()
    return 0
