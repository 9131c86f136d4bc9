"""Request and response bodies: every framing, 100-continue, and large streamed
transfers that must not grow the gateway's memory."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.clients import HOST, RawConn, build_request, chunked, http_client
from tests.support.pattern import BLOCK, pattern, pattern_bytes, pattern_sha256
from tests.support.procs import RssSampler

MB = 1024 * 1024
GB = 1024 * MB
# Generous: the gateway's buffers are bounded by [limits] max_buffer (256 KiB
# per direction), so growth near a 100 MB is a transfer being held in memory.
RSS_GROWTH_LIMIT = 100 * MB
BIG = [pytest.param(200 * MB, id="200MB"),
       pytest.param(2 * GB, id="2GB", marks=pytest.mark.slow)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zeros_sha256(n: int) -> str:
    digest, block = hashlib.sha256(), bytes(BLOCK)
    for off in range(0, n, BLOCK):
        digest.update(block[:min(BLOCK, n - off)])
    return digest.hexdigest()


def header_names(echo: dict) -> set[str]:
    return {k.lower() for k, _ in echo["headers"]}


def test_content_length_body_reaches_upstream_intact(gateway):
    body = os.urandom(3 * MB + 17)
    with RawConn(gateway.port) as conn:
        conn.send(build_request("POST", "/echo", body=body))
        echo = conn.recv_response().json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == sha256(body)


def test_chunked_body_reaches_upstream_intact(gateway):
    pieces = [os.urandom(n) for n in (1, 10, 4096, 65536, 300000, 3)]
    body = b"".join(pieces)
    with RawConn(gateway.port) as conn:
        conn.send(build_request("POST", "/echo", [("Transfer-Encoding", "chunked")],
                                chunked(*pieces)))
        resp = conn.recv_response()
        assert resp.status == 200
        echo = resp.json()
        assert echo["body_length"] == len(body)
        assert echo["body_sha256"] == sha256(body)
        # Re-chunked or given a length, but never framed twice.
        names = header_names(echo)
        assert not {"content-length", "transfer-encoding"} <= names
        # The connection survives a chunked body.
        conn.send(build_request("GET", "/echo"))
        assert conn.recv_response().json()["request_number"] == 2


def test_chunked_body_sent_in_small_writes(gateway):
    body = os.urandom(20000)
    wire = build_request("PUT", "/upload", [("Transfer-Encoding", "chunked")],
                         chunked(body[:7000], body[7000:7001], body[7001:]))
    with RawConn(gateway.port) as conn:
        # Framing split at awkward places: inside chunk sizes and CRLFs.
        for i in range(0, len(wire), 997):
            conn.send(wire[i:i + 997])
        payload = conn.recv_response().json()
    assert payload == {"length": len(body), "sha256": sha256(body), "expect": False}


def test_empty_chunked_body(gateway):
    with RawConn(gateway.port) as conn:
        conn.send(build_request("POST", "/echo", [("Transfer-Encoding", "chunked")],
                                chunked()))
        echo = conn.recv_response().json()
    assert echo["body_length"] == 0


def test_content_length_response(gateway):
    with RawConn(gateway.port) as conn:
        conn.send(build_request(target="/bytes?n=1000003"))
        resp = conn.recv_response()
    assert resp.framing == "length"
    assert resp.header("Content-Length") == "1000003"
    assert resp.body == pattern_bytes(1000003)


@pytest.mark.parametrize("size", [1, 100, 8192, 70000])
def test_chunked_response(gateway, size):
    with RawConn(gateway.port) as conn:
        conn.send(build_request(target=f"/chunked?n=200000&size={size}"))
        resp = conn.recv_response()
        assert resp.status == 200
        assert resp.framing in ("chunked", "length")
        assert resp.body == pattern_bytes(200000)
        conn.send(build_request(target="/echo"))
        assert conn.recv_response().status == 200


def test_close_delimited_response(gateway):
    with RawConn(gateway.port) as conn:
        conn.send(build_request(target="/until-close?n=500000"))
        resp = conn.recv_response()
        assert resp.status == 200
        assert resp.body == pattern_bytes(500000)
        if resp.framing == "close":
            assert conn.eof
        else:
            # Re-chunked for the client, whose connection then stays usable.
            assert resp.framing == "chunked"
            conn.send(build_request(target="/echo"))
            assert conn.recv_response().status == 200


@pytest.mark.parametrize("target", ["/continue", "/upload"])
def test_expect_100_continue(gateway, target):
    body = os.urandom(100000)
    with RawConn(gateway.port) as conn:
        conn.send(build_request("POST", target, [("Expect", "100-continue"),
                                                 ("Content-Length", str(len(body)))]))
        interim = conn.recv_response(final=False)
        assert interim.status == 100
        conn.send(body)
        resp = conn.recv_response()
    assert resp.status == 200
    payload = resp.json()
    assert (payload["length"], payload["sha256"]) == (len(body), sha256(body))


def test_expect_100_continue_with_chunked_body(gateway):
    body = os.urandom(50000)
    with RawConn(gateway.port) as conn:
        conn.send(build_request("POST", "/upload", [("Expect", "100-continue"),
                                                    ("Transfer-Encoding", "chunked")]))
        assert conn.recv_response(final=False).status == 100
        conn.send(chunked(body[:20000], body[20000:]))
        payload = conn.recv_response().json()
    assert (payload["length"], payload["sha256"]) == (len(body), sha256(body))


def test_streamed_upload_with_content_length_via_httpx(gateway):
    n = 64 * MB + 5

    def blocks() -> Iterator[bytes]:
        for off in range(0, n, BLOCK):
            yield pattern(off, min(BLOCK, n - off))

    with http_client(gateway.url, timeout=60) as client:
        resp = client.put("/upload", content=blocks(), headers={"Content-Length": str(n)})
    assert resp.status_code == 200
    assert resp.json()["length"] == n
    assert resp.json()["sha256"] == pattern_sha256(n)


def curl(*args: str) -> list[str]:
    return ["curl", "--silent", "--show-error", "--fail-with-body", "--max-time", "300",
            "-H", f"Host: {HOST}", *args]


@pytest.mark.parametrize("n", BIG)
def test_large_upload_streams_through(gateway, n):
    cmd = f"head -c {n} /dev/zero | " + shlex.join(curl("-T", "-", f"{gateway.url}/upload"))
    with RssSampler(gateway) as rss:
        done = subprocess.run(cmd, shell=True, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    payload = json.loads(done.stdout)
    assert payload["length"] == n
    assert payload["sha256"] == zeros_sha256(n)
    assert rss.samples > 1
    assert rss.growth < RSS_GROWTH_LIMIT, (rss.idle, rss.peak)


@pytest.mark.parametrize("n", BIG)
def test_large_download_streams_through(gateway, n):
    digest, received = hashlib.sha256(), 0
    with RssSampler(gateway) as rss, subprocess.Popen(
        curl(f"{gateway.url}/bytes?n={n}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        while block := proc.stdout.read(MB):
            digest.update(block)
            received += len(block)
        assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    assert received == n
    assert digest.hexdigest() == pattern_sha256(n)
    assert rss.growth < RSS_GROWTH_LIMIT, (rss.idle, rss.peak)
