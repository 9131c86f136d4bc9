"""Is this checkout's editable install current? (for scripts/bootstrap)

    scripts/python scripts/buildstate.py check
        exit 1, naming what is wrong, unless the installed package is this
        checkout with every native module compiled
    scripts/python scripts/buildstate.py current [test]
        exit 0 if installing again would change nothing: `check` passes,
        the dependencies (and the test extras) are installed, and nothing
        the build reads changed since `record`
    scripts/python scripts/buildstate.py record [test]
        note the state after a successful install

"What the build reads" is the fingerprint of pyproject.toml, setup.py and
native/ (every .pyx and .pxd) together with the interpreter (its prefix and
version), so editing a .pyx, a dependency or the build, or switching to
another Python, means a new install. The record is build/bootstrap.stamp
(build/ is ignored by git; deleting it forces the next install).

`check` imports from a child `python -I` (no current directory, no
PYTHONPATH on sys.path), the way the `schoolgate` command does: the
``gateway`` package dir alone imports without any compiled module, and
another checkout's editable install would import that checkout's tree.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = ROOT / "build" / "bootstrap.stamp"
NATIVE = ROOT / "native"

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")

# Run with `python -I`; argv: the checkout, then the native module names.
_IMPORTS = """
import importlib, os, sys
root, names = sys.argv[1], sys.argv[2:]
def inside(path):
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)
try:
    import gateway
except ImportError as exc:
    sys.exit(f"gateway is not installed for {sys.executable}: {exc}")
if not inside(gateway.__file__):
    sys.exit(f"the gateway installed for {sys.executable} is "
             f"{os.path.dirname(gateway.__file__)}, not this checkout's")
for name in names:
    try:
        module = importlib.import_module(f"gateway._native.{name}")
    except ImportError as exc:
        sys.exit(f"gateway._native.{name} does not import: {exc}")
    path = getattr(module, "__file__", "") or ""
    if not (inside(path) and path.endswith(".so")):
        sys.exit(f"gateway._native.{name} is {path!r}, not a module compiled in this checkout")
"""


def native_names() -> list[str]:
    """The compiled modules setup.py builds: one per native/*.pyx."""
    return sorted(p.stem for p in NATIVE.glob("*.pyx"))


def check() -> str | None:
    """None if the installed package is this checkout, compiled; else why not."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", _IMPORTS, str(ROOT), *native_names()],
        cwd="/", capture_output=True, text=True)
    if result.returncode == 0:
        return None
    return (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]


def fingerprint() -> str:
    digest = hashlib.sha256()
    digest.update(f"{sys.prefix}\0{sys.version}\0".encode())
    files = [ROOT / "pyproject.toml", ROOT / "setup.py"]
    files += sorted(p for p in NATIVE.rglob("*") if p.suffix in (".pyx", ".pxd"))
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return [m[1] for req in reqs if (m := _NAME.match(req))]


def _missing(extras: list[str]) -> list[str]:
    out = []
    for name in ["schoolgate", *_requirements(extras)]:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def current(extras: list[str]) -> str | None:
    """None if a new install would change nothing; else the first reason it would."""
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return "no record of an install"
    if stamp.get("fingerprint") != fingerprint():
        return "the build's sources or the interpreter changed"
    if not set(extras) <= set(stamp.get("extras", [])):
        return f"installed without [{','.join(extras)}]"
    missing = _missing(extras)
    if missing:
        return f"not installed: {', '.join(missing)}"
    return check()


def record(extras: list[str]) -> None:
    STAMP.parent.mkdir(exist_ok=True)
    STAMP.write_text(json.dumps({"fingerprint": fingerprint(), "extras": sorted(extras)}) + "\n")


def main(argv: list[str]) -> int:
    command, extras = (argv[1] if len(argv) > 1 else ""), argv[2:]
    if command == "check":
        problem = check()
        if problem:
            print(f"buildstate: {problem}", file=sys.stderr)
        return 1 if problem else 0
    if command == "current":
        return 1 if current(extras) else 0
    if command == "record":
        record(extras)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
