"""Run every micro-benchmark, native beside its plain-Python reference.

    python -m bench.micro [pytest arguments, e.g. -k scheduler]

Covers routing and classification (bench_routing), request/response head
parsing and serialization (bench_head), the token bucket, the scheduler's
enqueue/dequeue and the admission controller (bench_admission). Results are
grouped by function, so each native figure sits next to its reference.
Exit status is pytest's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def main(argv: Sequence[str] = ()) -> int:
    return int(pytest.main([
        str(HERE), "--benchmark-only", "-o", "python_files=bench_*.py",
        "--benchmark-group-by=func", "--benchmark-sort=name",
        "--benchmark-columns=min,median,mean,ops,rounds", *argv,
    ]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
