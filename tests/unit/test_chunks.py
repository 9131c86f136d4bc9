"""The chunked-body verdict (gateway.proxy.chunks) on its own, and against llhttp.

The gateway decides where a chunked body ends and llhttp must agree; the
differential test below feeds the same bytes to both and checks that they
never accept one message with two different ends.
"""

from __future__ import annotations

import httptools
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.proxy.chunks import ChunkedFraming, ChunkError

LINE_LIMIT = 64
TRAILER_LIMIT = 256


def framing() -> ChunkedFraming:
    return ChunkedFraming(LINE_LIMIT, TRAILER_LIMIT)


def feed_all(data: bytes, step: int | None = None) -> int:
    """Offset of the body's end in data (-1 if it does not end there)."""
    f = framing()
    step = step or len(data) or 1
    for start in range(0, len(data), step):
        piece = data[start:start + step]
        end = f.feed(piece)
        if f.done:
            return start + end
        assert end == len(piece), "feed stopped early without an end"
    return -1


VALID = [
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;ext=1;b\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n",
    b"0000000000000005\r\nhello\r\n0\r\n\r\n",
    b"3\r\nabc\r\n0;last\r\nX-Sum: 1\r\nY: 2\r\n\r\n",
    b"f\r\n" + b"x" * 15 + b"\r\n0\r\n\r\n",
]


@pytest.mark.parametrize("body", VALID)
@pytest.mark.parametrize("step", [None, 1, 2, 7])
def test_valid_bodies_end_where_they_end(body, step):
    assert feed_all(body + b"GET / HTTP/1.1\r\n", step) == len(body)


@pytest.mark.parametrize(("body", "reason"), [
    (b"00000000000000000000010\r\n", "too many digits"),
    (b"00000000000000005\r\n", "too many digits"),
    (b"\r\n", "invalid chunk size"),
    (b"-5\r\n", "invalid chunk size"),
    (b"5 \r\n", "invalid chunk size"),
    (b"0x5\r\n", "invalid chunk size"),
    (b"5\n", "bare LF"),
    (b"5\r\r\n", "bare LF"),
    (b"5\r\nhelloXX", "not followed by CRLF"),
    (b"5\r\nhello\n", "not followed by CRLF"),
    (b"5;" + b"e" * 70 + b"\r\n", "too long"),
    (b"0\r\n" + b"X: " + b"y" * 70 + b"\r\n", "too long"),
    (b"0\r\n" + b"X: yyyy\r\n" * 40, "too large"),
    (b"0\r\n y: folded\r\n", "trailer line"),
    (b"0\r\nno-colon\r\n", "trailer line"),
])
@pytest.mark.parametrize("step", [None, 1])
def test_malformed_framing_is_refused(body, reason, step):
    with pytest.raises(ChunkError) as err:
        feed_all(body, step)
    assert reason in err.value.reason


def test_an_overlong_line_is_refused_before_it_ends():
    # The limit holds for a line that never ends, not just when it does.
    f = framing()
    with pytest.raises(ChunkError):
        for _ in range(100):
            f.feed(b"5;" + b"e" * 10)


def test_after_the_end_nothing_more_is_taken():
    f = framing()
    assert f.feed(b"0\r\n\r\nGET") == 5
    assert f.done
    assert f.feed(b"more") == 0
    f.reset()
    assert not f.done
    assert f.feed(b"1\r\nx\r\n") == 6


# -- against llhttp --------------------------------------------------------------

HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


class _Ends:
    def __init__(self) -> None:
        self.completed = 0

    def on_message_complete(self) -> None:
        self.completed += 1


def llhttp_body_end(body: bytes) -> int | None:
    """Where llhttp ends the message within body (None: error or no end)."""
    ends = _Ends()
    parser = httptools.HttpRequestParser(ends)
    parser.feed_data(HEAD)
    for i in range(len(body)):
        try:
            parser.feed_data(body[i:i + 1])
        except httptools.HttpParserError:
            return None
        if ends.completed:
            return i + 1
    return None


_pieces = st.sampled_from([
    b"0", b"00", b"5", b"a", b"F", b"10", b"0000000000000000", b"000000000000000000001",
    b";", b"ext", b"=", b"\"q\"", b" ", b"\t", b"\r\n", b"\n", b"\r", b"hello",
    b"X-T: 1", b":", b"\r\n\r\n", b"GET / HTTP/1.1",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(_pieces, max_size=14).map(b"".join))
@example(b"00000000000000000000010\r\n0\r\n\r\nAAAAAAAAAAA\r\n0\r\n\r\n")
@example(b"5\r\nhello\r\n0\r\n\r\n")
@example(b"1\r\n\n\r\n0\r\n\r\n")
def test_never_accepted_with_two_different_ends(body):
    body += NEXT
    try:
        ours = feed_all(body)
    except ChunkError:
        return  # refused: whatever llhttp thinks, nothing is forwarded
    theirs = llhttp_body_end(body)
    if ours >= 0 and theirs is not None:
        assert ours == theirs
    if ours >= 0 and theirs is None:
        # llhttp refuses what the verdict accepted: the gateway answers 400
        # from llhttp's error, so the message is still not forwarded.
        return
    if ours < 0:
        # The verdict still waits for more bytes: llhttp must not have ended.
        assert theirs is None
