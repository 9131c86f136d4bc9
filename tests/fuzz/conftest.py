"""The fuzzing gateway: one real gateway process in front of three recording
upstreams (tests/support/fuzz.py), shared by every fuzz test of a session
and restarted by the harness whenever a case leaves it unwell."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fuzz import FuzzEnv


@pytest.fixture(scope="session")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzEnv]:
    env = FuzzEnv(tmp_path_factory.mktemp("fuzz"))
    yield env
    env.close()
