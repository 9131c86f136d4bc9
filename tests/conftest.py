"""Suite-wide settings: import paths and the opt-in for slow tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `pytest` run as a script does not put the checkout on sys.path, and the
# tests import both `gateway` and `tests.support` from it.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip @pytest.mark.slow and @pytest.mark.fuzz tests unless a -m
    expression asks about them (so `-m "slow or not slow"` still leaves the
    long fuzz run out)."""
    markexpr = config.getoption("markexpr") or ""
    for marker in ("slow", "fuzz"):
        if marker in markexpr:
            continue
        skip = pytest.mark.skip(reason=f"{marker}: run with -m {marker}")
        for item in items:
            if item.get_closest_marker(marker):
                item.add_marker(skip)
