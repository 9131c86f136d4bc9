"""Admin listener: GET /healthz and GET /metrics (Prometheus text format).

Kept apart from the proxy listener so that scraping and health checks are
never queued behind pupils, and never reachable through a school's Host.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import httptools

from gateway.proxy.spool import RESPONSE_STATS as RESPONSE_SPOOLS
from gateway.proxy.spool import STATS as SPOOLS

if TYPE_CHECKING:
    from gateway.server.worker import Worker


def render_metrics(worker: Worker) -> bytes:
    app = worker.app
    m = app.metrics
    # Connections opened before a reload stay with their App until their
    # next request.
    open_connections = sum(len(a.connections) for a in (app, *worker.retired))
    labels = f'worker="{worker.index}",pid="{os.getpid()}"'
    lines = [
        "# HELP schoolgate_connections_total Client connections accepted.",
        "# TYPE schoolgate_connections_total counter",
        f"schoolgate_connections_total{{{labels}}} {m.connections_total}",
        "# HELP schoolgate_connections_open Client connections open now.",
        "# TYPE schoolgate_connections_open gauge",
        f"schoolgate_connections_open{{{labels}}} {open_connections}",
        "# HELP schoolgate_requests_total Request heads parsed.",
        "# TYPE schoolgate_requests_total counter",
        f"schoolgate_requests_total{{{labels}}} {m.requests_total}",
        "# HELP schoolgate_local_responses_total Responses made by the gateway itself.",
        "# TYPE schoolgate_local_responses_total counter",
    ]
    for status, n in sorted(m.responses_local.items()):
        lines.append(f'schoolgate_local_responses_total{{{labels},status="{status}"}} {n}')
    lines += [
        "# HELP schoolgate_school_requests_total Requests routed to a school.",
        "# TYPE schoolgate_school_requests_total counter",
    ]
    for s in app.schools:
        lines.append(f'schoolgate_school_requests_total{{{labels},school="{_label(s.name)}"}} '
                     f"{s.requests}")
    lines += _admission_metrics(app, labels)
    lines += [
        "# HELP schoolgate_request_bodies_buffered Request bodies held at the gateway "
        "(request buffering).",
        "# TYPE schoolgate_request_bodies_buffered gauge",
        f"schoolgate_request_bodies_buffered{{{labels}}} {SPOOLS.bodies}",
        "# HELP schoolgate_request_body_bytes_buffered Bytes of those bodies, in memory "
        "and temporary files.",
        "# TYPE schoolgate_request_body_bytes_buffered gauge",
        f"schoolgate_request_body_bytes_buffered{{{labels}}} {SPOOLS.bytes}",
        "# HELP schoolgate_request_body_files Temporary files holding request bodies.",
        "# TYPE schoolgate_request_body_files gauge",
        f"schoolgate_request_body_files{{{labels}}} {SPOOLS.files}",
        "# HELP schoolgate_responses_spooled Responses held at the gateway for clients "
        "that read slowly (their upstream and slot already free).",
        "# TYPE schoolgate_responses_spooled gauge",
        f"schoolgate_responses_spooled{{{labels}}} {RESPONSE_SPOOLS.bodies}",
        "# HELP schoolgate_response_bytes_spooled Bytes of those responses, in memory "
        "and temporary files.",
        "# TYPE schoolgate_response_bytes_spooled gauge",
        f"schoolgate_response_bytes_spooled{{{labels}}} {RESPONSE_SPOOLS.bytes}",
        "# HELP schoolgate_response_spool_files Temporary files holding spooled responses.",
        "# TYPE schoolgate_response_spool_files gauge",
        f"schoolgate_response_spool_files{{{labels}}} {RESPONSE_SPOOLS.files}",
    ]
    lines += [
        "# HELP schoolgate_upstream_inflight Requests in flight per upstream server.",
        "# TYPE schoolgate_upstream_inflight gauge",
    ]
    for addr, server in app.servers.items():
        lines.append(f'schoolgate_upstream_inflight{{{labels},upstream="{addr}"}} '
                     f"{server.inflight}")
    return ("\n".join(lines) + "\n").encode()


_ADMISSION = [
    # (metric, type, help, stats key, per class)
    ("inflight", "gauge", "Admitted requests not yet finished.", "inflight", False),
    ("connections", "gauge", "Client connections counted against the school.",
     "connections", False),
    ("queued", "gauge", "Requests waiting for admission.", "queued", True),
    ("admitted_total", "counter", "Requests admitted.", "admitted", True),
    ("rejected_total", "counter", "Requests turned away (waiting page, 429).", "rejected", True),
    ("cancelled_total", "counter", "Queued requests whose client left.", "cancelled", False),
    ("admission_rate", "gauge", "Measured admissions per second.", "admission_rate", False),
]


def _admission_metrics(app, labels: str) -> list[str]:
    if not app.admission.enabled:
        return []
    controller = app.admission.controller
    stats = [(_label(s.name), controller.stats(s.index)) for s in app.schools]
    lines = []
    for metric, kind, text, key, per_class in _ADMISSION:
        name = f"schoolgate_school_{metric}"
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for school, st in stats:
            if per_class:
                for klass, value in st[key].items():
                    lines.append(f'{name}{{{labels},school="{school}",class="{_label(klass)}"}} '
                                 f"{value}")
            else:
                lines.append(f'{name}{{{labels},school="{school}"}} {st[key]}')
    return lines


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class AdminProtocol(asyncio.Protocol):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b"text/plain", b"bad request\n", close=True)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > 4096:
            raise ValueError("url too long")

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        self.url = b""
        if path == b"/healthz":
            status = 503 if self.worker.app.draining else 200
            self._send(status, b"text/plain", b"draining\n" if status == 503 else b"ok\n")
        elif path == b"/metrics":
            self._send(200, b"text/plain; version=0.0.4", render_metrics(self.worker))
        else:
            self._send(404, b"text/plain", b"not found\n")

    def _send(self, status: int, ctype: bytes, body: bytes, close: bool = False) -> None:
        if self.transport is None:
            return
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found",
                  503: b"Service Unavailable"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, reason, ctype, len(body), b"Connection: close\r\n" if close else b"", body)
        )
        if close:
            self.transport.close()
