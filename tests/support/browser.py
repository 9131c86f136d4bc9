"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by
playwright's sync API (no browser downloaded by `playwright install`).

Chromium resolves the test school's names (school.test, *.school.test) to
127.0.0.1 itself, so a page can be opened at http://school.test:<gateway port>/
and the gateway routes it by its real Host header.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")

CHROMIUM_ARGS = (
    "--no-sandbox",  # root in a container has no user namespace to sandbox with
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--no-proxy-server",  # never send the test school to an http_proxy from the environment
    "--no-first-run",
    "--host-resolver-rules=MAP school.test 127.0.0.1, MAP *.school.test 127.0.0.1",
)


def chromium_available() -> bool:
    return CHROMIUM.exists()


@contextmanager
def launch_chromium(*extra_args: str) -> Iterator[Browser]:
    """A headless Chromium, closed (and playwright's driver stopped) on exit."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=[*CHROMIUM_ARGS, *extra_args],
        )
        try:
            yield browser
        finally:
            browser.close()


# Runs in every document before its own scripts, from the DevTools protocol,
# so the page's Content-Security-Policy does not apply to it.
_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("csp-violation: " + e.effectiveDirective + " blocked " + e.blockedURI);
});
"""


class PageWatch:
    """What a page (and every document it navigates to) reported.

    `csp` collects Content-Security-Policy violations (both the DOM event and
    Chromium's own "Refused to ..." console line), `errors` uncaught script
    exceptions. Listeners run when playwright dispatches events, i.e. inside
    any playwright call, not during time.sleep().
    """

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        self.csp: list[str] = []
        self.errors: list[str] = []
        page.add_init_script(_CSP_LISTENER)
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    @staticmethod
    def is_csp(text: str) -> bool:
        return text.startswith("csp-violation:") or "Content Security Policy" in text

    def _on_console(self, msg: ConsoleMessage) -> None:
        self.console.append(f"{msg.type}: {msg.text}")
        if self.is_csp(msg.text):
            self.csp.append(msg.text)


__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "PageWatch", "chromium_available", "launch_chromium"]
