"""The deterministic download pattern: byte i of a body is i % 256.

A client can check any body the test upstream generates without being told
its hash, and both sides can produce it block by block in constant memory.
"""

from __future__ import annotations

import hashlib

BLOCK = 64 * 1024
# One block plus a wrap-around so any offset can be sliced without copying twice.
_PATTERN = bytes(range(256)) * (BLOCK // 256 + 1)


def pattern(offset: int, size: int) -> bytes:
    """``size`` bytes of the download pattern starting at absolute ``offset``."""
    if size > BLOCK:
        raise ValueError("pattern slices are at most one block")
    start = offset % 256
    return _PATTERN[start:start + size]


def pattern_bytes(n: int) -> bytes:
    """The whole n-byte pattern body (for small bodies in tests)."""
    return b"".join(pattern(off, min(BLOCK, n - off)) for off in range(0, n, BLOCK))


def pattern_sha256(n: int) -> str:
    """Hex sha256 of the n-byte pattern body, computed block by block."""
    digest = hashlib.sha256()
    for off in range(0, n, BLOCK):
        digest.update(pattern(off, min(BLOCK, n - off)))
    return digest.hexdigest()
