"""One worker process: a uvloop event loop serving the listener.

Each worker binds its own listening socket with SO_REUSEPORT, so the kernel
spreads new connections across workers without a shared accept lock.
Signals: SIGTERM/SIGINT drain (stop accepting, finish in-flight requests,
close idle keep-alive connections, exit when none is left or at the drain
deadline); SIGHUP reloads the config file (a bad file keeps the old config
and logs why). A reload keeps the worker's admission state (App.take_over),
so limits hold across it, and open connections move to the new config at
their next request.
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
from gateway.server.admin import AdminProtocol
from gateway.shared.ledger import shared_allotment
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
    def __init__(self, config_path: str, cfg: Config, index: int) -> None:
        self.config_path = config_path
        self.index = index
        # The process count is fixed at start; a reload cannot change it.
        self.workers = cfg.server.workers
        # Limits shared with the other workers (shared memory) or instances
        # (Redis); None: this worker's static part (gateway/shared/ledger.py).
        allotment, self.ledger = shared_allotment(cfg, index, inherited())
        self.app = App(cfg, worker=index, workers=self.workers, allotment=allotment)
        # Apps replaced by a reload that still have connections (each moves to
        # the current App at its next request head).
        self.retired: list[App] = []
        self.server: asyncio.AbstractServer | None = None
        self.admin: asyncio.AbstractServer | None = None
        self.stopping: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ledger_task: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        cfg = self.app.cfg
        proto = b"https" if cfg.server.tls_cert else b"http"
        sock = bind_socket(cfg.server.listen, cfg.server.backlog)
        self.server = await loop.create_server(
            lambda: ClientProtocol(self.app, proto), sock=sock, ssl=tls_context(cfg),
            backlog=cfg.server.backlog,
        )
        if cfg.server.admin_listen:
            admin_sock = bind_socket(cfg.server.admin_listen, 128)
            self.admin = await loop.create_server(lambda: AdminProtocol(self), sock=admin_sock)
        self.stopping = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.call_later(REAP_INTERVAL, self._reap)
        # The ledger's I/O runs beside the requests, never in their way; the
        # admission timer drives the rounds (the allotment task's tick), so
        # arm it once even before the first request.
        self.ledger_task = (loop.create_task(self.ledger.run())
                            if self.ledger is not None else None)
        self.app.admission._rearm()
        log.info("worker %d serving %s", self.index, cfg.server.listen)
        await self.stopping

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
        if self.ledger_task is not None:
            self.ledger_task.cancel()
            await self.ledger.close()  # type: ignore[union-attr]
        if self.admin is not None:
            self.admin.close()
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
        self.retired = [app for app in previous if app.connections]
        log.info("worker %d reloaded %s", self.index, self.config_path)

    def _reap(self) -> None:
        now = time.monotonic()
        self.app.reap(now)
        if self.retired:
            for app in self.retired:
                app.reap(now)
            self.retired = [a for a in self.retired if a.connections]
        if self.stopping is not None and not self.stopping.done():
            self.loop.call_later(REAP_INTERVAL, self._reap)  # type: ignore[union-attr]


def worker_main(config_path: str, cfg: Config, index: int) -> int:
    """Entry point of a forked worker process."""
    worker = Worker(config_path, cfg, index)
    uvloop.run(worker.serve())
    return 0
