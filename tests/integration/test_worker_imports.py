"""A serving worker loads the page renderer when it first makes a page, and
never a Redis client; everything else it uses the supervisor imported
before forking it (supervisor.preload), so a worker imports nothing of its
own to start or to serve an admitted request. A real Worker in a fresh
interpreter, on loopback, in front of the test upstream, asked which
modules it holds as it goes.

(A worker forked by `schoolgate run` cannot be asked; this runs the same
Worker class, with the supervisor's imports, in a process of its own.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.procs import REPO_ROOT, Upstream, free_port, render_toml

RENDERER = [f"gateway.waiting.{m}" for m in ("pages", "loader", "i18n", "negotiate", "safe")]

SCRIPT = """
import asyncio, json, sys
import uvloop
import gateway.cli, gateway.server.supervisor  # what a forked worker inherits
gateway.server.supervisor.preload()  # ... with what run() imports before forking
inherited = set(sys.modules)
from gateway.config import parse_config
from gateway.server.worker import Worker

config, port, renderer = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])


def imported():  # modules imported since the fork would have happened
    return sorted(set(sys.modules) - inherited)


def held():
    return sorted(m for m in sys.modules
                  if m in renderer or m == "redis" or m.startswith("redis."))


async def fetch(host, target, accept):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\\r\\nHost: {host}\\r\\nAccept: {accept}\\r\\n"
                 "Connection: close\\r\\n\\r\\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)  # to the end: Connection: close
    writer.close()
    head, _, body = data.partition(b"\\r\\n\\r\\n")
    lines = head.decode("latin-1").split("\\r\\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return {"status": int(lines[0].split()[1]), "headers": headers,
            "body": body.decode("utf-8", "replace")}


async def main():
    worker = Worker("gateway.toml", parse_config(config.encode(), "gateway.toml"), 0)
    serving = asyncio.ensure_future(worker.serve())
    for _ in range(500):
        if worker.stopping is not None:  # listening
            break
        await asyncio.sleep(0.01)
    report = {"start": held(), "imported at start": imported()}
    report["admitted"] = await fetch("school.test", "/echo", "text/html")
    report["after admitted"] = held()
    report["imported after admitted"] = imported()
    report["down"] = await fetch("down.test", "/page", "text/html")
    report["after down"] = held()
    report["imported after down"] = imported()
    report["status"] = await fetch("school.test", "/.schoolgate/status", "application/json")
    worker.drain()
    await asyncio.wait_for(serving, 10)
    print(json.dumps(report))


uvloop.run(main())
"""


def test_worker_loads_the_renderer_with_its_first_page(upstream: Upstream):
    port = free_port()
    config = render_toml({
        "server": {"listen": f"127.0.0.1:{port}"},
        "schools": [
            {"name": "school", "title": "Example School", "hosts": ["school.test"],
             "upstreams": [upstream.addr]},
            # Nothing listens there: its requests get the "down" page.
            {"name": "down", "title": "Down School", "hosts": ["down.test"],
             "upstreams": [f"127.0.0.1:{free_port()}"]},
        ],
    })
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, config, str(port), json.dumps(RENDERER)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])

    # Serving an admitted request needs neither the renderer nor Redis, and
    # nothing the supervisor did not import before forking: whatever a
    # worker imports itself costs every worker its own copy (see preload).
    assert report["start"] == []
    assert report["imported at start"] == []
    assert report["admitted"]["status"] == 200
    assert json.loads(report["admitted"]["body"])["target"] == "/echo"
    assert report["after admitted"] == []
    assert report["imported after admitted"] == []
    assert upstream.requests("/echo") == 1

    # The first page loads the renderer, and the page is the real one.
    down = report["down"]
    assert down["status"] == 503
    assert down["headers"]["Content-Type"].startswith("text/html")
    assert int(down["headers"]["Retry-After"]) >= 1
    assert "Down School" in down["body"]
    assert report["after down"] == sorted(RENDERER)
    assert set(RENDERER) <= set(report["imported after down"])

    status = report["status"]
    assert status["status"] == 200
    assert status["headers"]["Content-Type"] == "application/json"
    assert json.loads(status["body"])["state"] == "go"
