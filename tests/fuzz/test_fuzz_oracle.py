"""The fuzzer's reference readings (tests/support/fuzz.py) on known bytes: the
oracle is only as good as these, so they are pinned here without a gateway."""

from __future__ import annotations

import pytest

from tests.support.fuzz import (
    effective_host,
    head_over_limits,
    path_of,
    read_answers,
    read_requests,
    read_response,
)


def summary(data: bytes) -> tuple[str, list[tuple[bytes, bytes, bytes, bool]]]:
    reading = read_requests(data)
    return reading.end, [(r.method, r.target, r.body, r.complete) for r in reading.requests]


def test_pipelined_requests_with_both_framings():
    data = (b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2;x=y\r\nhi\r\n0\r\n\r\n"
            b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
    assert summary(data) == ("clean", [(b"POST", b"/a", b"abc", True),
                                       (b"POST", b"/b", b"hi", True),
                                       (b"GET", b"/c", b"", True)])


def test_empty_lines_before_a_request_are_skipped_but_not_a_bare_cr():
    assert summary(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")[1] == [(b"GET", b"/", b"", True)]
    end, requests = summary(b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (end, requests) == ("error", [])


def test_http10_keep_alive_goes_on_and_close_stops():
    second = b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    assert len(summary(b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + second)[1]) == 2
    assert summary(b"GET /1 HTTP/1.0\r\n\r\n" + second) == ("closed",
                                                             [(b"GET", b"/1", b"", True)])
    assert summary(b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + second)[0] \
        == "closed"


def test_partial_and_error_ends():
    assert summary(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab") == (
        "partial", [(b"POST", b"/", b"ab", False)])
    assert summary(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 1\r\n\r\nx")[0] == "error"


def test_connect_is_answered_405_and_reading_goes_on():
    # The reference server refuses CONNECT, so its Content-Length body and
    # what follows stay HTTP: that is the reading the gateway is held to.
    data = (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nxy"
            b"GET /n HTTP/1.1\r\nHost: a\r\n\r\n")
    assert summary(data) == ("clean", [(b"CONNECT", b"a:443", b"xy", True),
                                       (b"GET", b"/n", b"", True)])


def test_numbers_over_h11s_20_digits_read_as_the_rfc_reads_them():
    data = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"00000000000000000000005\r\nhello\r\n000000000000000000000000\r\n\r\n"
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0000000000000000000002\r\n\r\nok")
    assert summary(data) == ("clean", [(b"POST", b"/", b"hello", True),
                                       (b"POST", b"/", b"ok", True)])


def test_answers_in_order_with_interim_head_and_a_cut_body():
    data = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot")
    reading = read_answers(data, [b"POST", b"HEAD", b"GET"], eof=True)
    assert not reading.error
    got = [(a.status, a.body, a.complete, a.interim) for a in reading.answers]
    assert got == [(200, b"ok", True, [100]), (200, b"", True, []), (404, b"not", False, [])]


def test_body_bytes_after_an_answer_to_head_are_unreadable():
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    reading = read_answers(data, [b"HEAD"], eof=True)
    assert [a.body for a in reading.answers] == [b""]
    assert reading.error and reading.leftover == b"hello"


def test_an_answer_cut_by_the_close_is_incomplete_not_unreadable():
    reading = read_answers(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", [b"GET"],
                           eof=True)
    assert not reading.error
    [answer] = reading.answers
    assert (answer.status, answer.body, answer.complete) == (200, b"abc", False)


@pytest.mark.parametrize(("data", "exact", "readable", "leftover"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True, True, b""),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", False, True, b"EXTRA"),
    (b"HTTP/1.1 200 OK\r\n\r\nuntil the close", False, True, b""),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False, True, b""),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", False, False, b""),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok", False, False,
     b""),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok", False, True, b"ok"),
])
def test_response_readings(data, exact, readable, leftover):
    ref = read_response(data)
    assert (ref.exact, ref.readable, ref.leftover) == (exact, readable, leftover)


def test_head_limits_count_the_final_head_only():
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    assert head_over_limits(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n") == \
        "101 header fields (limit 100)"
    assert head_over_limits(b"HTTP/1.1 103 Early Hints\r\n" + fields + b"\r\n"
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == ""
    endless = b"HTTP/1.1 200 OK\r\nX: " + b"v" * 40000
    assert head_over_limits(endless) == "a 40020-byte head (limit 32768)"


def test_effective_host_and_path():
    assert effective_host(b"http://Beta.Test:8080/x", b"alpha.test") == b"beta.test"
    assert effective_host(b"/x", b"ALPHA.test.:80") == b"alpha.test"
    assert effective_host(b"/x", None) is None
    assert path_of(b"http://a.test") == b"/"
    assert path_of(b"http://a.test?q=1") == b"/?q=1"
    assert path_of(b"http://a.test/p?q=1") == b"/p?q=1"
    assert path_of(b"/p?q") == b"/p?q"
