"""Waiting room and error pages: negotiation, languages, escaping, templates."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import re
import shutil
import subprocess
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.waiting import Page, choose_language, clear_cache, render, render_status_json
from gateway.waiting.i18n import CATALOGS, eta_text
from gateway.waiting.loader import BUILTIN_DIR
from gateway.waiting.safe import same_origin_path

ATTACK = '</script><script>alert("x")</script>'


@pytest.fixture(autouse=True)
def _fresh_templates():
    clear_cache()
    yield
    clear_cache()


def page(kind="wait", **kw) -> Page:
    args = {
        "school_title": "Nordby skole",
        "accept": b"text/html,application/xhtml+xml,*/*;q=0.8",
        "accept_language": b"en",
        "retry_after": 5,
    }
    args.update(kw)
    return render(kind, **args)


def header(p: Page, name: bytes) -> bytes | None:
    values = [v for k, v in p.headers if k.lower() == name.lower()]
    assert len(values) <= 1, f"{name!r} repeated"
    return values[0] if values else None


def config_of(p: Page) -> dict:
    match = re.search(rb'<script type="application/json" id="sg-config">(.*?)</script>', p.body)
    assert match, "no polling config in page"
    return json.loads(match.group(1))


# -- language negotiation ----------------------------------------------------


@pytest.mark.parametrize(
    ("header_value", "lang"),
    [
        (b"", "en"),
        (b"de", "de"),
        (b"de-DE,de;q=0.9,en;q=0.8", "de"),
        (b"en-GB,en;q=0.5,nb;q=0.9", "en"),
        (b"en;q=0.5, nb;q=0.9", "nb"),
        (b"nb-NO", "nb"),
        (b"no", "nb"),
        (b"nn-NO,nn;q=0.9", "nb"),
        (b"fr-FR, fr;q=0.9, de;q=0.1", "de"),
        (b"fr", "en"),
        (b"de;q=0", "en"),
        (b"nb, de", "nb"),
        (b"de;q=0.7, nb;q=0.700", "de"),
        (b"*", "en"),
        (b"*;q=0.5, de;q=0.9", "de"),
        (b"DE-at", "de"),
        (b"de;q=2, nb;q=0.3", "nb"),
        (b"de;q=abc", "en"),
        (b"d e, \xff\xfe, ;;;, =q, ,,,", "en"),
        (b"x" * 10_000, "en"),
        (b"de;level=1;q=0.9, en;q=0.8", "de"),
    ],
)
def test_accept_language(header_value, lang):
    assert choose_language(header_value) == lang


@pytest.mark.parametrize("lang", ["en", "de", "nb"])
def test_each_language_renders_its_own_words(lang):
    p = page(accept_language=lang.encode(), position=4, eta=200.0)
    catalog = CATALOGS[lang]
    assert header(p, b"Content-Language") == lang.encode()
    assert f'<html lang="{lang}">'.encode() in p.body
    body = p.body.decode()
    for key in ("wait.heading", "wait.position_label", "wait.hint"):
        assert catalog[key].replace("'", "&#x27;") in body
    down = page("down", accept_language=lang.encode(), retry_after=30)
    assert CATALOGS[lang]["down.retry"]["other"].replace("{n}", "30") in down.body.decode()


def test_catalogs_are_complete_and_consistent():
    english = CATALOGS["en"]
    for lang, catalog in CATALOGS.items():
        assert catalog.keys() == english.keys(), lang
        for key, message in catalog.items():
            reference = english[key]
            forms = message.values() if isinstance(message, dict) else [message]
            ref_forms = reference.values() if isinstance(reference, dict) else [reference]
            assert type(message) is type(reference), (lang, key)
            if isinstance(message, dict):
                assert message.keys() == reference.keys(), (lang, key)
            for field in ("{n}", "{school}"):
                assert all(field in f for f in forms) == all(field in f for f in ref_forms), (
                    lang, key, field,
                )


@pytest.mark.parametrize(
    ("lang", "eta", "wording"),
    [
        ("en", None, "not known yet"),
        ("en", float("nan"), "not known yet"),
        ("en", -3.0, "not known yet"),
        ("en", 0.0, "less than a minute"),
        ("en", 44.0, "less than a minute"),
        ("en", 60.0, "about 1 minute"),
        ("en", 130.0, "about 2 minutes"),
        ("en", 9 * 60 + 40, "about 10 minutes"),
        ("en", 14 * 60, "about 15 minutes"),
        ("en", 58 * 60, "about 1 hour"),
        ("en", 2 * 3600, "about 2 hours"),
        ("en", 5 * 3600, "more than 3 hours"),
        ("en", float("inf"), "more than 3 hours"),
        ("de", 60.0, "etwa 1 Minute"),
        ("de", 300.0, "etwa 5 Minuten"),
        ("de", 20.0, "weniger als eine Minute"),
        ("nb", 60.0, "omtrent 1 minutt"),
        ("nb", 300.0, "omtrent 5 minutter"),
        ("nb", 3600.0, "omtrent 1 time"),
        ("nb", 7200.0, "omtrent 2 timer"),
    ],
)
def test_eta_wording(lang, eta, wording):
    assert eta_text(lang, eta) == wording


def test_each_eta_wording_covers_one_contiguous_range():
    order = [eta_text("en", s) for s in range(0, 4 * 3600, 7)]
    distinct = list(dict.fromkeys(order))
    # Each wording appears in one contiguous run: no flapping back and forth.
    assert len(distinct) == sum(1 for a, b in itertools.pairwise(order) if a != b) + 1


# -- content negotiation -----------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [b"", b"*/*", b"text/html", b"text/html, application/json",
     b"application/json;q=0.5, text/*", b"text/html;q=0.9, application/json;q=0.9",
     b"garbage", b"application/json;q=oops"],
)
def test_browsers_and_undecided_clients_get_html(accept):
    p = page(accept=accept, position=3)
    assert header(p, b"Content-Type") == b"text/html; charset=utf-8"
    assert p.body.startswith(b"<!doctype html>")


@pytest.mark.parametrize(
    ("accept", "requested_with"),
    [
        (b"application/json", b""),
        (b"application/json, text/html;q=0.9", b""),
        (b"application/*", b""),
        (b"text/html;q=0.1, application/json", b""),
        (b"*/*", b"XMLHttpRequest"),
        (b"text/html", b"xmlhttprequest"),
    ],
)
def test_json_clients_get_json(accept, requested_with):
    p = page(accept=accept, requested_with=requested_with, position=7, eta=95.4, retry_after=9)
    assert p.status == 503
    assert header(p, b"Content-Type") == b"application/json; charset=utf-8"
    data = json.loads(p.body)
    assert data["error"] == "busy"
    assert data["retry_after"] == 9
    assert data["position"] == 7
    assert data["eta"] == 95
    assert "Nordby skole" in data["message"]
    assert "9 seconds" in data["message"]


def test_down_json_has_no_position():
    data = json.loads(page("down", accept=b"application/json", retry_after=1).body)
    assert data["error"] == "unavailable"
    assert "position" not in data
    assert data["message"].endswith("in 1 second.")


# -- headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "accept", "status", "has_retry"),
    [
        ("wait", b"text/html", 503, True),
        ("wait", b"application/json", 503, True),
        ("down", b"text/html", 503, True),
        ("down", b"application/json", 503, True),
        ("bulk", b"application/json", 429, True),
        ("bulk", b"*/*", 429, True),
        ("bad_request", b"*/*", 400, False),
    ],
)
def test_headers(kind, accept, status, has_retry):
    p = page(kind, accept=accept, accept_language=b"de", retry_after=12)
    assert p.status == status
    assert header(p, b"Cache-Control") == b"no-store"
    assert header(p, b"Content-Language") == b"de"
    assert b"charset=utf-8" in header(p, b"Content-Type")
    assert b"Accept-Language" in header(p, b"Vary")
    if kind != "bad_request":
        assert header(p, b"Vary").startswith(b"Accept, Accept-Language")
    assert header(p, b"Retry-After") == (b"12" if has_retry else None)
    assert header(p, b"Content-Length") is None
    assert header(p, b"X-Content-Type-Options") == b"nosniff"
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in p.headers)


def test_negative_retry_after_is_clamped():
    p = page("down", retry_after=-4)
    assert header(p, b"Retry-After") == b"0"
    # A zero refresh would reload in a tight loop against a dead upstream.
    assert b'content="1;url=/"' in p.body


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown page kind"):
        page("teapot")


# -- the wait page -----------------------------------------------------------


def test_wait_page_polls_and_falls_back_to_refresh():
    p = page(position=12, eta=130.0, original_url="/moodle/course?id=3",
             status_url="/_sg/status?s=a&b=1", retry_after=4)
    body = p.body.decode()
    assert 'role="status"' in body and 'aria-live="polite"' in body
    assert '<p class="position" id="sg-position">12</p>' in body
    assert '<strong id="sg-eta">about 2 minutes</strong>' in body
    assert ('<noscript><meta http-equiv="refresh" content="4;url=/moodle/course?id=3">'
            '</noscript>') in body
    assert 'href="/moodle/course?id=3"' in body
    config = config_of(p)
    assert config["status"] == "/_sg/status?s=a&b=1"
    assert config["url"] == "/moodle/course?id=3"
    assert config["every"] == 4
    assert config["eta"]["unknown"] == "not known yet"


def test_wait_page_csp_allows_exactly_the_inline_script():
    p = page(status_url="/status")
    csp = header(p, b"Content-Security-Policy").decode()
    scripts = re.findall(r"<script>(.*?)</script>", p.body.decode(), re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp


def test_wait_page_without_status_url_refreshes_plainly():
    p = page(position=None, eta=None, retry_after=7)
    body = p.body.decode()
    assert "<script" not in body
    assert "<noscript>" not in body
    assert '<meta http-equiv="refresh" content="7;url=/">' in body
    assert '<p class="position" id="sg-position">\u2013</p>' in body
    assert "not known yet" in body
    assert "script-src" not in header(p, b"Content-Security-Policy").decode()


def test_down_page():
    p = page("down", accept_language=b"nb", retry_after=30, original_url="/login")
    body = p.body.decode()
    assert p.status == 503
    assert "Skolens server svarer ikke" in body
    assert "Vi prøver igjen om 30 sekunder." in body
    assert '<meta http-equiv="refresh" content="30;url=/login">' in body
    assert "sg-position" not in body and "<script" not in body


# -- escaping ----------------------------------------------------------------


def test_school_title_is_escaped_in_html():
    p = page(school_title=ATTACK, status_url="/status", position=1)
    body = p.body.decode()
    assert "<script>alert" not in body
    assert 'alert("x")' not in body
    assert "&lt;/script&gt;&lt;script&gt;alert(&quot;x&quot;)" in body
    # Exactly the gateway's own two script elements (config and poller).
    assert body.count("<script") == 2
    assert body.count("</script>") == 2


def test_school_title_is_plain_data_in_json_and_text():
    data = json.loads(page(school_title=ATTACK, accept=b"application/json").body)
    assert data["message"].startswith(ATTACK)
    text = page("bulk", school_title=ATTACK, accept=b"text/plain")
    assert header(text, b"Content-Type") == b"text/plain; charset=utf-8"


def test_school_title_with_braces_and_dollars_is_literal():
    p = page(school_title="{n} {school} $school $$ ${lang}", position=2)
    assert "{n} {school} $school $$ ${lang}" in p.body.decode()


@pytest.mark.parametrize(
    "url",
    ["//evil.example/x", "/\\evil.example", "/\t/evil.example", "javascript:alert(1)",
     "https://evil.example/", "JaVaScRiPt:alert(1)", "data:text/html,x", "", "evil",
     " /x", "/x\r\nSet-Cookie: a=b", "/\ud800"],
)
def test_unsafe_redirect_targets_fall_back_to_root(url):
    assert same_origin_path(url) == "/"
    p = page(original_url=url, status_url="/status")
    assert config_of(p)["url"] == "/"
    assert b'href="/"' in p.body
    assert b"evil" not in p.body and b"alert" not in p.body


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/a/b?c=d&e=f", "/a/b?c=d&e=f"),
        ('/"><script>x', "/%22%3E%3Cscript%3Ex"),
        ("/it's", "/it%27s"),
        ("/skole/kø?navn=Ærlig", "/skole/k%C3%B8?navn=%C3%86rlig"),
        ("/already%20encoded", "/already%20encoded"),
        ("/page#frag", "/page"),
        ("/a;b", "/a;b"),
    ],
)
def test_same_origin_paths_are_kept_and_encoded(url, expected):
    assert same_origin_path(url) == expected


def test_script_context_escaping_of_status_url():
    p = page(status_url="/s?x=</script><script>alert(1)</script>\u2028")
    raw = re.search(rb'id="sg-config">(.*?)</script>', p.body).group(1)
    assert b"<" not in raw and b">" not in raw and "\u2028".encode() not in raw
    assert config_of(p)["status"] == "/s?x=%3C/script%3E%3Cscript%3Ealert(1)%3C/script%3E%E2%80%A8"


def test_unsafe_status_url_disables_polling():
    p = page(status_url="javascript:alert(1)")
    assert b"<script" not in p.body
    assert b"alert" not in p.body


def _specials(body: bytes) -> tuple[int, ...]:
    return tuple(body.count(c) for c in (b"<", b">", b'"', b"'"))


@settings(max_examples=150, deadline=None)
@given(school=st.text(), url=st.text(), position=st.none() | st.integers(0, 10**6))
def test_no_input_character_reaches_html_raw(school, url, position):
    baseline = page(school_title="x", original_url="/", status_url="/s", position=position)
    p = page(school_title=school, original_url=url, status_url="/s", position=position)
    # Every <, >, " and ' in the page belongs to the template: inputs only
    # ever add escaped forms, so the counts match a harmless rendering.
    assert _specials(p.body) == _specials(baseline.body)
    down = page("down", school_title=school, original_url=url)
    assert _specials(down.body) == _specials(page("down", school_title="x").body)


# -- bulk and protocol errors --------------------------------------------------


def test_bulk_json_and_text():
    j = page("bulk", accept=b"application/json", accept_language=b"nb", retry_after=1)
    assert j.status == 429
    assert json.loads(j.body) == {
        "error": "rate_limited",
        "message": "For mange masseforespørsler til Nordby skole. Prøv igjen om 1 sekund.",
        "retry_after": 1,
    }
    t = page("bulk", accept=b"*/*", retry_after=20)
    assert t.body == b"Too many bulk requests for Nordby skole. Retry after 20 seconds.\n"


def test_bad_request_defaults_to_400_with_reason():
    p = page("bad_request", reason="invalid header name")
    assert p.status == 400
    assert p.body == b"The request could not be understood.\ninvalid header name\n"
    assert header(p, b"Content-Type") == b"text/plain; charset=utf-8"


@pytest.mark.parametrize(
    ("status", "lang", "first_line"),
    [
        (431, "de", "Die Kopfzeilen der Anfrage sind zu groß."),
        (408, "nb", "Forespørselen brukte for lang tid."),
        (418, "en", "The request could not be processed."),
        (502, "en", "The gateway could not process the request."),
    ],
)
def test_bad_request_status_and_language(status, lang, first_line):
    p = page("bad_request", status=status, accept_language=lang.encode())
    assert p.status == status
    assert p.body.decode() == first_line + "\n"


def test_bad_request_reason_is_one_bounded_line():
    p = page("bad_request", reason="bad\r\nX-Injected: 1\x00" + "y" * 1000)
    lines = p.body.decode().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("bad X-Injected: 1 y")
    assert len(lines[1]) == 200


@pytest.mark.parametrize("status", [200, 302, 399, 600])
def test_bad_request_refuses_non_error_status(status):
    with pytest.raises(ValueError, match="4xx or 5xx"):
        page("bad_request", status=status)


# -- status endpoint -----------------------------------------------------------


def test_status_json():
    assert json.loads(render_status_json("wait", 3, 42.1234, 5)) == {
        "state": "wait", "position": 3, "eta": 42.1, "retry_after": 5,
    }
    assert json.loads(render_status_json("go", None, None, -1)) == {
        "state": "go", "position": None, "eta": None, "retry_after": 0,
    }
    assert json.loads(render_status_json("wait", 1, float("nan"), 1))["eta"] is None
    with pytest.raises(ValueError, match="state"):
        render_status_json("maybe", 1, 1.0, 1)


# -- school templates ----------------------------------------------------------


def test_override_templates_per_language_and_fallback(tmp_path):
    (tmp_path / "wait.html").write_text("<p>$school|$position|$lang|$$5|$unknown</p>")
    (tmp_path / "wait.de.html").write_text("<p>DE $school $eta</p>")
    d = str(tmp_path)
    en = page(templates_dir=d, position=3, school_title="A&B")
    assert en.body == b"<p>A&amp;B|3|en|$5|$unknown</p>"
    # School markup may pull its own resources, so no CSP is imposed on it.
    assert header(en, b"Content-Security-Policy") is None
    de = page(templates_dir=d, accept_language=b"de", eta=60.0)
    assert de.body == b"<p>DE Nordby skole etwa 1 Minute</p>"
    nb = page(templates_dir=d, accept_language=b"nb", position=1)
    assert nb.body.startswith(b"<p>Nordby skole|1|nb|")
    down = page("down", templates_dir=d)
    assert down.body.startswith(b"<!doctype html>")
    assert header(down, b"Content-Security-Policy") is not None


def test_missing_template_dir_uses_builtin(tmp_path):
    p = page(templates_dir=str(tmp_path / "nope"))
    assert p.body == page().body


def test_templates_are_cached_until_cleared(tmp_path):
    target = tmp_path / "down.html"
    target.write_text("first $school")
    assert page("down", templates_dir=str(tmp_path)).body == b"first Nordby skole"
    nb = page("down", templates_dir=str(tmp_path), accept_language=b"nb")
    assert nb.body == b"first Nordby skole"
    target.write_text("second $school")
    assert page("down", templates_dir=str(tmp_path)).body == b"first Nordby skole"
    (tmp_path / "down.nb.html").write_text("nb $school")
    # The miss for down.nb.html is cached too: no filesystem work per request.
    assert page("down", templates_dir=str(tmp_path), accept_language=b"nb").body == (
        b"first Nordby skole"
    )
    clear_cache()
    assert page("down", templates_dir=str(tmp_path)).body == b"second Nordby skole"
    assert page("down", templates_dir=str(tmp_path), accept_language=b"nb").body == (
        b"nb Nordby skole"
    )


def test_unreadable_template_falls_back_with_warning(tmp_path, caplog):
    (tmp_path / "wait.html").write_bytes(b"\xff\xfe not utf-8 $school")
    with caplog.at_level(logging.WARNING, logger="gateway.waiting.loader"):
        p = page(templates_dir=str(tmp_path))
        page(templates_dir=str(tmp_path))
    assert p.body.startswith(b"<!doctype html>")
    assert len([r for r in caplog.records if "wait.html" in r.getMessage()]) == 1


def test_builtin_templates_use_only_known_placeholders():
    known = {
        "lang", "title", "school", "heading", "message", "url", "button", "style",
        "refresh", "position_label", "position", "eta_label", "eta", "hint",
        "retry_after", "script", "retry",
    }
    for name in ("wait.html", "down.html"):
        source = (BUILTIN_DIR / name).read_text()
        used = set(re.findall(r"\$(\w+)", source))
        assert used <= known, (name, used - known)
        assert "http://" not in source and "https://" not in source


# -- the polling script --------------------------------------------------------

_NODE_HARNESS = textwrap.dedent(
    """
    const fs = require("fs");
    const [source, config] = fs.readFileSync(0, "utf8").split("\\u0000");
    const elements = {
      "sg-config": {textContent: config},
      "sg-position": {textContent: "12"},
      "sg-eta": {textContent: "about 2 minutes"},
    };
    const timers = [];
    const replies = [
      {state: "wait", position: 5, eta: 61, retry_after: 3},
      "network down",
      {error: "busy", retry_after: 25},
      {state: "wait", position: 1, eta: 10, retry_after: 1},
      {state: "go", position: 0, eta: 0, retry_after: 1},
    ];
    const log = [];
    global.document = {getElementById: (id) => elements[id] || null};
    global.window = {
      setTimeout: (fn, ms) => timers.push([fn, ms]),
      fetch: (url, opts) => {
        log.push(["fetch", url, opts.headers.Accept]);
        const reply = replies.shift();
        if (typeof reply === "string") return Promise.reject(new Error(reply));
        return Promise.resolve({json: () => Promise.resolve(reply)});
      },
      location: {replace: (url) => log.push(["replace", url])},
    };
    new Function(source)();
    (async () => {
      while (timers.length) {
        const [fn, ms] = timers.shift();
        log.push(["wait", ms]);
        fn();
        for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
        log.push(["shown", elements["sg-position"].textContent,
                  elements["sg-eta"].textContent]);
      }
      process.stdout.write(JSON.stringify(log));
    })();
    """
)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page script")
def test_polling_script_updates_page_and_leaves_on_go():
    p = page(accept_language=b"nb", status_url="/_sg/status", original_url="/home", retry_after=4)
    script = re.search(rb"<script>(.*?)</script>", p.body, re.S).group(1).decode()
    config = re.search(rb'id="sg-config">(.*?)</script>', p.body).group(1).decode()
    result = subprocess.run(
        ["node", "-e", _NODE_HARNESS], input=script + "\0" + config,
        capture_output=True, text=True, timeout=30, check=True,
    )
    log = json.loads(result.stdout)
    fetch = ["fetch", "/_sg/status", "application/json"]
    assert log == [
        ["wait", 4000], fetch, ["shown", "5", "omtrent 1 minutt"],
        ["wait", 3000], fetch, ["shown", "5", "omtrent 1 minutt"],
        # Network failure: back off from the page's base interval.
        ["wait", 8000], fetch, ["shown", "5", "omtrent 1 minutt"],
        # A non-status reply still honours its retry_after hint.
        ["wait", 25000], fetch, ["shown", "1", "under ett minutt"],
        # Poll intervals never drop below two seconds.
        ["wait", 2000], fetch, ["replace", "/home"], ["shown", "1", "under ett minutt"],
    ]


# -- a submitted request (POST, PUT, ...) is never turned into a GET ------------------


def _leads_back(body: bytes, url: str) -> bool:
    """Whether the page reloads or links anywhere (a meta refresh, a link, a
    form, a script that could navigate) or names the request's URL."""
    return (b'http-equiv="refresh"' in body or b"<a " in body or b"<form" in body
            or b"<script" in body or url.encode() in body)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("lang", ["en", "de", "nb"])
def test_refused_submission_says_nothing_was_sent_and_never_reloads(method, lang):
    p = page("wait", method=method, accept_language=lang.encode(),
             original_url="/login?next=/kurs", status_url="/.schoolgate/status", position=3)
    assert p.status == 503
    assert header(p, b"Retry-After") == b"5"
    assert not _leads_back(p.body, "/login")
    body = p.body.decode()
    catalog = CATALOGS[lang]
    for key in ("resend.wait", "resend.hint"):
        assert catalog[key].replace("{school}", "Nordby skole").replace("'", "&#x27;") in body
    assert catalog["resend.retry"]["other"].replace("{n}", "5") in body


@pytest.mark.parametrize("lang", ["en", "de", "nb"])
def test_down_page_for_a_submission_says_whether_it_was_sent(lang):
    catalog = CATALOGS[lang]
    unsent = page("down", method="POST", accept_language=lang.encode(), original_url="/hw")
    assert not _leads_back(unsent.body, "/hw")
    assert catalog["resend.down"].replace("{school}", "Nordby skole").replace(
        "'", "&#x27;") in unsent.body.decode()
    # Sent, and then the upstream failed: the page must not claim it was not.
    sent = page("down", method="POST", accept_language=lang.encode(), original_url="/hw",
                forwarded=True)
    assert not _leads_back(sent.body, "/hw")
    text = sent.body.decode()
    assert catalog["resend.unknown"].replace("{school}", "Nordby skole").replace(
        "'", "&#x27;") in text
    assert catalog["resend.hint"].replace("'", "&#x27;") not in text
    assert catalog["resend.wait"].split(",")[0] not in text


def test_get_pages_still_reload_the_url():
    for kind in ("wait", "down"):
        for method in ("GET", "HEAD"):
            p = page(kind, method=method, original_url="/kurs")
            assert b'http-equiv="refresh"' in p.body and b'href="/kurs"' in p.body


def test_json_answers_say_whether_the_request_was_forwarded():
    json_accept = b"application/json"
    wait = json.loads(page("wait", method="POST", accept=json_accept, position=2).body)
    assert wait["forwarded"] is False and wait["error"] == "busy"
    assert json.loads(page("wait", accept=json_accept).body)["forwarded"] is False
    down = json.loads(page("down", method="POST", accept=json_accept).body)
    assert down["forwarded"] is False
    down_sent = json.loads(page("down", method="POST", accept=json_accept, forwarded=True).body)
    assert down_sent["forwarded"] is True
    # A wait page's request never reached the school, whatever the caller says.
    assert json.loads(page("wait", accept=json_accept, forwarded=True).body)["forwarded"] is False


def test_school_resend_template_is_used(tmp_path):
    (tmp_path / "resend.html").write_text("<p>$school: $heading / $message</p>")
    p = page("wait", method="POST", templates_dir=str(tmp_path))
    assert p.body.startswith(b"<p>Nordby skole: It&#x27;s busy right now / Nordby skole has")
    # The school's own wait.html is not used for a submission.
    (tmp_path / "wait.html").write_text('<meta http-equiv="refresh" content="1;url=$url">')
    clear_cache()
    assert b"refresh" not in page("wait", method="POST", templates_dir=str(tmp_path)).body
