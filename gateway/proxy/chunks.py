"""The gateway's verdict on where a chunked request body ends.

RFC 9112 section 7.1 defines the chunked coding::

    chunked-body = *chunk last-chunk trailer-section CRLF
    chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
    last-chunk   = 1*("0") [ chunk-ext ] CRLF

llhttp (through httptools) also parses these bytes, and two parsers that
decide where one message ends can disagree: that is request smuggling. So
the framing is decided once, here, and llhttp is only allowed to agree:

- ChunkedFraming reads the same bytes first, strictly, and says where the
  body ends (`feed` returns that offset), so the client protocol hands llhttp
  exactly one message at a time;
- whatever it does not read exactly as llhttp would is refused with a
  ChunkError (the client gets 400 and the connection ends): a size of more
  than 16 hex digits (llhttp accepts any number of leading zeros, h11 20
  digits, so "0000...010" means different things to different parsers), a
  bare LF or stray CR, anything but ";" after the size, chunk data not
  followed by CRLF, a size, extension or trailer line longer than the limit
  (llhttp skips extensions without any limit), and a trailer section larger
  than the limit on header bytes;
- the client protocol checks that llhttp ended the message exactly where
  this verdict did, and refuses the connection otherwise.

`feed` always consumes every byte it is given up to the body's end, so a
caller looping over a read makes progress on every pass.
"""

from __future__ import annotations

SIZE, DATA, DATA_CR, DATA_LF, TRAILER, DONE = range(6)
_HEX = frozenset(b"0123456789abcdefABCDEF")
# A chunk size above 16 hex digits cannot be a real chunk (2**64 bytes).
MAX_SIZE_DIGITS = 16


class ChunkError(ValueError):
    """The chunked framing cannot be read one way only; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChunkedFraming:
    """Incremental reader of one chunked body's framing (not its data).

    `line_limit` bounds a size, extension or trailer line (bytes, CRLF
    excluded); `trailer_limit` bounds the whole trailer section (bytes).
    """

    __slots__ = ("line", "line_limit", "remaining", "state", "trailer_bytes",
                 "trailer_limit")

    def __init__(self, line_limit: int, trailer_limit: int) -> None:
        self.line_limit = line_limit
        self.trailer_limit = trailer_limit
        self.reset()

    def reset(self) -> None:
        """Start a new body."""
        self.state = SIZE
        self.line = b""          # the current size/trailer line so far
        self.remaining = 0       # chunk-data bytes still to come
        self.trailer_bytes = 0

    @property
    def done(self) -> bool:
        """True once the body's final CRLF was read."""
        return self.state == DONE

    def feed(self, data: bytes) -> int:
        """Read `data`, the next bytes of the body.

        Returns the offset just past the body's end when it ends inside
        `data` (what follows belongs to the next request), else len(data).
        Raises ChunkError when the framing is malformed or over a limit.
        After the end, feeding more returns 0: the caller must stop.
        """
        pos = 0
        end = len(data)
        while pos < end:
            state = self.state
            if state == DATA:
                take = min(self.remaining, end - pos)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = DATA_CR
                continue
            if state in (DATA_CR, DATA_LF):
                want = 13 if state == DATA_CR else 10
                if data[pos] != want:
                    raise ChunkError("chunk data not followed by CRLF")
                pos += 1
                self.state = DATA_LF if state == DATA_CR else SIZE
                continue
            if state == DONE:
                return pos
            # SIZE or TRAILER: collect one line up to its LF.
            nl = data.find(b"\n", pos)
            stop = end if nl < 0 else nl
            if len(self.line) + stop - pos > self.line_limit + 1:  # +1: its CR
                raise ChunkError("chunk extension too long" if state == SIZE
                                 else "chunk trailer line too long")
            self.line += data[pos:stop]
            if nl < 0:
                return end
            pos = nl + 1
            line = self.line
            self.line = b""
            if not line.endswith(b"\r") or b"\r" in line[:-1]:
                raise ChunkError("bare LF or CR in chunked framing")
            line = line[:-1]
            if state == SIZE:
                self._size_line(line)
            else:
                self._trailer_line(line)
        return end

    def _size_line(self, line: bytes) -> None:
        digits = 0
        n = len(line)
        while digits < n and line[digits] in _HEX:
            digits += 1
        if digits == 0:
            raise ChunkError("invalid chunk size")
        if digits > MAX_SIZE_DIGITS:
            raise ChunkError("chunk size has too many digits")
        if digits < n and line[digits] != 59:  # ";": the only thing after a size
            raise ChunkError("invalid chunk size")
        size = int(line[:digits], 16)
        if size == 0:
            self.state = TRAILER
        else:
            self.state = DATA
            self.remaining = size

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self.state = DONE
            return
        self.trailer_bytes += len(line) + 2
        if self.trailer_bytes > self.trailer_limit:
            raise ChunkError("chunk trailer section too large")
        if line[0] in (32, 9) or b":" not in line:
            raise ChunkError("invalid chunk trailer line")
