"""BodySpool: memory up to its bound, then an unnamed temporary file; read
back in order while appends go on; nothing left behind once closed."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy.spool import RESPONSE_STATS, STATS, BodySpool


def open_files_in(directory: str) -> list[str]:
    """Descriptors of this process that point into `directory` (unlinked
    files show as '<dir>/#<inode> (deleted)' or '<dir>/tmpXXX (deleted)')."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory + "/"):
            out.append(target)
    return out


def drain(spool: BodySpool, piece: int = 7000) -> bytes:
    out = bytearray()
    while chunk := spool.read(piece):
        out += chunk
    return bytes(out)


def test_small_body_stays_in_memory(tmp_path):
    spool = BodySpool(100, str(tmp_path))
    spool.append(b"a" * 60)
    spool.append(b"b" * 40)
    assert (spool.size, spool.on_disk) == (100, False)
    assert drain(spool) == b"a" * 60 + b"b" * 40
    assert spool.remaining == 0
    spool.close()


def test_large_body_goes_to_an_unnamed_file_and_is_gone_after_close(tmp_path):
    directory = str(tmp_path)
    before = (STATS.bodies, STATS.bytes, STATS.files)
    body = os.urandom(5 * 1024 * 1024 + 3)
    spool = BodySpool(65536, directory)
    for off in range(0, len(body), 100_000):
        spool.append(body[off:off + 100_000])
    assert spool.on_disk and spool.size == len(body)
    # Nothing in the directory has a name, though the file is open.
    assert os.listdir(directory) == []
    assert len(open_files_in(directory)) == 1
    assert (STATS.bodies, STATS.bytes, STATS.files) == (
        before[0] + 1, before[1] + len(body), before[2] + 1)
    assert drain(spool, 65536) == body
    spool.close()
    spool.close()  # idempotent
    assert open_files_in(directory) == []
    assert (STATS.bodies, STATS.bytes, STATS.files) == before


def test_reads_interleave_with_appends(tmp_path):
    spool = BodySpool(10, str(tmp_path))
    spool.append(b"0123456789abc")
    assert spool.read(4) == b"0123"
    assert spool.read(100) == b"456789"  # the memory part ends here
    assert spool.read(100) == b"abc"
    assert spool.read(100) == b""
    spool.append(b"def")
    assert spool.remaining == 3
    assert spool.read(2) == b"de" and spool.read() == b"f"
    spool.close()
    with pytest.raises(ValueError):
        spool.append(b"x")


def test_unwritable_directory_raises_oserror(tmp_path):
    spool = BodySpool(4, str(tmp_path / "missing"))
    spool.append(b"1234")
    with pytest.raises(OSError):
        spool.append(b"5")
    assert spool.size == 4 and not spool.on_disk
    spool.close()


def test_dropped_spool_gives_back_its_file(tmp_path):
    spool = BodySpool(1, str(tmp_path))
    spool.append(b"xyz")
    assert len(open_files_in(str(tmp_path))) == 1
    del spool
    assert open_files_in(str(tmp_path)) == []


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 64), st.lists(st.binary(max_size=50), max_size=12),
       st.lists(st.integers(1, 40), min_size=1, max_size=12))
def test_what_is_read_is_what_was_appended(memory, pieces, reads):
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        spool = BodySpool(memory or 1, directory)
        got = bytearray()
        for i, piece in enumerate(pieces):
            spool.append(piece)
            got += spool.read(reads[i % len(reads)])
        got += drain(spool, 3)
        assert bytes(got) == b"".join(pieces)
        assert spool.size == spool.sent == len(got)
        spool.close()


def test_a_response_spool_counts_apart_from_request_bodies(tmp_path):
    before = (STATS.bodies, STATS.bytes, STATS.files)
    spool = BodySpool(4, str(tmp_path), RESPONSE_STATS)
    spool.append(b"0123456789")
    assert (RESPONSE_STATS.bodies, RESPONSE_STATS.bytes, RESPONSE_STATS.files) == (1, 10, 1)
    assert (STATS.bodies, STATS.bytes, STATS.files) == before
    assert spool.read(100) == b"0123" and spool.read(100) == b"456789"
    spool.close()
    assert (RESPONSE_STATS.bodies, RESPONSE_STATS.bytes, RESPONSE_STATS.files) == (0, 0, 0)
    assert open_files_in(str(tmp_path)) == []
