"""What the installed package imports: never test code, and in a worker only
what serving needs (no Redis client, no page renderer until a page is made).

Each check runs in a fresh interpreter, since this one has imported the tests
and everything they use. No sockets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GATEWAY = REPO / "gateway"

# The waiting-page renderer: templates, translations, content negotiation.
RENDERER = [f"gateway.waiting.{m}" for m in ("pages", "loader", "i18n", "negotiate", "safe")]

CONFIG = """
[server]
listen = "127.0.0.1:1"

[[schools]]
name = "school"
title = "Example School"
hosts = ["school.test"]
upstreams = ["127.0.0.1:9"]
"""


def run_python(code: str) -> dict:
    """Run `code` in a new interpreter at the checkout; it prints one JSON object."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_package_holds_no_reference_model():
    """The plain-Python models are test oracles (tests/oracles/), not product code."""
    assert sorted(GATEWAY.rglob("reference.py")) == []
    assert sorted(p.stem for p in (REPO / "tests" / "oracles").glob("*.py")) == [
        "__init__", "admission", "http", "routing", "shares"]


def test_no_gateway_module_imports_test_code():
    # Run at the checkout, where `tests` is importable: none of it may be
    # pulled in by any gateway module (every one, not only a worker's).
    report = run_python("""
import json, pkgutil, importlib, sys
import gateway
names = sorted(m.name for m in pkgutil.walk_packages(gateway.__path__, "gateway.")
               if not m.name.endswith(".__main__"))  # __main__ runs the CLI
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
""")
    # The walk reached every layer, the native modules included.
    for name in ("gateway.server.worker", "gateway.proxy.app", "gateway.demo.upstream",
                 "gateway.waiting.pages", "gateway._native.head", "gateway._native.router",
                 "gateway._native.scheduler"):
        assert name in report["imported"], name
    leaked = [m for m in report["modules"]
              if m == "tests" or m.startswith("tests.") or m.rsplit(".", 1)[-1] == "reference"]
    assert leaked == []


def test_a_worker_starts_without_redis_or_the_page_renderer():
    # What a worker holds when it starts serving: the supervisor's imports
    # (inherited through fork: the CLI, the bind check's worker module, the
    # ticket secret) and the Worker with its App and admission state built.
    report = run_python(f"""
import json, sys
import gateway.cli, gateway.server.supervisor
from gateway.config import parse_config
from gateway.proxy.admission import process_secret
from gateway.server.worker import Worker
process_secret()
worker = Worker("gateway.toml", parse_config({CONFIG!r}.encode(), "gateway.toml"), 0)
assert worker.app.admission.enabled
print(json.dumps({{"modules": sorted(sys.modules)}}))
""")
    modules = set(report["modules"])
    assert "gateway.server.worker" in modules and "gateway.waiting.tickets" in modules
    assert sorted(m for m in modules if m == "redis" or m.startswith("redis.")) == []
    assert sorted(modules & set(RENDERER)) == []
    assert "difflib" not in modules  # only a misspelt config key needs it


def test_the_first_page_loads_the_renderer_and_renders():
    report = run_python(f"""
import json, sys
from gateway import waiting
from gateway.config import parse_config
from gateway.proxy.app import App
app = App(parse_config({CONFIG!r}.encode(), "gateway.toml"))
loaded = {{"start": [m for m in {RENDERER!r} if m in sys.modules]}}
waiting.clear_cache()  # a reload before any page: nothing to forget, nothing loaded
loaded["after clear_cache"] = [m for m in {RENDERER!r} if m in sys.modules]
page = waiting.render("down", school_title="Example School", accept=b"text/html",
                      accept_language=b"de", retry_after=5)
loaded["after render"] = [m for m in {RENDERER!r} if m in sys.modules]
from gateway.waiting import pages, negotiate
status = json.loads(waiting.render_status_json("wait", 3, 12.0, 2))
print(json.dumps({{
    "loaded": loaded,
    "status": page.status,
    "headers": {{k.decode(): v.decode() for k, v in page.headers}},
    "body": page.body.decode(),
    "same": [waiting.render is pages.render, waiting.Page is pages.Page,
             waiting.wants_json is negotiate.wants_json,
             waiting.choose_language is negotiate.choose_language],
    "json": status,
    "unknown": not hasattr(waiting, "no_such_name"),
}}))
""")
    assert report["loaded"]["start"] == []
    assert report["loaded"]["after clear_cache"] == []
    assert sorted(report["loaded"]["after render"]) == sorted(RENDERER)
    assert report["status"] == 503
    assert report["headers"]["Content-Type"].startswith("text/html")
    assert report["headers"]["Retry-After"] == "5"
    assert report["headers"]["Content-Language"] == "de"
    assert "Example School" in report["body"]
    assert report["same"] == [True, True, True, True]
    assert report["json"]["state"] == "wait" and report["json"]["position"] == 3
    assert report["unknown"]
