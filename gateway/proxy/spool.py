"""A request body held at the gateway until its request is forwarded, or a
response held for a client that reads slowly.

Request buffering (a school's `request_buffering`, like nginx's
client_body_buffer_size / client_body_temp_path): the body is received
before the request takes one of the school's slots, then forwarded from
here. The first `memory` bytes stay in memory; the rest goes to a temporary
file in `temp_dir` that never has a name in the file system (O_TMPFILE
where the kernel has it, else created and unlinked at once by
`tempfile.TemporaryFile`), so no file outlives its descriptor, even when the
process crashes.

The file is written and read with plain os.write / os.pread on the event
loop. Each write is one client read's worth (at most the transport's read
size, 256 KiB) and each read at most what the caller asks for (the proxy
asks for PIECE), and the page cache takes both at memory speed, so no call
holds the worker for long. A disk too slow for that would need a thread
pool, which this first version does not use.

Response spooling (like nginx's proxy buffering to proxy_temp_path): when a
client's transport is over its high-water mark, further response bytes go
to a BodySpool of its connection (RESPONSE_STATS counts those) instead of
pausing the upstream, so the upstream connection and the admission slot are
free at the upstream's pace while the client drains the spool.

Errors: append() raises OSError when the file cannot be created or written
(a full disk); the caller answers the request and drops the body.
"""

from __future__ import annotations

import os
import tempfile

# Bytes read back per call when forwarding a spooled body.
PIECE = 65536


class SpoolStats:
    """What every spool of this process holds now (for /metrics)."""

    __slots__ = ("bodies", "bytes", "files")

    def __init__(self) -> None:
        self.bodies = 0   # spools open
        self.bytes = 0    # body bytes held, memory and files
        self.files = 0    # spools with a temporary file


STATS = SpoolStats()            # request bodies
RESPONSE_STATS = SpoolStats()   # responses held for slow readers (client.pyx)


class BodySpool:
    """One body: appended as it arrives, read back once, in order.

    `size` is the bytes appended so far, `sent` the bytes read back;
    reading may run while appends continue (a body larger than the school's
    request_buffer_max is forwarded from here while the rest arrives; a
    response is sent to its client from here while the upstream goes on).
    `memory`: bytes held in memory before a temporary file is created in
    `temp_dir` ("" or None: $TMPDIR); `stats`: the SpoolStats it counts in.
    """

    __slots__ = ("_file", "_mem", "_stats", "closed", "memory", "sent", "size", "temp_dir")

    def __init__(self, memory: int, temp_dir: str | None = None,
                 stats: SpoolStats = STATS) -> None:
        self.memory = memory
        self._stats = stats
        self.temp_dir = temp_dir or None
        self._mem = bytearray()
        self._file = None
        self.size = 0
        self.sent = 0
        self.closed = False
        stats.bodies += 1

    @property
    def remaining(self) -> int:
        """Bytes appended but not read back yet."""
        return self.size - self.sent

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def append(self, data: bytes) -> None:
        """Add the next piece of the body. OSError: the file could not be
        created or written (the piece is then not held)."""
        if self.closed:
            raise ValueError("spool is closed")
        n = len(data)
        room = self.memory - len(self._mem)
        if room > 0 and self._file is None:
            if n <= room:
                self._mem += data
                self.size += n
                self._stats.bytes += n
                return
            self._mem += data[:room]
            self.size += room
            self._stats.bytes += room
            data = data[room:]
        if self._file is None:
            # Lives as long as the spool (closed by close()), not a block.
            self._file = tempfile.TemporaryFile(dir=self.temp_dir, buffering=0)  # noqa: SIM115
            self._stats.files += 1
        fd = self._file.fileno()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
            self.size += written
            self._stats.bytes += written

    def read(self, n: int = PIECE) -> bytes:
        """The next up to n bytes not read yet (b"" when all that was
        appended so far has been read)."""
        pos = self.sent
        mem = len(self._mem)
        if pos < mem:
            out = bytes(self._mem[pos:pos + n])
        elif self._file is not None and pos < self.size:
            out = os.pread(self._file.fileno(), min(n, self.size - pos), pos - mem)
        else:
            return b""
        self.sent = pos + len(out)
        return out

    def close(self) -> None:
        """Free the memory and the file (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._stats.bodies -= 1
        self._stats.bytes -= self.size
        self._mem = bytearray()
        f = self._file
        if f is not None:
            self._file = None
            self._stats.files -= 1
            f.close()

    def __del__(self) -> None:
        # A spool dropped without close() (an exchange torn down by an
        # unexpected error) still gives back its file and its counts.
        if not getattr(self, "closed", True):
            self.close()


__all__ = ["PIECE", "RESPONSE_STATS", "STATS", "BodySpool", "SpoolStats"]
