"""The shared-memory region and the Redis key names of gateway/shared."""

from __future__ import annotations

import os

import pytest

from gateway.config.schema import Redis
from gateway.shared.redis import client, key, scope
from gateway.shared.region import Busy, Region


def test_forked_processes_share_a_segment_under_its_lock():
    region = Region.create({"a": 100, "b": 100})
    seg = region.segment("a")
    assert seg.load() is None and seg.version == 0
    with seg.locked():
        seg.store({"n": 0})
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            for _ in range(50):
                with seg.locked():
                    value = seg.load()
                    value["n"] += 1
                    seg.store(value)
            os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with seg.locked():
        assert seg.load() == {"n": 200}
    assert seg.version == 201
    # The other segment is untouched.
    assert region.segment("b").load() is None
    region.close()


def test_a_held_lock_makes_a_non_blocking_lock_busy():
    region = Region.create({"a": 100})
    seg = region.segment("a")
    read, write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        with seg.locked():
            os.write(write, b"x")
            os.read(go_read, 1)
        os._exit(0)
    os.read(read, 1)  # the child holds the lock
    with pytest.raises(Busy), seg.locked(blocking=False):
        pass
    os.write(go_write, b"x")
    os.waitpid(pid, 0)
    with seg.locked(blocking=False):  # a dead or done holder frees it
        pass
    region.close()


def test_a_value_too_large_is_refused_and_the_old_one_kept():
    region = Region.create({"a": 10})  # rounded up to one page
    seg = region.segment("a")
    with seg.locked():
        seg.store([1, 2, 3])
        with pytest.raises(ValueError):
            seg.store("x" * 10000)
        assert seg.load() == [1, 2, 3]
    region.close()


def test_keys_of_one_school_share_a_cluster_hash_tag():
    assert key("sg:", "gsg", "slots") == "sg:{school:gsg}:slots"
    assert key("sg:", "cloud", "slots", kind="pool") == "sg:{pool:cloud}:slots"
    # A brace in a name would end the tag early.
    assert scope("school", "a{b}") == "school:a(b)"
    with pytest.raises(ValueError):
        client(Redis(url=""))


def test_a_store_torn_by_a_killed_writer_reads_as_lost_and_the_ledger_goes_on():
    """A worker SIGKILLed in the middle of Segment.store leaves the new
    value half written under the old header. Before the CRC, every later
    load raised DecodeError, so the instance's LocalLedger answered every
    round with an error and its workers stayed on the static fallback
    share until a restart. Now the torn value reads as lost (None) and the
    next round starts the ledger afresh."""
    import signal

    import msgspec

    from gateway.admission.sharing import Report, SlotOp
    from gateway.shared.ledger import LocalLedger
    from gateway.shared.region import _HEAD

    region = Region.create({"ledger": 1 << 16})
    seg = region.segment("ledger")
    with seg.locked():
        seg.store({"t": {f"school:{i}": {"w": [1.0, 2, 3]} for i in range(200)}, "b": {}})
    new = msgspec.msgpack.encode({"t": {f"other:{i}": {} for i in range(400)}, "b": {}})
    pid = os.fork()
    if pid == 0:
        # Killed mid-store, holding the lock: half the payload copied, the
        # header not yet written.
        seg.locked().__enter__()
        start = seg.offset + _HEAD.size
        region.map[start:start + len(new) // 2] = new[:len(new) // 2]
        os.kill(os.getpid(), signal.SIGKILL)
    assert os.waitpid(pid, 0)[1] & 0x7F == signal.SIGKILL
    with seg.locked(blocking=False):  # the kernel dropped the dead holder's lock
        assert seg.load() is None
    assert seg.torn == 1

    ledger = LocalLedger(seg, clock=lambda: 100.0)
    op = SlotOp("school:a", "max_inflight", limit=10, want=4, allot=0, inuse=0, cap=10,
                spec="")
    ledger.post(Report("w0", ttl=5.0, grace=1.0, ops=[op]))
    _, answers = ledger.take_answer()
    assert not isinstance(answers, BaseException)
    assert len(answers) == 1 and 0 <= answers[0].grant <= 10
    with seg.locked():
        assert seg.load() is not None  # stored whole again
    region.close()
