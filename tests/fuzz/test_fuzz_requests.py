"""Differential fuzzing, request side: generated client byte streams through a
real gateway, judged against h11's reading of them (tests/support/fuzz.py
has the oracle, tests/support/fuzz_strategies.py the generator).

- test_request_corpus replays the cases the fuzzer found (and a few it
  must keep passing); the ones that fail on the current gateway are xfail
  with the issue point they belong to (tests/fuzz/known.py).
- test_request_streams is the bounded run of the default suite: a fixed set
  of generated streams (derandomized, so CI sees the same ones), without the
  features of the known faults.
- test_request_streams_long (-m fuzz) generates everything, randomly, as
  many as FUZZ_EXAMPLES (default 2000), and shrinks what fails.
"""

from __future__ import annotations

import pytest
from hypothesis import given

from tests.fuzz.known import KNOWN_FAILING, known
from tests.support.fuzz import (
    RequestCase,
    bounded_settings,
    check_request_case,
    fail_on,
    long_settings,
    report,
)
from tests.support.fuzz_strategies import (
    ABSOLUTE_OTHER_HOST,
    BARE_CR_START,
    CONNECT_FRAMING,
    LONG_CHUNK_SIZE,
    LONG_CONTENT_LENGTH,
    SMUGGLED,
    UPGRADE_FRAMING,
    request_cases,
)

CHUNKED_POST = b"POST /up HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n"


def case(*pieces: bytes) -> RequestCase:
    return RequestCase(list(pieces))


CORPUS = [
    # -- found failing (exact bytes; each write is one piece) --------------------
    pytest.param(case(CHUNKED_POST + b"00000000000000000000010\r\n",
                      b"0\r\n\r\nAAAAAAAAAAA\r\n0\r\n\r\n"),
                 id="chunk-size-23-digits-then-last-chunk-in-next-read",
                 marks=known(LONG_CHUNK_SIZE)),
    pytest.param(case(b"CONNECT alpha.test:443 HTTP/1.1\r\nHost: alpha.test\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED),
                 id="connect-content-length-body-is-a-request",
                 marks=known(CONNECT_FRAMING)),
    pytest.param(case(b"CONNECT alpha.test:443 HTTP/1.1\r\nHost: alpha.test\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
                 id="connect-chunked", marks=known(CONNECT_FRAMING)),
    pytest.param(case(b"GET /ws HTTP/1.1\r\nHost: alpha.test\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nContent-Length: 3\r\n\r\nabc"),
                 id="websocket-upgrade-with-content-length", marks=known(UPGRADE_FRAMING)),
    pytest.param(case(b"POST /h2c HTTP/1.1\r\nHost: alpha.test\r\nUpgrade: h2c\r\n"
                      b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
                 id="h2c-upgrade-with-chunked-body", marks=known(UPGRADE_FRAMING)),
    pytest.param(case(b"POST /f0 HTTP/1.1\r\nHost: alpha.test\r\n"
                      b"Content-Length: 0000000000000000000005\r\n\r\nhello"),
                 id="content-length-22-digits", marks=known(LONG_CONTENT_LENGTH)),
    pytest.param(case(b"\rGET /f0 HTTP/1.1\r\nHost: alpha.test\r\n\r\n"),
                 id="bare-cr-before-request-line", marks=known(BARE_CR_START)),
    pytest.param(case(b"GET http://beta.test/f0 HTTP/1.1\r\nHost: alpha.test\r\n\r\n"),
                 id="absolute-form-other-host", marks=known(ABSOLUTE_OTHER_HOST)),
    # Found by the long run: a Content-Length that ends inside the smuggled
    # head leaves "\n\r\n" before the next request line (a bare LF: refused).
    pytest.param(case(b"GET /f0 HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 40\r\n\r\n"
                      b"GET /smuggled HTTP/1.1\r\nHost: beta.test\r\n\r\n"),
                 id="content-length-ends-inside-a-head"),
    # -- must keep passing ---------------------------------------------------------
    pytest.param(case(CHUNKED_POST + b"0000000000000005\r\nhello\r\n0\r\n\r\n"),
                 id="chunk-size-16-digits"),
    pytest.param(case(CHUNKED_POST + b"00000000000000000000005\r\nhello\r\n0\r\n\r\n"),
                 id="chunk-size-23-digits-one-read"),
    pytest.param(case(CHUNKED_POST + b"5;a=\"x y\"\r\nhe", b"llo\r\n0\r\n", b"\r\n"),
                 id="chunk-extension-across-reads"),
    pytest.param(case(b"GET /f0 HTTP/1.0\r\nConnection: keep-alive\r\nHost: alpha.test\r\n"
                      b"Content-Length: 1\r\n\r\nu"
                      b"POST /f1 HTTP/1.1\r\nContent-Length: 1\r\nHost: beta.test\r\n\r\nu"
                      b"GET /f2 HTTP/1.1\r\nHost: alpha.test:80\r\n\r\n"),
                 id="http10-keep-alive-pipeline"),
    pytest.param(case(b"CONNECT alpha.test:443 HTTP/1.1\r\nHost: alpha.test\r\n\r\n"
                      b"GET /f1 HTTP/1.1\r\nHost: alpha.test\r\n\r\n"),
                 id="connect-without-body-then-get"),
    pytest.param(case(b"POST /f0 HTTP/1.1\r\nHost: alpha.test\r\nExpect: 100-continue\r\n"
                      b"Content-Length: 5\r\n\r\n", b"hello"
                      b"GET /f1 HTTP/1.1\r\nHost: beta.test\r\n\r\n"),
                 id="expect-100-continue-pipelined"),
    pytest.param(case(b"POST /f0 HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 4\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
                 id="cl-te-smuggling"),
    pytest.param(case(b"GET /f0 HTTP/1.1\nHost: alpha.test\n\n"), id="bare-lf-head"),
    pytest.param(case(b"GET /f0 HTTP/1.1\r\nHost: alpha.test\r\nX-Fold: a\r\n b\r\n\r\n"),
                 id="obs-fold"),
    pytest.param(case(b"GET http://alpha.test/f0?q=1 HTTP/1.1\r\nHost: alpha.test\r\n\r\n"),
                 id="absolute-form-same-host"),
    pytest.param(case(b"POST /f0 HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 5\r\n\r\nhel"),
                 id="body-cut-short"),
]


@pytest.mark.parametrize("request_case", CORPUS)
def test_request_corpus(fuzz_env, request_case):
    fail_on(check_request_case(fuzz_env, request_case), request_case, fuzz_env)


@bounded_settings(80)
@given(request_cases().filter(lambda c: not c.tags & KNOWN_FAILING.keys()))
def test_request_streams(fuzz_env, request_case):
    report(check_request_case(fuzz_env, request_case), request_case, fuzz_env)


@pytest.mark.fuzz
@pytest.mark.timeout(0)
@long_settings()
@given(request_cases())
def test_request_streams_long(fuzz_env, request_case):
    report(check_request_case(fuzz_env, request_case), request_case, fuzz_env, tags=True)
