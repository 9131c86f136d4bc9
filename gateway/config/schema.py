"""Typed configuration, decoded from TOML by msgspec.

Every struct forbids unknown keys so that a typo is an error naming its key
path rather than a silently ignored setting. Every field but the listener and
a school's name, hosts and upstreams has a default, so the smallest useful
config is one `[server] listen` and one `[[schools]]` entry.

Durations are seconds (floats); sizes are bytes (ints).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct, field

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
Share = Annotated[float, Meta(gt=0, le=1)]


class _Section(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class Server(_Section):
    listen: str = "127.0.0.1:8080"
    workers: PositiveInt = 1
    # Admin listener: /metrics (Prometheus), /healthz, the status page (/,
    # /status.json). None disables it. A port alone ("9100") listens on
    # 127.0.0.1; any address that is not loopback needs admin_token.
    admin_listen: str | None = None
    # Bearer token the admin listener asks for on everything but /healthz
    # when bound to a non-loopback address (Authorization: Bearer <token>).
    admin_token: str | None = None
    # Or a file holding it (read at start and at every reload; relative to
    # the config's folder; trailing whitespace dropped): so the config can
    # be world-readable (systemd's DynamicUser) while the token is not. The
    # file must not be readable by every user; under systemd, hand it over
    # with LoadCredential= (deploy/schoolgate.service). After loading,
    # admin_token holds its content.
    admin_token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    backlog: PositiveInt = 2048
    # Client addresses whose X-Forwarded-For is believed (exact IPs or CIDRs).
    trusted_proxies: list[str] = field(default_factory=list)
    # Name put in the Via header.
    via_name: str = "schoolgate"
    # Directory for request bodies beyond a school's request_buffer_memory
    # and responses spooled for slow readers (response_buffer_max).
    # Each file is unlinked as it is created, so nothing is left behind, not
    # even after a crash. Empty: the system's temporary directory ($TMPDIR).
    temp_dir: str = ""


class Timeouts(_Section):
    # A client must deliver its whole request head within this (408 after).
    header: PositiveFloat = 10.0
    # Idle keep-alive client connections are closed after this.
    keepalive: PositiveFloat = 75.0
    # Gap allowed between two reads of a request body.
    client_body: PositiveFloat = 60.0
    # Whole-body deadline for a body received before its request is
    # admitted (a school's request_buffering): it must be complete within
    # client_body_total seconds plus one second per client_body_min_rate
    # bytes received, so an upload at a real pace always has time and a
    # trickle does not (408 after). 0 for the rate gives no allowance.
    client_body_total: PositiveFloat = 60.0
    client_body_min_rate: NonNegInt = 1024
    upstream_connect: PositiveFloat = 5.0
    # Gap allowed between two reads from the upstream while a response is due
    # (time the gateway itself paused the upstream for a slow client is not
    # counted).
    upstream_read: PositiveFloat = 60.0
    # A client whose output makes no progress this long (its socket takes
    # nothing, its response spool does not drain) is disconnected and all
    # it held freed, like nginx's send_timeout.
    client_send: PositiveFloat = 60.0
    # Idle pooled upstream connections are closed after this.
    upstream_idle: PositiveFloat = 30.0
    # SIGTERM: time given to in-flight requests before the worker exits.
    drain: PositiveFloat = 30.0
    # WebSocket / upgraded tunnels idle this long are closed.
    tunnel_idle: PositiveFloat = 600.0


class Limits(_Section):
    max_request_line: PositiveInt = 8192
    max_header_bytes: PositiveInt = 32768
    max_headers: PositiveInt = 100
    max_chunk_ext: PositiveInt = 4096
    # Header names containing "_" are ambiguous behind CGI-style upstreams
    # (X_User vs X-User): drop them silently or answer 400.
    underscore_headers: Literal["drop", "reject"] = "drop"
    # Bytes buffered per connection in either direction before the other
    # side's reading is paused. Bounds memory under slow readers/writers.
    max_buffer: PositiveInt = 262144
    # Pipelined requests parsed ahead of the one being answered.
    max_pipeline: PositiveInt = 16
    # 0 means no limit on request body size.
    max_body: NonNegInt = 0
    # Idle pooled connections kept per upstream server.
    upstream_keepalive: NonNegInt = 64


class Match(_Section):
    methods: list[str] = field(default_factory=list)
    # Path prefixes ("/api/import" matches "/api/import/users?x=1").
    paths: list[str] = field(default_factory=list)
    # Header name -> required value; "*" only requires the header be present.
    headers: dict[str, str] = field(default_factory=dict)


class Window(_Section):
    """A time window in which a class runs under a different share."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = field(
        default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"]
    )
    start: str = "07:30"
    end: str = "16:00"
    tz: str = "UTC"
    max_share: Share = 1.0


class TrafficClass(_Section):
    name: str
    # Higher is more urgent.
    priority: int = 0
    match: Match | None = None
    max_wait: NonNegFloat = 10.0
    max_share: Share | None = None
    windows: list[Window] = field(default_factory=list)
    # Status for requests of this class that cannot be admitted in time.
    reject_status: Literal[429, 503] = 503


class School(_Section):
    name: str
    hosts: list[str]
    upstreams: list[str]
    # 0 means unlimited for the three limits below.
    max_inflight: NonNegInt = 0
    max_connections: NonNegInt = 0
    rate: NonNegFloat = 0.0
    burst: NonNegInt = 0
    weight: PositiveFloat = 1.0
    balance: Literal["round_robin", "least_inflight"] = "round_robin"
    # Optional per-client-address bucket (0 disables).
    client_rate: NonNegFloat = 0.0
    client_burst: NonNegInt = 0
    # Name of a shared [[pools]] entry this school's upstreams belong to.
    pool: str | None = None
    # Directory with waiting-room template overrides.
    templates: str | None = None
    # Display name on pages; defaults to name.
    title: str | None = None
    # Pass CONNECT requests on (a tunnel once the upstream answers 2xx).
    # Off by default: a school's web server has no use for them, and a
    # tunnel carries bytes past routing and admission.
    allow_connect: bool = False
    # Request buffering: a request body is received whole at the gateway
    # before the request takes one of the school's slots (max_inflight), so
    # a slow or vanished client costs a connection and a buffer, never a
    # slot. Off: the body streams to the upstream at the client's pace,
    # holding a slot meanwhile.
    request_buffering: bool = True
    # Bytes of one body held in memory; the rest goes to a temporary file
    # in [server] temp_dir.
    request_buffer_memory: PositiveInt = 65536
    # Bodies up to this size are received whole first. A larger one takes a
    # slot once this much has arrived and streams the rest at the client's
    # pace. [limits] max_body still refuses bodies above it (413).
    request_buffer_max: PositiveInt = 1073741824
    # Response bytes a client's connection holds in memory while the client
    # reads slowly (its socket buffer's high-water mark, then as much again
    # in its response spool). None: [limits] max_buffer.
    response_buffer: PositiveInt | None = None
    # Response spooling, like nginx's proxy_max_temp_file_size: beyond
    # response_buffer, response bytes for a slow reader go to an unnamed
    # temporary file in [server] temp_dir, so a response up to this size
    # completes at the upstream's pace and frees its slot and upstream
    # connection while the client reads. Past it the upstream is paused until
    # the client has caught up. 0: never spool (the upstream is paused at
    # response_buffer and the slot held while the client reads).
    response_buffer_max: NonNegInt = 1073741824


class Pool(_Section):
    """An upstream capacity shared by several schools (the cloud case)."""

    name: str
    max_inflight: PositiveInt


class Admission(_Section):
    # Off: every request is forwarded at once (no limits, queues or waiting
    # room); for measuring what admission costs, or for plain proxying.
    enabled: bool = True
    # Requests waiting per school before new ones are turned away at once.
    max_queue: PositiveInt = 1000
    # Seconds a waiting request ages one priority step (so bulk still moves).
    aging: PositiveFloat = 30.0
    # HMAC key for waiting-room tickets (at least 16 bytes). When empty:
    # with [redis] url, the key every instance keeps in Redis (made by the
    # first to start), so tickets span instances; without, one random key
    # per gateway, made by the supervisor before it forks (all its workers
    # share it; tickets survive reloads, not restarts).
    secret: str = ""
    # Or a file holding it, like server.admin_token_file (read at start and
    # at every reload, not readable by every user); after loading, secret
    # holds its content.
    secret_file: str | None = None
    # Seconds a ticket keeps its place after its last renewal (renewed only
    # while the visitor waits; used up by the request that gets in).
    ticket_ttl: PositiveFloat = 600.0
    # Retry-After floor/ceiling in seconds.
    min_retry: PositiveInt = 1
    max_retry: PositiveInt = 120
    # The waiting line: a visitor whose page stopped polling leaves the line
    # after waiting_grace seconds; a visitor told "your turn" whose reload
    # has not got in leaves after called_grace seconds.
    waiting_grace: PositiveFloat = 30.0
    called_grace: PositiveFloat = 15.0
    # While a school's queue is busy, its line calls this many seconds of
    # the measured admission rate ahead (their reloads line up by their
    # first arrival), so the line keeps pace with the queue.
    call_ahead: NonNegFloat = 2.0


class Redis(_Section):
    # redis://, rediss:// (TLS) or unix:// URL of the Redis (or Valkey) every
    # instance of a fleet names; "" keeps the limits to this instance (its
    # workers still share them exactly, through shared memory).
    url: str = ""
    # Put before every key, so several fleets can share one Redis.
    prefix: str = "schoolgate:"
    # Seconds between two rounds of a worker with the shared ledger (Redis,
    # or shared memory between the workers): how soon slots and tokens move
    # to where the demand is.
    sync_interval: PositiveFloat = 0.1
    # Seconds a worker's lease on its part of the limits lasts without a
    # renewal: the slots of a killed instance are free again after it and a
    # round or two (measured 5.2 s with 5.0; 4.5 keeps it under 5 s).
    lease_ttl: PositiveFloat = 4.5


class Log(_Section):
    """The access log (one line per request) and the warnings' pace."""

    # "stdout" (journald keeps it under systemd), "off", or a file (opened
    # by each worker for appending; SIGUSR1 to the gateway reopens it, for
    # logrotate). A relative path is taken from the config file's directory.
    access: str = "stdout"
    # "json": one JSON object per line (time, school, class, method, path,
    # status, decision, queue_ms, reason, upstream, upstream_ms, bytes_in,
    # bytes_out, duration_ms). "text": one readable line per request (the
    # demo's console).
    format: Literal["json", "text"] = "json"
    # Share of the lines kept for requests answered below 400 that were
    # forwarded (or answered by the gateway, like the waiting page's status
    # poll): 0.1 keeps about one in ten. Waiting pages, 429s, refusals and
    # every error are always kept.
    sample: Annotated[float, Meta(ge=0, le=1)] = 1.0
    # Keep query strings in the logged path. Off by default: a query string
    # may carry pupils' data (names, search terms, session tokens).
    query: bool = False
    # Lines a worker holds between two writes (every 0.1 s); beyond that,
    # lines are dropped and counted in a warning rather than held.
    buffer: PositiveInt = 10000
    # Rate limit of warnings (upstream down, hostile input refused): at
    # most warn_burst lines per kind per warn_interval seconds, then one
    # "suppressed N similar" line, so a flood cannot fill the disk.
    warn_burst: PositiveInt = 5
    warn_interval: PositiveFloat = 60.0


class Config(_Section):
    server: Server = field(default_factory=Server)
    schools: list[School] = field(default_factory=list)
    classes: list[TrafficClass] = field(default_factory=list)
    pools: list[Pool] = field(default_factory=list)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    admission: Admission = field(default_factory=Admission)
    redis: Redis = field(default_factory=Redis)
    log: Log = field(default_factory=Log)


def default_classes() -> list[TrafficClass]:
    """Classes used when the config names none.

    Order matters: the first class whose match fits wins, so bulk paths are
    tried before the method-based submit class (an import is often a POST).
    """
    return [
        TrafficClass(
            name="bulk",
            priority=0,
            match=Match(
                paths=["/import", "/export", "/report", "/sync", "/api/import",
                       "/api/export", "/api/report", "/api/sync", "/admin/import",
                       "/admin/export"],
            ),
            max_wait=30.0,
            reject_status=429,
        ),
        TrafficClass(
            name="submit",
            priority=20,
            match=Match(methods=["POST", "PUT"]),
            max_wait=60.0,
        ),
        TrafficClass(name="interactive", priority=10, max_wait=20.0),
    ]


__all__ = [
    "Admission", "Config", "Limits", "Log", "Match", "Pool", "Redis", "School", "Server",
    "Timeouts", "TrafficClass", "Window", "default_classes", "msgspec",
]
