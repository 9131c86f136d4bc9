"""The project's direct dependencies, read from pyproject.toml.

    scripts/python scripts/deps.py lowest
        pip constraints pinning each direct dependency to its declared
        minimum ("msgspec>=0.18" -> "msgspec==0.18")
    scripts/python scripts/deps.py names
        the direct dependencies' names
    scripts/python scripts/deps.py installed
        "name==version" of each direct dependency as installed here
    scripts/python scripts/deps.py check-lowest
        exit 1 unless what is installed is exactly the declared minimum

Both lists come from `[project] dependencies`, so the lowest-versions CI run
cannot drift from what the package declares. A dependency without a `>=`
lower bound is an error here: "the oldest declared version" must exist.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# name [extras] >= version [, more specifiers] [; marker] (PEP 508, the part used here)
_REQ = re.compile(
    r"\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)(?:;.*)?$")
_LOWER = re.compile(r">=\s*(?P<version>[0-9][A-Za-z0-9.+!-]*)")


def direct() -> list[tuple[str, str]]:
    """(name, lowest version) for each entry of [project] dependencies."""
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    out = []
    for req in deps:
        m = _REQ.fullmatch(req)
        lower = _LOWER.search(m["spec"]) if m else None
        if m is None or lower is None:
            raise SystemExit(f"{PYPROJECT}: dependency {req!r} declares no '>=' lower bound")
        out.append((m["name"], lower["version"]))
    return out


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _same(installed: str, declared: str) -> bool:
    # "0.18" is declared, pip installs "0.18.0": equal as release numbers.
    def key(v: str) -> tuple[int, ...]:
        parts = [int(p) for p in re.findall(r"\d+", v.split("+")[0])]
        while parts and parts[-1] == 0:
            parts.pop()
        return tuple(parts)
    return key(installed) == key(declared)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "lowest":
        for name, version in direct():
            print(f"{name}=={version}")
        return 0
    if command == "names":
        print(" ".join(name for name, _ in direct()))
        return 0
    if command == "installed":
        for name, _ in direct():
            print(f"{name}=={_installed(name) or '(not installed)'}")
        return 0
    if command == "check-lowest":
        wrong = [f"{name}: declared >={version}, installed {_installed(name)}"
                 for name, version in direct()
                 if _installed(name) is None or not _same(_installed(name), version)]
        for line in wrong:
            print(f"deps: {line}", file=sys.stderr)
        return 1 if wrong else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
