"""Per-worker proxy state built from one Config: routing tables, upstream
pools, limits, and the responses the gateway makes itself.

An App is immutable in spirit: a reload builds a new App and swaps it in
(take_over). New connections get the new App; an open connection moves to it
when its next request head arrives (route), so keep-alive clients do not stay
on an old config. An exchange keeps the school it was routed to (upstreams,
title, templates) until it ends; a connection moves only when no exchange of
its is in progress. What must not restart on a reload lives on: the worker's
one Admission (reconfigured: every limit keeps counting what is in flight,
queued and connected), the upstream servers (handed over by address) and the
metrics.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

# waiting.render is looked up on use: the first page loads the page renderer.
from gateway import waiting
from gateway._native.accesslog import WAITING as WAITING_PAGE
from gateway._native.context import Context
from gateway._native.stats import PAGE_WAITING
from gateway.admission.allotment import AllotmentTask, StaticAllotment
from gateway.config import Config, effective_classes, parse_hostport
from gateway.http import HeadError, serialize_simple_response
from gateway.proxy.admission import STATUS_PATH, Admission
from gateway.proxy.exchange import WAITING, Exchange
from gateway.proxy.upstream import Balancer, UpstreamServer
from gateway.routing import Classifier, Router

if TYPE_CHECKING:
    from gateway.http import RequestHead
    from gateway.proxy.client import ClientProtocol
    from gateway.waiting import Page


@dataclass(eq=False)
class SchoolRuntime:
    index: int
    name: str
    title: str
    balancer: Balancer
    templates: str | None
    allow_connect: bool = False
    # Request and response buffering (see the School keys of that name).
    request_buffering: bool = True
    request_buffer_memory: int = 65536
    request_buffer_max: int = 1 << 30
    response_buffer: int | None = None
    response_buffer_max: int = 1 << 30
    # Counters exported on /metrics (requests: see the property).
    unavailable: int = 0
    rejected: int = 0
    # The Context that counts this school's routed requests (App sets it),
    # and the school's index in that config (`index` is renumbered by reloads).
    ctx: Context | None = field(default=None, repr=False)
    slot: int = -1

    @property
    def requests(self) -> int:
        """Requests routed to this school by its config: a C counter of the
        Context (Context.route counts the ordinary ones, App.route the rest)."""
        return self.ctx.school_requests(self.slot) if self.ctx is not None else 0


class Metrics:
    """The worker's counters exported on /metrics; they continue across
    reloads (each new App takes the previous one's Metrics)."""

    def __init__(self, ctx: Context) -> None:
        self.connections_total = 0
        self.protocol_errors: dict[int, int] = {}
        self.responses_local: dict[int, int] = {}
        # Request heads counted by the Contexts reloads retired, and the
        # current one (which counts in C).
        self._retired_requests = 0
        self._ctx = ctx

    @property
    def requests_total(self) -> int:
        """Request heads routed (to a school or to a 421) by this worker."""
        return self._retired_requests + self._ctx.requests_total

    def count_with(self, ctx: Context) -> None:
        """Count from now on with `ctx`, the config a reload installed; the
        one it replaced counts nothing more (it is superseded)."""
        if ctx is not self._ctx:
            self._retired_requests += self._ctx.requests_total
            self._ctx = ctx


class App:
    def __init__(self, cfg: Config, servers: dict[str, UpstreamServer] | None = None,
                 worker: int = 0, workers: int | None = None,
                 admission: Admission | None = None,
                 allotment: AllotmentTask | None = None, redis: object | None = None) -> None:
        """`servers` and `admission` come from the App a reload replaces;
        nothing of theirs changes until take_over() (so a failed build leaves
        the running config untouched). `allotment`: the task that sets this
        worker's part of the limits when the admission is made here
        (default StaticAllotment(worker, workers)); `redis`: the worker's
        Redis client (gateway.shared.redis.client), which the waiting lines
        use too (one connection pool per worker)."""
        self.cfg = cfg
        self.limits = cfg.limits
        self.timeouts = cfg.timeouts
        self.via = cfg.server.via_name.encode()
        self.reject_underscore = cfg.limits.underscore_headers == "reject"
        # Raw bytes a request head may take before it is refused outright.
        self.head_budget = cfg.limits.max_request_line + cfg.limits.max_header_bytes
        self._successor: App | None = None
        self.connections: set[ClientProtocol] = set()
        self.classes = effective_classes(cfg)
        self.router = Router([s.hosts for s in cfg.schools])
        self.classifier = Classifier([c.match for c in self.classes])
        # Upstream servers are keyed by address and may be handed over from
        # the previous App on reload, so pooled connections survive it.
        old = servers or {}
        self.servers: dict[str, UpstreamServer] = {}
        self.schools: list[SchoolRuntime] = []
        limits = cfg.limits
        for i, school in enumerate(cfg.schools):
            members = []
            for addr in school.upstreams:
                server = self.servers.get(addr) or old.get(addr)
                if server is None:
                    host, port = parse_hostport(addr)
                    # What an upstream may send is bounded like what a client
                    # may: its status line like a request line, its heads and
                    # trailers like request heads, its chunk lines alike.
                    server = UpstreamServer(
                        host, port,
                        keepalive=limits.upstream_keepalive,
                        connect_timeout=cfg.timeouts.upstream_connect,
                        idle_timeout=cfg.timeouts.upstream_idle,
                        max_buffer=limits.max_buffer,
                        max_status_line=limits.max_request_line,
                        max_header_bytes=limits.max_header_bytes,
                        max_headers=limits.max_headers,
                        max_chunk_ext=limits.max_chunk_ext,
                    )
                else:
                    server.set_limits(limits.max_request_line, limits.max_header_bytes,
                                      limits.max_headers, limits.max_chunk_ext)
                self.servers[addr] = server
                members.append(server)
            self.schools.append(SchoolRuntime(
                index=i, slot=i, name=school.name, title=school.title or school.name,
                balancer=Balancer(members, school.balance == "least_inflight"),
                templates=school.templates, allow_connect=school.allow_connect,
                request_buffering=school.request_buffering,
                request_buffer_memory=school.request_buffer_memory,
                request_buffer_max=school.request_buffer_max,
                response_buffer=school.response_buffer,
                response_buffer_max=school.response_buffer_max,
            ))
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in cfg.server.trusted_proxies]
        # A request no class matches (the config may name no catch-all class)
        # is judged as the least urgent class rather than not at all.
        prio = [c.priority for c in self.classes]
        self.fallback_class = max(range(len(prio)), key=lambda k: (-prio[k], k))
        # Each worker process enforces its share of the schools' limits: the
        # controller holds the whole config, the allotment task sets the
        # shares (at start and on every reload).
        if admission is None:
            admission = Admission(self, cfg, allotment or StaticAllotment(worker, workers),
                                  redis=redis)
        self.admission = admission
        # The typed view of this config the native protocol objects read
        # (limits, timeouts, via, draining, the admission core) and that
        # routes ordinary requests (Context.route; route() has the rest). It
        # builds exchanges by the name this module's route() uses.
        self.ctx = Context(self, cfg, self.admission.core, self.router, self.classifier,
                           self.schools, self.fallback_class, STATUS_PATH, globals())
        for school_rt in self.schools:
            school_rt.ctx = self.ctx
        self.metrics = Metrics(self.ctx)

    @property
    def successor(self) -> App | None:
        """The App a reload replaced this one with (route follows it)."""
        return self._successor

    @successor.setter
    def successor(self, app: App | None) -> None:
        self._successor = app
        # From now on App.route routes this config's requests (it moves
        # their connections to the newest App).
        self.ctx.superseded = app is not None

    @property
    def draining(self) -> bool:
        """Shutting down: finish what is in flight, keep no connection alive."""
        return self.ctx.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.ctx.draining = value

    def take_over(self, previous: list[App]) -> None:
        """Become the worker's current App after a reload.

        previous[0] is the App that served until now, the rest older ones
        that still have connections. The worker's admission state moves to
        this config (Admission.reconfigure, which may raise ValueError with
        nothing changed); the previous Apps follow this one (their
        connections move here at their next request head, their requests in
        flight finish where they were routed); servers kept by address take
        the new pool settings, servers no longer configured finish what is in
        flight on them and then close; metrics continue.
        """
        self.admission.reconfigure(
            self, self.cfg,
            lambda schools, classes: self._follow(previous, schools, classes))
        self.metrics = previous[0].metrics
        self.metrics.count_with(self.ctx)
        limits, timeouts = self.cfg.limits, self.cfg.timeouts
        for server in self.servers.values():
            server.keepalive = limits.upstream_keepalive
            server.connect_timeout = timeouts.upstream_connect
            server.idle_timeout = timeouts.upstream_idle
            server.max_buffer = limits.max_buffer
        for app in previous:
            app.close_servers_not_in(self.servers)

    def _follow(self, previous: list[App], schools: list[int], classes: list[int]) -> None:
        """Point the previous Apps here and renumber the admission indices
        they hold: schools[i] is old school i's new index (-1: the reload
        removed it), classes[k] old class k's."""
        renumbered: set[int] = set()

        def renumber(school: SchoolRuntime) -> None:
            if id(school) not in renumbered:
                renumbered.add(id(school))
                if school.index >= 0:
                    school.index = schools[school.index]

        for app in previous:
            app.successor = self
            for school in app.schools:
                renumber(school)
            for client in app.connections:
                if client.school >= 0:
                    client.school = schools[client.school]
                # Exchanges may hold a school of an App newer than their
                # connection's (routed while their connection could not move).
                for ex in client.queue:
                    if ex.school is None:
                        continue
                    renumber(ex.school)
                    if ex.klass >= 0:
                        ex.klass = classes[ex.klass]
                    if ex.state == WAITING and ex.local is None and (
                            ex.school.index < 0 or ex.klass < 0):
                        # Not started yet, and its school or class is gone.
                        ex.settle_keep_alive()
                        ex.reason = "its school or class was removed by a reload"
                        ex.local = self.removed_response(ex)

    # -- per request ----------------------------------------------------------
    def route(self, client: ClientProtocol, head: RequestHead) -> Exchange:
        """The Exchange for a request head on the rare paths, which
        Context.route (native, the same decisions for the rest) leaves
        here: a replaced config, a connection's first request, a trusted
        proxy's, no school at the host (421), CONNECT, the status path."""
        if self.successor is not None:
            # A reload replaced this config: the request is routed by the
            # newest one, and the connection moves there if nothing of it is
            # in progress (a pipelined exchange keeps the App it started on).
            return self._move(client).route(client, head)
        # head.host is the authority the request is forwarded with (an
        # absolute-form target's own, RFC 9112 3.2.2), and head.path/target
        # are what the upstream receives: routing, classification, admission
        # and the forwarded request all name the same school and resource.
        idx = self.router.route(head.host)
        self.ctx.count_request(idx)
        if idx < 0:
            ex = Exchange(client, head, None, -1)
            ex.keep_alive = False
            ex.reason = "no school is served at this host name"
            ex.local = self.error_response(HeadError(421, ex.reason))
            return ex
        school = self.schools[idx]
        klass = self.classifier.classify(head.method, head.path, head)
        if klass < 0:
            klass = self.fallback_class
        ex = Exchange(client, head, school, klass)
        if head.method == b"CONNECT" and not school.allow_connect:
            # Refused before admission: nothing of it reaches the upstream,
            # and llhttp hands what follows to a tunnel, so the connection
            # ends with the answer.
            ex.keep_alive = False
            ex.reason = "CONNECT is not enabled for this school"
            ex.local = self.error_response(HeadError(501, ex.reason))
            return ex
        if head.path == STATUS_PATH:
            ex.local = self.admission.status_response(ex)
            return ex
        if client.school < 0:
            # A connection counts against the school its first request names
            # (with admission off too, so the count is right if a reload
            # turns it on; only then is max_connections enforced).
            if self.admission.connection_open(idx):
                client.school = idx
            elif self.admission.enabled:
                ex.keep_alive = False
                ex.decision = WAITING_PAGE
                ex.reason = "max_connections"
                ex.local = self.page_response(self._busy_page(ex), ex)
                return ex
            limit = school.response_buffer
            if limit is not None and client.transport is not None:
                # What this client may leave unread in its transport before
                # response bytes go to its spool (or, without spooling, its
                # upstream is paused).
                client.transport.set_write_buffer_limits(high=limit, low=limit // 4)
            # Response spooling (client.pyx): as much again in memory, then a
            # temporary file up to response_buffer_max.
            client.resp_memory = limit if limit is not None else self.limits.max_buffer
            client.resp_max = school.response_buffer_max
        if client.trusted_peer:
            client.client_key = _forwarded_client(head.xff, self.trusted) or client.client_ip
        return ex

    def _move(self, client: ClientProtocol) -> App:
        """The newest App; `client` moves into it unless an exchange of the
        connection is still in progress."""
        app = self
        while app.successor is not None:
            app = app.successor
        if not client.queue and client in self.connections:
            self.connections.discard(client)
            app.connections.add(client)
            client.app = app
            client.ctx = app.ctx
            # As connection_opened would have judged it under the new config.
            client.trusted_peer = bool(app.trusted) and _in_networks(client.client_ip,
                                                                     app.trusted)
            client.client_key = client.client_ip
        return app

    def connection_opened(self, client: ClientProtocol) -> None:
        self.metrics.connections_total += 1
        self.connections.add(client)
        if self.trusted:
            client.trusted_peer = _in_networks(client.client_ip, self.trusted)

    def connection_closed(self, client: ClientProtocol) -> None:
        if client.school >= 0:
            self.admission.connection_close(client.school)
            client.school = -1


    # -- responses the gateway makes ---------------------------------------
    def error_response(self, err: HeadError) -> bytes:
        """A protocol error: short plain-text reason, then close."""
        status = err.status
        body = f"{status} {_phrase(status)}: {err.reason}\n".encode()
        return self.local_response(
            status,
            [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Cache-Control", b"no-store")],
            body, False,
        )

    def removed_response(self, ex: Exchange) -> bytes:
        """A request routed to a school (or class) that a reload removed
        before the request was sent: 503 with Retry-After. Nothing reached
        an upstream, so a retry is safe, and it is routed by the new config."""
        retry = str(self.cfg.admission.min_retry).encode()
        body = (b"503 Service Unavailable: the gateway's configuration changed before "
                b"this request was sent; nothing was sent, please retry\n")
        return self.local_response(
            503,
            [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Cache-Control", b"no-store"),
             (b"Retry-After", retry)],
            body, ex.keep_alive, head_only=ex.is_head,
        )

    def unavailable_page(self, ex: Exchange) -> bytes:
        """The school's server is not answering: 503 with Retry-After and a
        friendly page, never a bare 502."""
        # Only routed exchanges reach an upstream, so school and head are set.
        ex.school.unavailable += 1  # type: ignore[union-attr]
        # Whether any of the request left for the upstream: only if none did
        # may a submitted form's page say the school never received it.
        page = self.render_page("down", ex, retry_after=max(self.cfg.admission.min_retry, 5),
                                forwarded=ex.sent_at > 0.0)
        return self.page_response(page, ex)

    def _busy_page(self, ex: Exchange) -> Page:
        """The school is at max_connections: a waiting page, then close."""
        ex.school.rejected += 1  # type: ignore[union-attr]
        self.admission.core.stats.count_page(ex.school.index, ex.klass,  # type: ignore[union-attr]
                                             PAGE_WAITING)
        requested_with = ex.head.header(b"x-requested-with") or b""  # type: ignore[union-attr]
        return self.render_page("wait", ex, requested_with=requested_with,
                                retry_after=max(self.cfg.admission.min_retry, 2))

    def render_page(self, kind: str, ex: Exchange, **fields: Any) -> Page:
        """A page for a routed request, in the language and form it asks for,
        with its school's name and templates; `fields` are the rest."""
        school = ex.school
        head = ex.head
        return waiting.render(
            kind,  # type: ignore[arg-type]
            school_title=school.title,  # type: ignore[union-attr]
            accept=head.header(b"accept") or b"",  # type: ignore[union-attr]
            accept_language=head.header(b"accept-language") or b"",  # type: ignore[union-attr]
            original_url=head.target.decode("latin-1"),  # type: ignore[union-attr]
            templates_dir=school.templates,  # type: ignore[union-attr]
            method=head.method.decode("latin-1"),  # type: ignore[union-attr]
            **fields,
        )

    def page_response(self, page: Page, ex: Exchange) -> bytes:
        return self.local_response(page.status, page.headers, page.body, ex.keep_alive,
                                   head_only=ex.is_head)

    def local_response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                       keep_alive: bool, head_only: bool = False) -> bytes:
        self.metrics.responses_local[status] = self.metrics.responses_local.get(status, 0) + 1
        out = serialize_simple_response(status, _phrase(status).encode(), headers, body, keep_alive)
        if head_only:
            # HEAD: same head (with the body's Content-Length), no body.
            return out[: len(out) - len(body)] if body else out
        return out

    def count_protocol_error(self, status: int) -> None:
        errors = self.metrics.protocol_errors
        errors[status] = errors.get(status, 0) + 1

    # -- housekeeping ----------------------------------------------------------
    def reap(self, now: float) -> None:
        for conn in list(self.connections):
            conn.check_timeouts(now)
        for server in self.servers.values():
            server.reap_idle(now)

    def close_servers_not_in(self, keep: dict[str, UpstreamServer]) -> None:
        """Retire the servers `keep` does not hold: idle pooled connections
        close now; one in flight finishes its exchange and then closes (no
        pool slot is left for it), so a reload breaks no request."""
        for addr, server in self.servers.items():
            if keep.get(addr) is not server:
                server.keepalive = 0
                idle = server.idle
                while idle:
                    idle.pop().close()


def _in_networks(ip: bytes, networks: list) -> bool:
    try:
        addr = ipaddress.ip_address(ip.decode("latin-1"))
    except ValueError:
        return False
    return any(addr in net for net in networks)


def _forwarded_client(xff: bytes | None, trusted: list) -> bytes | None:
    """The client as our trusted proxies saw it: the right-most address in
    X-Forwarded-For that is not itself a trusted proxy (entries further left
    are whatever the client chose to send)."""
    if not xff:
        return None
    for part in reversed(xff.split(b",")):
        ip = part.strip()
        if ip and not _in_networks(ip, trusted):
            return ip
    return None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"

