"""The waiting room in a real browser (headless Chromium through the gateway).

A school with max_inflight = 1 is kept full by an occupant: a POST whose body
is held back, so the upstream has its head and waits for the rest. Releasing
the occupant (sending the body) ends that request the ordinary way and frees
the slot. Pages are opened at http://school.test:<port>/ (Chromium maps the
name to 127.0.0.1); GET requests queue for at most a short max_wait and then
get the waiting page, which must take the visitor on by itself once the slot
is free: by its polling script, or by its meta refresh when scripts are off.

No timing is asserted: every wait for the page to move on has a generous
timeout and checks only where the browser ended up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Response

from gateway.waiting.i18n import eta_table, eta_text
from tests.support.browser import PageWatch, chromium_available, launch_chromium
from tests.support.clients import RawConn, build_request, wait_until
from tests.support.procs import Gateway, Upstream, gateway_config

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available(), reason="needs /usr/bin/chromium"),
]

SCHOOL = "Gymnasium Nord"
STATUS_PATH = "/.schoolgate/status"
COOKIE = "schoolgate_ticket"
# Long enough for a waiting page that polls every few seconds, with slack for
# a loaded two-core CI machine.
MOVE_ON_MS = 30_000
# Marks the upstream's /echo JSON: the visitor reached the real page.
REAL_PAGE_TEXT = "body_sha256"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as b:
        yield b


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., tuple[Page, PageWatch]]]:
    """new_page(**context_options) -> (page, watch) in a fresh context of its own
    (its own cookie jar: a separate visitor); every context closed afterwards."""
    contexts: list[BrowserContext] = []

    def make(**options) -> tuple[Page, PageWatch]:
        ctx = browser.new_context(**options)
        contexts.append(ctx)
        page = ctx.new_page()
        return page, PageWatch(page)

    yield make
    for ctx in contexts:
        ctx.close()


class Occupant:
    """Holds one of the school's slots until release(): a POST /echo whose
    body is held back, so the upstream waits for it with the slot taken."""

    BODY = b"done"

    def __init__(self, gw: Gateway, up: Upstream) -> None:
        before = up.requests("/echo", "POST")
        self.conn = RawConn(gw.port, timeout=10.0)
        self.conn.send(build_request(
            "POST", "/echo?occupant=1", headers=[("Content-Length", str(len(self.BODY)))]))
        # Admitted and forwarded: the upstream has the head.
        assert wait_until(lambda: up.requests("/echo", "POST") > before, timeout=10.0)
        self.released = False

    def release(self) -> None:
        self.released = True
        self.conn.send(self.BODY)
        resp = self.conn.recv_response("POST")
        assert resp.status == 200, resp
        self.conn.close()

    def close(self) -> None:
        """Finish the request if the test did not: the gateway's SIGTERM drain
        would wait for it (a client's FIN alone does not end a request)."""
        if not self.released:
            try:
                self.release()
            except OSError:
                self.conn.close()


@pytest.fixture
def full_school(make_upstream, make_gateway) -> Iterator[tuple[Gateway, Occupant]]:
    """A gateway whose one school (max_inflight 1) is full; yields (gateway, occupant)."""
    up = make_upstream("u1")
    config = gateway_config(
        [up.addr],
        # The occupant holds the slot by holding back its body, which only a
        # school that streams bodies (no request buffering) lets it do.
        school={"max_inflight": 1, "title": SCHOOL, "request_buffering": False},
        # A short Retry-After keeps the meta refresh and the polls brisk.
        admission={"max_queue": 1, "max_retry": 2, "secret": "browser-test-secret-0123456789"},
        # One class for everything, queueing briefly before the waiting page.
        classes=[{"name": "interactive", "priority": 10, "max_wait": 0.3}],
    )
    gw = make_gateway(config)
    occupant = Occupant(gw, up)
    yield gw, occupant
    occupant.close()


def school_url(gw: Gateway, target: str) -> str:
    return f"http://school.test:{gw.port}{target}"


def open_waiting_page(page: Page, url: str) -> Response:
    resp = page.goto(url)
    assert resp is not None
    assert resp.status == 503, resp.status
    return resp


def wait_for_real_page(page: Page) -> None:
    """The page moved on by itself to the upstream's answer."""
    page.get_by_text(REAL_PAGE_TEXT).wait_for(timeout=MOVE_ON_MS)


def is_status_poll(r) -> bool:
    return r.url.endswith(STATUS_PATH)


def eta_wordings(lang: str) -> set[str]:
    """Every wording the page may show as its estimate in `lang`, "not known
    yet" included: with no admission measured yet in the fleet, the page
    says so rather than guess (gateway/proxy/admission.py _wait_answer)."""
    steps, beyond = eta_table(lang)
    return {wording for _, wording in steps} | {beyond, eta_text(lang, None)}


def test_full_school_shows_waiting_page_and_takes_visitor_on(full_school, new_page):
    gw, occupant = full_school
    page, watch = new_page()
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if is_status_poll(r) else None)
    loads: list[str] = []
    page.on("request", lambda r: loads.append(r.url) if r.is_navigation_request() else None)
    url = school_url(gw, "/echo?lesson=42")

    resp = open_waiting_page(page, url)
    headers = resp.headers
    retry_after = headers.get("retry-after", "")
    assert retry_after.isdigit() and int(retry_after) >= 1, headers
    assert headers.get("cache-control") == "no-store"
    assert headers.get("content-type", "").startswith("text/html")

    assert SCHOOL in page.title()
    assert page.locator(".school").inner_text() == SCHOOL
    assert page.locator("#sg-position").inner_text() == "1"
    assert page.locator("#sg-eta").inner_text() in eta_wordings("en")
    # The manual way on points at the very URL the visitor asked for.
    assert page.locator("a.button").get_attribute("href") == "/echo?lesson=42"

    # The page keeps polling while the school is full, and stays put.
    with page.expect_request(is_status_poll, timeout=MOVE_ON_MS):
        pass
    with page.expect_request(is_status_poll, timeout=MOVE_ON_MS):
        pass
    assert page.locator("#sg-position").inner_text() == "1"
    assert statuses and set(statuses) == {200}
    assert loads == [url]

    occupant.release()
    wait_for_real_page(page)
    assert page.url == url
    # One reload, by the page itself, straight to the real page.
    assert loads == [url, url]
    assert watch.errors == []


def test_ticket_cookie_is_httponly_and_scoped_to_the_school(full_school, new_page):
    gw, _ = full_school
    page, _ = new_page()
    resp = open_waiting_page(page, school_url(gw, "/echo"))
    set_cookie = resp.header_value("set-cookie") or ""
    assert set_cookie.startswith(f"{COOKIE}="), set_cookie

    cookies = [c for c in page.context.cookies() if c["name"] == COOKIE]
    assert len(cookies) == 1, cookies
    cookie = cookies[0]
    assert cookie["httpOnly"] is True
    assert cookie["domain"] == "school.test"
    assert cookie["path"] == "/"
    assert cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False  # plain HTTP listener
    # Scripts on the page cannot read it.
    assert COOKIE not in page.evaluate("() => document.cookie")


def test_waiting_page_obeys_its_own_content_security_policy(full_school, new_page):
    gw, _ = full_school
    page, watch = new_page()
    resp = open_waiting_page(page, school_url(gw, "/echo"))
    csp = resp.headers.get("content-security-policy", "")
    assert "script-src 'sha256-" in csp and "connect-src 'self'" in csp, csp

    # Two polls: the inline script ran under its hash, its fetch to the status
    # endpoint passed connect-src, and it scheduled the next one.
    for _ in range(2):
        with page.expect_response(is_status_poll, timeout=MOVE_ON_MS) as poll:
            pass
        assert poll.value.status == 200
    assert watch.csp == [], watch.console
    assert watch.errors == []

    # The watch does see a violation on this page: an injected inline script.
    with page.expect_console_message(lambda m: PageWatch.is_csp(m.text), timeout=5_000):
        page.evaluate("""() => {
            const s = document.createElement("script");
            s.textContent = "window.injected = true";
            document.body.append(s);
        }""")
    assert page.evaluate("() => window.injected === undefined")


def test_without_javascript_meta_refresh_takes_visitor_on(full_school, new_page):
    gw, occupant = full_school
    page, _ = new_page(java_script_enabled=False)
    url = school_url(gw, "/echo?no-js=1")
    resp = open_waiting_page(page, url)
    retry_after = resp.headers.get("retry-after", "")
    assert retry_after.isdigit()

    # With scripting off, the <noscript> in the head yields a real meta element.
    refresh = page.locator('meta[http-equiv="refresh"]')
    assert refresh.count() == 1
    assert refresh.get_attribute("content") == f"{retry_after};url=/echo?no-js=1"
    assert page.locator("#sg-position").inner_text() == "1"

    # It refreshes into the waiting page again while the school is full...
    with page.expect_response(lambda r: r.url == url, timeout=MOVE_ON_MS) as again:
        pass
    assert again.value.status == 503

    # ...and onto the real page once there is room.
    occupant.release()
    wait_for_real_page(page)
    assert page.url == url


@pytest.mark.parametrize(("locale", "lang", "title", "heading", "label"), [
    ("de-DE", "de", "Bitte warten", "Gerade ist viel los", "Ihr Platz in der Warteschlange"),
    ("nb-NO", "nb", "Vennligst vent", "Det er mye trafikk akkurat nå", "Din plass i køen"),
])
def test_waiting_page_speaks_the_browsers_language(full_school, new_page,
                                                   locale, lang, title, heading, label):
    gw, _ = full_school
    page, _ = new_page(locale=locale)
    resp = open_waiting_page(page, school_url(gw, "/echo"))
    assert resp.request.headers.get("accept-language", "").startswith(locale)
    assert resp.headers.get("content-language") == lang

    assert page.locator("html").get_attribute("lang") == lang
    assert page.title() == f"{title} \u2013 {SCHOOL}"
    assert page.locator("h1").inner_text() == heading
    assert page.locator(".status > p.label").inner_text() == label
    # The live updates keep to the page's language.
    with page.expect_response(is_status_poll, timeout=MOVE_ON_MS):
        pass
    assert page.locator("#sg-eta").inner_text() in eta_wordings(lang)


@pytest.mark.parametrize("first_scripted", [True, False], ids=["scripted", "no-script"])
def test_two_visitors_are_taken_on_first_come_first_served(full_school, new_page,
                                                           first_scripted):
    """A later visitor's polling page never overtakes an earlier one, even
    when the earlier one only has its meta refresh to come back with."""
    gw, occupant = full_school
    first, _ = new_page(java_script_enabled=first_scripted)
    second, _ = new_page()
    arrivals: list[str] = []
    for who, page in (("first", first), ("second", second)):
        page.on("response", lambda r, who=who: arrivals.append(who)
                if r.status == 200 and r.request.is_navigation_request() else None)

    open_waiting_page(first, school_url(gw, "/echo?who=first"))
    open_waiting_page(second, school_url(gw, "/echo?who=second"))
    assert first.locator("#sg-position").inner_text() == "1"
    assert second.locator("#sg-position").inner_text() == "2"

    occupant.release()
    wait_for_real_page(first)
    wait_for_real_page(second)
    assert arrivals == ["first", "second"]
