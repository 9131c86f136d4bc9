"""Configuration text for every system under test.

Each proxy gets what a competent operator would write for the job, with the
same knobs set alike everywhere so a difference in numbers is a difference in
the proxy rather than in its defaults:

* one worker process / thread unless asked otherwise;
* no access log (none of the three writes one by default in this setup);
* keep-alive to clients and to the upstream, with no per-connection request
  cap (nginx closes a client connection after 1000 requests by default, which
  would charge it reconnects the others never pay);
* the same overload policy, translated into each proxy's own vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
BULK_PREFIX = "/api/import"


@dataclass(frozen=True)
class OverloadPolicy:
    """What every proxy is asked to enforce in front of a fragile upstream.

    At most `capacity` requests reach the upstream at once; up to `max_queue`
    more wait, each for at most `max_wait` seconds, and the rest are refused
    at once. `rate` is the upstream's throughput (capacity / service time),
    which nginx needs because it can only queue by shaping a rate.
    """

    capacity: int
    rate: float
    max_queue: int
    max_wait: float


def _secs(value: float) -> str:
    # nginx and HAProxy both accept milliseconds; whole ms avoid "0.5s" forms
    # one of them rejects.
    return f"{max(1, round(value * 1000))}ms"


def nginx_upstream(*, port: int, workers: int, root: Path) -> str:
    return f"""\
worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {_nginx_temp_paths(root)}
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server {{
        listen {HOST}:{port} backlog=4096;
        root {root};
        location = / {{ default_type text/plain; return 200 "ok"; }}
        location = /64k {{ default_type application/octet-stream; }}
    }}
}}
"""


def _nginx_temp_paths(prefix: Path) -> str:
    # Debian's build points these at /var/lib/nginx; keep every file in the run dir.
    return " ".join(
        f"{kind}_temp_path {prefix}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def nginx_proxy(
    *, port: int, upstream_port: int, workers: int, prefix: Path,
    overload: OverloadPolicy | None, keepalive_timeout: float, max_clients: int = 4096,
    fd_limit: int = 1 << 20,
) -> str:
    limits_http = limits_location = max_conns = ""
    if overload is not None:
        # Open-source nginx cannot queue for a free upstream slot (that is
        # nginx Plus's `queue`), so the queue is limit_req's burst: excess
        # requests are delayed to the upstream's rate, at most max_queue of
        # them. limit_conn caps what is being proxied at once, and max_conns
        # guards the upstream itself (nginx answers 502 past it).
        limits_http = (
            f"limit_req_zone $server_name zone=school:1m rate={round(overload.rate)}r/s;\n"
            "    limit_conn_zone $server_name zone=inflight:1m;"
        )
        limits_location = (
            f"limit_req zone=school burst={overload.max_queue};\n"
            f"            limit_conn inflight {overload.capacity};\n"
            "            limit_req_status 503;\n"
            "            limit_conn_status 503;"
        )
        max_conns = f" max_conns={overload.capacity}"
    return f"""\
worker_processes {workers};
worker_rlimit_nofile {min(2 * max_clients + 1024, fd_limit)};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {max_clients + 1024}; }}
http {{
    access_log off;
    {_nginx_temp_paths(prefix)}
    keepalive_timeout {_secs(keepalive_timeout)};
    keepalive_requests 1000000;
    {limits_http}
    upstream origin {{
        server {HOST}:{upstream_port}{max_conns};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        # The limit zones key on it; an empty key would exempt every request.
        server_name bench;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Room for a 64 KiB body in memory instead of a temp file.
            proxy_buffers 16 8k;
            {limits_location}
        }}
    }}
}}
"""


def haproxy(
    *, port: int, upstream_port: int, threads: int, overload: OverloadPolicy | None,
    keepalive_timeout: float, max_clients: int = 4096, fd_limit: int = 1 << 20,
) -> str:
    server_limits = queue_timeout = ""
    # HAProxy reserves two descriptors per connection (client and server
    # side) and by default refuses to start when it cannot raise its limit
    # that far. Idle keep-alive clients share a few pooled server
    # connections, so where the hard limit is lower, starting anyway is safe
    # and lets the memory bench hold as many clients as nginx does.
    maxconn = max_clients + 1024
    ulimit = "    no strict-limits\n" if 2 * maxconn + 512 > fd_limit else ""
    if overload is not None:
        server_limits = f" maxconn {overload.capacity} maxqueue {overload.max_queue}"
        queue_timeout = f"    timeout queue {_secs(overload.max_wait)}\n"
    return f"""\
global
    nbthread {threads}
    maxconn {maxconn}
{ulimit}
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client {_secs(keepalive_timeout)}
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive {_secs(keepalive_timeout)}

frontend clients
    bind {HOST}:{port}
    default_backend origin

backend origin
{queue_timeout}    server origin {HOST}:{upstream_port}{server_limits}
"""


def gateway(
    *, port: int, upstream_port: int, workers: int, overload: OverloadPolicy | None,
    keepalive_timeout: float, admission_enabled: bool = True, redis_url: str = "",
) -> str:
    """The gateway's TOML.

    Without `overload` the school's limits are sized so that admission runs
    on every request (in-flight slot, school bucket, per-client bucket,
    default classes) but never refuses one. `admission_enabled=False` is the
    same file with `[admission] enabled = false`, which forwards every
    request at once: the pair measures what admission costs. `redis_url`
    shares the limits through that Redis (`[redis] url`) instead of keeping
    them in this instance.
    """
    shared = f'\n[redis]\nurl = "{redis_url}"\n' if redis_url else ""
    enabled = "" if admission_enabled else "enabled = false\n"
    if overload is None:
        school_limits = (
            "max_inflight = 1000000\nrate = 10000000.0\nburst = 10000000\n"
            "client_rate = 10000000.0\nclient_burst = 10000000"
        )
        admission = f"[admission]\n{enabled}" if enabled else ""
        classes = ""
    else:
        school_limits = f"max_inflight = {overload.capacity}"
        admission = f"[admission]\n{enabled}max_queue = {overload.max_queue}\n"
        classes = f"""
[[classes]]
name = "bulk"
priority = 0
max_wait = {overload.max_wait}
reject_status = 429
match = {{ paths = ["{BULK_PREFIX}"] }}

[[classes]]
name = "interactive"
priority = 10
max_wait = {overload.max_wait}
"""
    return f"""\
[server]
listen = "{HOST}:{port}"
workers = {workers}
backlog = 4096

[timeouts]
keepalive = {float(keepalive_timeout)}

# Like nginx's and HAProxy's configs here (access_log off): no access log.
[log]
access = "off"
{shared}
{admission}
[[schools]]
name = "bench"
hosts = ["*"]
upstreams = ["{HOST}:{upstream_port}"]
{school_limits}
{classes}"""
