"""Head processing hot path, native vs plain-Python reference.

Run: `python -m bench.micro` (every micro-benchmark, native beside reference);
`python -m bench.micro -k bench_head` for this file only.
"""

from __future__ import annotations

import pytest

# gateway.http re-exports the native parsing and serialization modules.
import gateway.http as native
from tests.oracles import http as reference

IMPLS = pytest.mark.parametrize("m", [native, reference], ids=["native", "reference"])

# What a current browser sends for a page of a school platform.
BROWSER = [
    (b"Host", b"portal.gymnasium-nord.example"),
    (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"Accept-Language", b"de-DE,de;q=0.8,en-US;q=0.5,en;q=0.3"),
    (b"Accept-Encoding", b"gzip, deflate, br, zstd"),
    (b"Connection", b"keep-alive"),
    (b"Cookie", b"MoodleSession=4f9a1c2e8b7d6a5f; lang=de; theme=classic"),
    (b"Upgrade-Insecure-Requests", b"1"),
    (b"Sec-Fetch-Dest", b"document"),
    (b"Sec-Fetch-Mode", b"navigate"),
]

UPSTREAM = [
    (b"Date", b"Mon, 02 Sep 2024 07:45:12 GMT"),
    (b"Server", b"Apache"),
    (b"Content-Type", b"text/html; charset=utf-8"),
    (b"Content-Length", b"48213"),
    (b"Cache-Control", b"private, no-cache, no-store, must-revalidate"),
    (b"Set-Cookie", b"MoodleSession=4f9a1c2e8b7d6a5f; path=/; HttpOnly; Secure"),
    (b"Keep-Alive", b"timeout=5, max=100"),
    (b"Connection", b"Keep-Alive"),
]


@IMPLS
def test_request_parse_serialize(benchmark, m):
    def run():
        head = m.parse_request_head(b"GET", b"/course/view.php?id=42", "1.1", BROWSER, False)
        return m.serialize_request_head(head, b"203.0.113.9", b"https", b"schoolgate")

    assert benchmark(run).startswith(b"GET /course/view.php?id=42 HTTP/1.1\r\n")


@IMPLS
def test_request_parse(benchmark, m):
    head = benchmark(m.parse_request_head, b"GET", b"/course/view.php?id=42", "1.1", BROWSER,
                     False)
    assert head.host == b"portal.gymnasium-nord.example"


@IMPLS
def test_response_parse_serialize(benchmark, m):
    def run():
        head = m.parse_response_head(200, b"OK", "1.1", UPSTREAM)
        return m.serialize_response_head(head, 11, False, True, b"schoolgate")

    assert benchmark(run).startswith(b"HTTP/1.1 200 OK\r\n")


@IMPLS
def test_request_serialize(benchmark, m):
    """Serialization alone: the head as sent upstream, with forwarding headers."""
    head = m.parse_request_head(b"GET", b"/course/view.php?id=42", "1.1", BROWSER, False)
    out = benchmark(m.serialize_request_head, head, b"203.0.113.9", b"https", b"schoolgate")
    assert out.startswith(b"GET /course/view.php?id=42 HTTP/1.1\r\n")


@IMPLS
def test_response_serialize(benchmark, m):
    head = m.parse_response_head(200, b"OK", "1.1", UPSTREAM)
    out = benchmark(m.serialize_response_head, head, 11, False, True, b"schoolgate")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
