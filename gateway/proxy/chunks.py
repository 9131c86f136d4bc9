"""Bounds on chunked request framing that llhttp does not enforce.

llhttp skips chunk extensions without a length limit and httptools gives no
callback for them, so a client could stream an endless `5;aaaa...` line
that the proxy would read forever. ChunkLimiter shadows the framing over the
same bytes the parser sees and reports the first size or trailer line longer
than the limit. It validates nothing else: llhttp remains the parser, and on
malformed input llhttp's own error settles it.
"""

from __future__ import annotations

SIZE, DATA, TRAILER, DONE = range(4)
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


class ChunkLimiter:
    __slots__ = ("head", "limit", "line", "remaining", "state")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.state = SIZE
        self.line = 0        # bytes of the current size/trailer line so far
        self.head = b""      # first bytes of a size line split across reads
        self.remaining = 0   # bytes left of the current chunk's data + CRLF

    def feed(self, data: bytes) -> int:
        """Account for `data`. Returns -1 once a line exceeds the limit, else
        the offset just past the end of the chunked body if it ends inside
        `data` (what follows is the next request), else len(data)."""
        pos = 0
        end = len(data)
        limit = self.limit
        while pos < end:
            state = self.state
            if state == DATA:
                take = min(self.remaining, end - pos)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = SIZE
                continue
            if state == DONE:
                return pos
            nl = data.find(b"\n", pos)
            if nl < 0:
                if state == SIZE and len(self.head) < 20:
                    self.head += data[pos:pos + 20]
                self.line += end - pos
                return end if self.line <= limit else -1
            if self.line + nl - pos > limit:
                return -1
            if state == SIZE:
                size = _chunk_size(self.head + data[pos:min(nl, pos + 20)])
                if size is None:
                    return end  # malformed: llhttp reports it
                if size == 0:
                    self.state = TRAILER
                else:
                    self.state = DATA
                    self.remaining = size + 2
            elif self.line + nl - pos <= 1:
                self.state = DONE  # the empty line after the last chunk
            self.line = 0
            self.head = b""
            pos = nl + 1
            if self.state == DONE:
                return pos
        return end

    def reset(self) -> None:
        self.state = SIZE
        self.line = self.remaining = 0
        self.head = b""


def _chunk_size(line: bytes) -> int | None:
    n = 0
    digits = 0
    for c in line:
        if c not in _HEXDIGITS:
            break
        n = n * 16 + int(chr(c), 16)
        digits += 1
    return n if digits and digits <= 16 else None
