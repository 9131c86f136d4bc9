"""Shared memory between the worker processes of one instance.

The supervisor creates one `Region` before it forks the workers
(`Region.create`, then `publish`); each worker finds it with `inherited()`.
A region is a file mapped MAP_SHARED (in /dev/shm when it exists, unlinked
at once, so nothing is left behind even after a kill -9) cut into named
segments of fixed size. Each segment holds one msgpack-encoded value and
has its own lock: a POSIX record lock (fcntl.lockf) on the segment's byte
range, which the kernel drops when the holder dies, so a killed worker never
leaves a segment locked.

Use, in a worker::

    seg = inherited().segment("ledger")
    try:
        with seg.locked(blocking=False):   # Busy if another worker holds it
            state = seg.load()             # None until someone stored
            ...                            # read-modify-write, microseconds
            seg.store(state)
    except Busy:
        ...                                # try again at the next round

Keep the critical section short and free of I/O: the lock is held across
processes. `version` (a counter bumped by each store) lets a reader skip
decoding an unchanged value. A value larger than the segment raises
ValueError and leaves the stored one as it was.

A store is not atomic: a worker killed in the middle of one (kill -9, the
OOM killer) leaves the new value half written under the old header. Each
value carries a CRC-32, and `load` answers such a torn value as lost
(None, `torn` counts it) rather than raising at every later round: the
ledger then starts from empty, as after a Redis restart (leases rebuilt,
no burst: gateway/admission/sharing.py).

Locks are per process (lockf): two Segments of one process never exclude
each other, so use one process-wide region (the inherited one).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any

import msgspec

log = logging.getLogger("schoolgate.shared")

# Per segment: version (u64), payload length (u32), the payload's CRC-32
# (u32), then the payload.
_HEAD = struct.Struct("<QII")

# Segment sizes are rounded up to this (the lock ranges never overlap).
_ALIGN = 4096

# Default segments: the admission ledger (gateway/admission/sharing.py) and
# the shared waiting line. Sparse pages cost nothing until written.
DEFAULT_SEGMENTS = {"ledger": 4 << 20, "line": 16 << 20}


class Busy(Exception):
    """Another process holds the segment's lock (non-blocking lock)."""


class Segment:
    """One named, lockable slot of a Region; see the module docstring."""

    def __init__(self, region: Region, name: str, offset: int, size: int) -> None:
        self.region = region
        self.name = name
        self.offset = offset
        self.size = size
        # Torn values this process found (a writer died mid-store).
        self.torn = 0

    @contextlib.contextmanager
    def locked(self, blocking: bool = True) -> Iterator[Segment]:
        """Hold the segment's lock for the block. blocking=False raises Busy
        at once when another process holds it."""
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.lockf(self.region.fd, flags, self.size, self.offset, os.SEEK_SET)
        except (BlockingIOError, PermissionError) as err:
            raise Busy(self.name) from err
        try:
            yield self
        finally:
            fcntl.lockf(self.region.fd, fcntl.LOCK_UN, self.size, self.offset, os.SEEK_SET)

    @property
    def version(self) -> int:
        """Stores so far (0: never stored)."""
        return _HEAD.unpack_from(self.region.map, self.offset)[0]

    def load(self) -> Any:
        """The stored value (msgpack types: dicts, lists, str, bytes,
        numbers), or None if nothing was stored or the value is torn (its
        writer died mid-store: logged, counted in `torn`). Call under the
        lock."""
        version, length, crc = _HEAD.unpack_from(self.region.map, self.offset)
        if version == 0:
            return None
        start = self.offset + _HEAD.size
        data = self.region.map[start:start + length]
        if len(data) != length or zlib.crc32(data) != crc:
            self.torn += 1
            log.warning("shared memory segment %r: the stored value is torn (a process "
                        "died while writing it); starting from empty", self.name)
            return None
        return msgspec.msgpack.decode(data)

    def store(self, value: Any) -> None:
        """Replace the value (call under the lock). ValueError if it does
        not fit the segment (nothing is written then)."""
        data = msgspec.msgpack.encode(value)
        if len(data) > self.size - _HEAD.size:
            raise ValueError(f"segment {self.name!r}: {len(data)} bytes do not fit "
                             f"in {self.size - _HEAD.size}")
        start = self.offset + _HEAD.size
        self.region.map[start:start + len(data)] = data
        _HEAD.pack_into(self.region.map, self.offset, self.version + 1, len(data),
                        zlib.crc32(data))


class Region:
    """A MAP_SHARED file cut into named segments (see the module docstring)."""

    def __init__(self, fd: int, size: int, layout: dict[str, tuple[int, int]]) -> None:
        self.fd = fd
        self.map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._segments = {name: Segment(self, name, off, sz)
                          for name, (off, sz) in layout.items()}

    @classmethod
    def create(cls, segments: dict[str, int] | None = None) -> Region:
        """A new zeroed region with `segments` (name -> bytes; default
        DEFAULT_SEGMENTS). Create it before forking: the children inherit
        the mapping and the descriptor."""
        layout: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in (DEFAULT_SEGMENTS if segments is None else segments).items():
            size = -(-max(size, _HEAD.size + 1) // _ALIGN) * _ALIGN
            layout[name] = (offset, size)
            offset += size
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        try:
            fd = tempfile.mkstemp(prefix="schoolgate-", dir=directory)
        except OSError:
            fd = tempfile.mkstemp(prefix="schoolgate-")
        os.unlink(fd[1])
        os.ftruncate(fd[0], max(offset, _ALIGN))
        return cls(fd[0], max(offset, _ALIGN), layout)

    def segment(self, name: str) -> Segment:
        """The named segment; KeyError if the region has none of that name."""
        return self._segments[name]

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


_inherited: Region | None = None


def publish(region: Region | None) -> None:
    """Make `region` the one forked workers find with inherited()."""
    global _inherited
    _inherited = region


def inherited() -> Region | None:
    """The region the supervisor published before forking (None: this
    process was not started by a supervisor, e.g. a test's lone Worker)."""
    return _inherited


__all__ = ["DEFAULT_SEGMENTS", "Busy", "Region", "Segment", "inherited", "publish"]
