"""Sans-IO rendering of the waiting room and the gateway's own error pages.

`render()` turns what the admission layer knows (queue position, estimated
wait, Retry-After) and the client's Accept / Accept-Language headers into a
complete response minus Content-Length, which the caller adds once it knows
how it will frame the body.

HTML templates may use these placeholders; every value is escaped for HTML:

    all pages   $lang $title $school $heading $message $style (built-in
                stylesheet)
    wait.html   $url $button $refresh (meta refresh markup) $position_label
                $position $eta_label $eta $hint $retry_after
                $script (polling script; expects #sg-position and #sg-eta)
    down.html   $url $button $refresh $retry $retry_after
    resend.html $hint $retry $retry_after: the "wait" or "down" page for a
                request other than GET or HEAD (a submitted form). It must
                not reload or link to the request's URL: that would repeat
                the request as a GET and lose what was submitted, so it
                gets no $url, $button or $refresh.

`$style`, `$refresh` and `$script` are markup built by the gateway from its
own assets and escaped values, never raw input.
"""

from __future__ import annotations

import math
import re
from typing import Final, Literal

import msgspec

from . import loader
from .i18n import error_text, eta_table, eta_text, text
from .line import POLL_MIN
from .negotiate import choose_language, prefers, wants_json
from .safe import html_text, same_origin_path, script_json

Kind = Literal["wait", "down", "bulk", "bad_request"]


class Page(msgspec.Struct):
    """A response ready to serialise; the caller adds Content-Length."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


_HTML: Final = b"text/html; charset=utf-8"
_JSON: Final = b"application/json; charset=utf-8"
_TEXT: Final = b"text/plain; charset=utf-8"

# The polling page talks only to its own origin and runs only its own script;
# anything a hostile school title or URL might smuggle in is refused twice.
_CSP_BASE: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

# Poll bounds in seconds: often enough that a freed place is used promptly,
# rarely enough that a full queue polling is cheap next to page loads.
_POLL_MIN: Final = POLL_MIN
_POLL_FIRST_MAX: Final = 10
_POLL_MAX: Final = 30

# An en dash holds the place of a position the scheduler has not computed.
_UNKNOWN_POSITION: Final = "\u2013"

_REASON_MAX: Final = 200
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]+")

_json = msgspec.json.Encoder()


def _common_headers(content_type: bytes, lang: str, vary: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"Content-Type", content_type),
        (b"Content-Language", lang.encode()),
        (b"Cache-Control", b"no-store"),
        (b"Vary", vary),
        (b"X-Content-Type-Options", b"nosniff"),
    ]


def _finite(eta: float | None, digits: int | None = None) -> float | int | None:
    """An ETA fit for JSON: NaN and infinities mean "not known"."""
    if eta is None or not math.isfinite(eta):
        return None
    return round(eta, digits) if digits is not None else round(eta)


def _refresh(seconds: int, url: str, *, scripted: bool) -> str:
    tag = f'<meta http-equiv="refresh" content="{max(seconds, 1)};url={html_text(url)}">'
    # With the polling script running, the refresh would only reload the page
    # behind its back; it is the fallback for browsers without scripting.
    return f"<noscript>{tag}</noscript>" if scripted else tag


def _wait_fields(
    lang: str, school: str, url: str, retry_after: int,
    position: int | None, eta: float | None, status_url: str | None,
) -> tuple[dict[str, str], bool]:
    fields = {
        "title": text(lang, "wait.title", school=school),
        "heading": text(lang, "wait.heading"),
        "message": text(lang, "wait.message", school=school),
        "position_label": text(lang, "wait.position_label"),
        "position": _UNKNOWN_POSITION if position is None else str(position),
        "eta_label": text(lang, "wait.eta_label"),
        "eta": eta_text(lang, eta),
        "hint": text(lang, "wait.hint"),
        "button": text(lang, "wait.button"),
    }
    fields = {key: html_text(value) for key, value in fields.items()}
    status = same_origin_path(status_url, default="") if status_url else ""
    script = ""
    if status:
        steps, beyond = eta_table(lang)
        config = {
            "status": status,
            "url": url,
            "every": min(max(retry_after, _POLL_MIN), _POLL_FIRST_MAX),
            # The estimate the page shows, in seconds (what the status
            # endpoint's "eta" says; None: not known).
            "wait": _finite(eta, 1),
            "min": _POLL_MIN,
            "max": _POLL_MAX,
            "eta": {"steps": steps, "beyond": beyond, "unknown": text(lang, "eta.unknown")},
        }
        script = (
            f'<script type="application/json" id="sg-config">{script_json(config)}</script>\n'
            f"<script>{loader.poll_script().source}</script>"
        )
    fields["script"] = script
    fields["refresh"] = _refresh(retry_after, url, scripted=bool(status))
    return fields, bool(status)


def _down_fields(lang: str, school: str, url: str, retry_after: int) -> dict[str, str]:
    fields = {
        "title": text(lang, "down.title", school=school),
        "heading": text(lang, "down.heading"),
        "message": text(lang, "down.message", school=school),
        "retry": text(lang, "down.retry", n=max(retry_after, 1)),
        "button": text(lang, "down.button"),
    }
    fields = {key: html_text(value) for key, value in fields.items()}
    fields["refresh"] = _refresh(retry_after, url, scripted=False)
    return fields


def _resend_fields(kind: str, lang: str, school: str, retry_after: int,
                   forwarded: bool) -> dict[str, str]:
    """A submitted request (POST, PUT, ...) the gateway answered itself:
    say plainly whether the school's server got it, and how to send it again."""
    if forwarded:
        # The upstream failed after (some of) the request was sent: it may
        # have been processed, so nothing may be claimed either way.
        fields = {
            "title": text(lang, "down.title", school=school),
            "heading": text(lang, "down.heading"),
            "message": text(lang, "resend.unknown", school=school),
            "hint": text(lang, "resend.check"),
        }
    else:
        fields = {
            "title": text(lang, "resend.title", school=school),
            "heading": text(lang, f"{kind}.heading"),
            "message": text(lang, f"resend.{kind}", school=school),
            "hint": text(lang, "resend.hint"),
        }
    fields["retry"] = text(lang, "resend.retry", n=max(retry_after, 1))
    return {key: html_text(value) for key, value in fields.items()}


def _html_page(
    kind: str, lang: str, school: str, url: str, retry_after: int,
    fields: dict[str, str], templates_dir: str | None, scripted: bool,
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    template, builtin = loader.find_template(kind, lang, templates_dir)
    fields |= {
        "lang": lang,
        "school": html_text(school),
        "retry_after": str(retry_after),
        "style": loader.asset("page.css"),
    }
    if url:  # (none for resend.html: nothing there may lead back to the URL)
        fields["url"] = html_text(url)
    extra: list[tuple[bytes, bytes]] = []
    if builtin:
        # School templates may load their own logo or fonts, so only the
        # built-in pages, whose every resource is known, get a strict CSP.
        csp = _CSP_BASE
        if scripted:
            csp += f"; script-src {loader.poll_script().csp_hash}; connect-src 'self'"
        extra.append((b"Content-Security-Policy", csp.encode()))
    return template.safe_substitute(fields).encode(), extra


def render(
    kind: Kind,
    *,
    school_title: str,
    accept: bytes,
    accept_language: bytes,
    retry_after: int,
    position: int | None = None,
    eta: float | None = None,
    original_url: str = "/",
    status_url: str | None = None,
    templates_dir: str | None = None,
    reason: str = "",
    status: int | None = None,
    requested_with: bytes = b"",
    method: str = "GET",
    forwarded: bool = False,
) -> Page:
    """Render a gateway response of `kind` for one request.

    - "wait": 503, the school is full; `position`/`eta` describe the visitor's
      place, `status_url` (a same-origin path) enables live updates.
    - "down": 503, the school's upstream is not answering.
    - "bulk": 429 for bulk and import tools (JSON or plain text).
    - "bad_request": plain text for a protocol error; `status` (default 400,
      any 4xx/5xx) and a short technical `reason`.

    `original_url` is where the visitor is sent back to; anything that is not
    a same-origin path becomes "/". `requested_with` is the X-Requested-With
    value (scripted requests get JSON).

    `method` is the request's: for anything but GET and HEAD (a submitted
    form, an upload) the "wait" and "down" pages never reload or link to
    `original_url`, which would repeat the request as a GET without what was
    submitted; they say what happened to it instead (the resend.html page).
    `forwarded`: whether any of the request reached the school's server
    ("down" only; a "wait" page's request never did). JSON answers carry it
    as "forwarded".
    """
    lang = choose_language(accept_language)
    retry_after = max(int(retry_after), 0)
    retry = (b"Retry-After", str(retry_after).encode())

    if kind == "bad_request":
        code = 400 if status is None else status
        if not 400 <= code <= 599:
            raise ValueError(f"bad_request status must be 4xx or 5xx, got {code}")
        lines = [error_text(lang, code)]
        detail = _CONTROL.sub(" ", reason).strip()[:_REASON_MAX]
        if detail:
            lines.append(detail)
        body = ("\n".join(lines) + "\n").encode()
        return Page(code, _common_headers(_TEXT, lang, b"Accept-Language"), body)

    if kind == "bulk":
        message = text(lang, "bulk.message", school=school_title, n=retry_after)
        vary = b"Accept, Accept-Language"
        if prefers(accept, "application/json", "text/plain"):
            body = _json.encode(
                {"error": "rate_limited", "message": message, "retry_after": retry_after}
            )
            headers = _common_headers(_JSON, lang, vary)
        else:
            body = (message + "\n").encode()
            headers = _common_headers(_TEXT, lang, vary)
        headers.append(retry)
        return Page(429, headers, body)

    if kind not in ("wait", "down"):
        raise ValueError(f"unknown page kind {kind!r}")

    vary = b"Accept, Accept-Language, X-Requested-With"
    if wants_json(accept, "text/html", requested_with):
        payload: dict[str, object] = {
            "error": "busy" if kind == "wait" else "unavailable",
            "message": text(lang, f"{kind}.json", school=school_title, n=retry_after),
            "retry_after": retry_after,
        }
        if kind == "wait":
            payload["position"] = position
            payload["eta"] = _finite(eta)
        payload["forwarded"] = forwarded and kind == "down"
        headers = _common_headers(_JSON, lang, vary)
        headers.append(retry)
        return Page(503, headers, _json.encode(payload))

    if method not in ("GET", "HEAD"):
        fields = _resend_fields(kind, lang, school_title, retry_after,
                                forwarded and kind == "down")
        body, extra = _html_page(
            "resend", lang, school_title, "", retry_after, fields, templates_dir, False
        )
        headers = _common_headers(_HTML, lang, vary)
        headers.append(retry)
        headers.extend(extra)
        return Page(503, headers, body)

    url = same_origin_path(original_url)
    if kind == "wait":
        fields, scripted = _wait_fields(
            lang, school_title, url, retry_after, position, eta, status_url
        )
    else:
        fields, scripted = _down_fields(lang, school_title, url, retry_after), False
    body, extra = _html_page(
        kind, lang, school_title, url, retry_after, fields, templates_dir, scripted
    )
    headers = _common_headers(_HTML, lang, vary)
    headers.append(retry)
    headers.extend(extra)
    return Page(503, headers, body)


def render_status_json(
    state: Literal["wait", "go"], position: int | None, eta: float | None, retry_after: int
) -> bytes:
    """Body for the waiting room's status endpoint, polled by the wait page.

    Serve it with status 200 and `Cache-Control: no-store`; the page reads
    `state`, `position`, `eta` (seconds) and `retry_after` (next poll).
    """
    if state not in ("wait", "go"):
        raise ValueError(f"state must be 'wait' or 'go', got {state!r}")
    return _json.encode({
        "state": state,
        "position": position,
        "eta": _finite(eta, 1),
        "retry_after": max(int(retry_after), 0),
    })


__all__ = ["Kind", "Page", "render", "render_status_json"]
