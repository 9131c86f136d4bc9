"""`schoolgate demo` shows what happens: its console prints the status
page's address and one access-log line per request, saying what admission
decided (admitted, queued, waiting page)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from gateway.demo.launcher import free_port
from tests.support.clients import RawConn, build_request, wait_until
from tests.support.procs import port_open

ROOT = Path(__file__).resolve().parents[2]


class Console:
    """The demo's standard output, read in a thread (so the pipe never
    fills) into a list of lines."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        buf = b""
        while True:
            ready, _, _ = select.select([out], [], [], 0.5)
            if not ready:
                if self.proc.poll() is not None:
                    return
                continue
            chunk = os.read(out.fileno(), 65536)
            if not chunk:
                return
            buf += chunk
            *done, buf = buf.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in done)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            for line in list(self.lines):
                m = regex.search(line)
                if m:
                    found.append(m)
                    return True
            return False

        assert wait_until(seen, timeout=timeout), \
            f"no console line matches {pattern!r}:\n" + "\n".join(self.lines)
        return found[0]


def get(port: int, host: str, target: str, results: list, accept: str = "*/*") -> None:
    with RawConn(port, timeout=30.0) as conn:
        conn.send(build_request("GET", target, [("Accept", accept)], host=host))
        results.append(conn.recv_response().status)


def test_demo_console_prints_access_lines_and_the_status_page(tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "demo.err").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--port", str(port)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, bufsize=0,
                                start_new_session=True)
    try:
        console = Console(proc)
        console.wait_for(r"Stop with Ctrl-C\.")
        admin = int(console.wait_for(r"status page\s+http://127\.0\.0\.1:(\d+)/$")[1])
        assert admin != port
        assert wait_until(lambda: port_open(port), timeout=15.0)  # banner first, then it listens
        host = f"linden.localhost:{port}"

        # Admitted at once.
        results: list[int] = []
        get(port, f"berg.localhost:{port}", "/", results)
        console.wait_for(r"^\d\d:\d\d:\d\d\.\d{3} berg/interactive GET / -> 200 admitted, "
                         r"upstream 127\.0\.0\.1:\d+ \d+ ms$")

        # Lindenschule takes 6 at once: six slow requests fill it; a page
        # asked for now waits its class's 5 s and gets the waiting page; one
        # asked for after that is let in when the slow ones finish.
        slow = [threading.Thread(target=get, args=(port, host, "/slow?ms=7000", results))
                for _ in range(6)]
        for t in slow:
            t.start()
        time.sleep(0.5)  # (only orders the requests; the checks are on the log)
        page = threading.Thread(target=get, args=(port, host, "/", results, "text/html"))
        page.start()
        page.join(30)
        console.wait_for(r"linden/interactive GET / -> 503 waiting page after \d+ ms in line")
        later = threading.Thread(target=get, args=(port, host, "/health", results))
        later.start()
        for t in [*slow, later]:
            t.join(30)
        console.wait_for(r"linden/interactive GET /slow -> 200 admitted")
        console.wait_for(r"linden/interactive GET /health -> 200 queued \d+ ms")
        assert sorted(results) == [200] * 8 + [503]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
