"""scripts/buildstate.py: when scripts/bootstrap may skip the build, and when not."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """buildstate pointed at a copy of what the build reads, in tmp_path."""
    spec = importlib.util.spec_from_file_location("buildstate", ROOT / "scripts" / "buildstate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("pyproject.toml", "setup.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "native", tmp_path / "native")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "NATIVE", tmp_path / "native")
    monkeypatch.setattr(module, "STAMP", tmp_path / "build" / "bootstrap.stamp")
    return module


def test_the_fingerprint_follows_what_the_build_reads(state):
    first = state.fingerprint()
    pyx = state.NATIVE / "bucket.pyx"
    pyx.touch()  # a new mtime alone changes nothing the build makes
    assert state.fingerprint() == first
    for path in (pyx, next(state.NATIVE.rglob("*.pxd")), state.ROOT / "pyproject.toml",
                 state.ROOT / "setup.py"):
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        assert state.fingerprint() != first, path
        path.write_bytes(original)
        assert state.fingerprint() == first


def test_the_native_modules_are_one_per_pyx(state):
    assert state.native_names() == sorted(p.stem for p in (ROOT / "native").glob("*.pyx"))
    assert "client" in state.native_names()


def test_current_needs_a_record_the_same_sources_and_the_extras(state, monkeypatch):
    monkeypatch.setattr(state, "check", lambda: None)  # installed and compiled
    assert state.current([]) == "no record of an install"
    state.record([])
    assert state.current([]) is None
    assert state.current(["test"]) == "installed without [test]"
    state.record(["test"])
    assert state.current(["test"]) is None
    assert state.current([]) is None
    pyx = state.NATIVE / "head.pyx"
    pyx.write_bytes(pyx.read_bytes() + b"\n")
    assert state.current(["test"]) == "the build's sources or the interpreter changed"


def test_current_is_false_when_the_install_does_not_import(state, monkeypatch):
    monkeypatch.setattr(state, "check", lambda: "gateway._native.proxy does not import: gone")
    state.record([])
    assert state.current([]) == "gateway._native.proxy does not import: gone"


def test_check_refuses_a_checkout_that_is_not_the_installed_one(state):
    # tmp_path holds sources only: whatever `gateway` this interpreter has
    # installed (if any), it is not this copy's.
    problem = state.check()
    assert problem is not None
    assert (f"is not installed for {sys.executable}" in problem
            or "not this checkout's" in problem), problem
