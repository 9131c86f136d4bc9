"""Each gateway/_native/X.pyi names exactly what the compiled module exports.

Add a native module by adding its name to MODULES.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import gateway._native

MODULES = ["accesslog", "client", "context", "exchange", "head", "link", "router", "serialize",
           "stats", "upstream"]

STUBS = Path(gateway._native.__file__).parent


def stub_names(module: str) -> set[str]:
    tree = ast.parse((STUBS / f"{module}.pyi").read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    # Underscore names are the stub's own helpers (protocols) or module internals.
    return {n for n in names if not n.startswith("_")}


def exported_names(module: str) -> set[str]:
    native = importlib.import_module(f"gateway._native.{module}")
    return {n for n in dir(native) if not n.startswith("_")}


@pytest.mark.parametrize("module", MODULES)
def test_stub_matches_module(module):
    assert stub_names(module) == exported_names(module)


@pytest.mark.parametrize("module", MODULES)
def test_stub_documents_every_public_name(module):
    tree = ast.parse((STUBS / f"{module}.pyi").read_text(encoding="utf-8"))
    assert ast.get_docstring(tree)
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and not node.name.startswith("_"):
            assert ast.get_docstring(node), f"{module}.pyi: {node.name} has no docstring"
