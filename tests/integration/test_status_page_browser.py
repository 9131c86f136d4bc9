"""The admin status page in headless Chromium: the figures it shows come
from the running gateway and change without a reload.

A school with max_inflight = 2 holds one request in flight (a POST whose
body is held back, so the upstream has its head and waits for the rest).
The page must show 1 of 2 in flight and the upstream up; once the request
ends, 0 of 2, in the same document (no navigation). A screenshot is taken
and checked to be a real picture of the page.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.support.browser import chromium_available, launch_chromium
from tests.support.clients import RawConn, build_request, wait_until
from tests.support.procs import free_port

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available(), reason="needs /usr/bin/chromium"),
]

UPDATE_MS = 15_000


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_status_page_shows_live_figures(make_upstream, make_gateway, tmp_path):
    up = make_upstream("u1")
    dead = f"127.0.0.1:{free_port()}"
    gw = make_gateway(
        upstreams=[up],
        server={"admin_listen": f"127.0.0.1:{free_port()}"},
        schools=[{"name": "nord", "title": "Gymnasium Nord", "hosts": ["school.test"],
                  "upstreams": [up.addr], "max_inflight": 2, "request_buffering": False},
                 {"name": "sued", "hosts": ["sued.test"], "upstreams": [dead]}])
    before = up.requests("/echo", "POST")
    occupant = RawConn(gw.port, timeout=10.0)
    occupant.send(build_request("POST", "/echo", headers=[("Content-Length", "4")]))
    assert wait_until(lambda: up.requests("/echo", "POST") > before, timeout=10.0)
    released = False
    try:
        with launch_chromium() as browser:
            page = browser.new_page(viewport={"width": 1200, "height": 500})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(gw.admin_url + "/")
            nord = page.locator('tr[data-school="nord"]')
            inflight = nord.locator("td.inflight")
            inflight.filter(has_text="1 / 2").wait_for(timeout=UPDATE_MS)
            page.evaluate("window.__sameDocument = true")
            assert "Gymnasium Nord (nord)" in nord.inner_text()
            assert nord.locator("td.upstreams").inner_text().strip() == f"{up.addr} up"
            queued = nord.locator("td.queued").inner_text()
            assert "interactive: 0" in queued and "bulk: 0" in queued
            assert nord.locator("td.pages").inner_text() == "0"
            sued = page.locator('tr[data-school="sued"]')
            assert dead in sued.locator("td.upstreams").inner_text()
            assert sued.locator("td.inflight").inner_text() == "0 / unlimited"
            assert "1 of 1 worker(s) reporting" in page.locator("#summary").inner_text()
            shot = tmp_path / "status-page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"status page screenshot: {shot}")
            width, height = png_size(shot)
            assert width == 1200 and height >= 200
            # A drawn table, not a blank page: a compressed PNG of text and
            # colour bars is several kilobytes.
            assert shot.stat().st_size > 8000

            occupant.send(b"done")
            assert occupant.recv_response("POST").status == 200
            released = True
            inflight.filter(has_text="0 / 2").wait_for(timeout=UPDATE_MS)
            assert page.evaluate("window.__sameDocument") is True
            assert errors == []
    finally:
        if not released:
            try:
                occupant.send(b"done")
                occupant.recv_response("POST")
            except OSError:
                pass
        occupant.close()
