"""Plain-Python model of host routing and traffic classification.

The executable specification of `native/router.pyx`: tests run every case
against both and hypothesis checks that they agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol


class MatchLike(Protocol):
    """What a classifier reads from `gateway.config.schema.Match`."""

    methods: Sequence[str]
    paths: Sequence[str]
    headers: Mapping[str, str]


class HeadLike(Protocol):
    def header(self, name: bytes) -> bytes | None: ...


# Host characters that survive parse_request_head's normalisation (RFC 3986
# reg-name, lower case) and the inside of an IP literal.
_REG_NAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%")
_IP_LITERAL = frozenset("0123456789abcdef:.")


def _host_key(entry: str) -> bytes:
    """Normalise a configured host the way parse_request_head normalises Host."""
    key = entry.strip().lower()
    if key.endswith("."):
        key = key[:-1]
    if key.startswith("["):
        valid = len(key) > 2 and key.endswith("]") and _IP_LITERAL.issuperset(key[1:-1])
    else:
        valid = bool(key) and _REG_NAME.issuperset(key)
    if not valid:
        raise ValueError(f"invalid host entry {entry!r} (a host name without port)")
    return key.encode("ascii")


def _parse_hosts(hosts_per_school: Sequence[Iterable[str]]):
    """Split entries into exact names, wildcard suffixes and the catch-all."""
    exact: dict[bytes, int] = {}
    wildcard: dict[bytes, int] = {}
    default = -1
    owner: dict[str, int] = {}

    def claim(label: str, school: int) -> bool:
        first = owner.setdefault(label, school)
        if first != school:
            raise ValueError(f"host {label!r} is listed by school {first} and school {school}")
        return True

    for school, hosts in enumerate(hosts_per_school):
        for entry in hosts:
            stripped = entry.strip()
            if stripped == "*":
                claim("*", school)
                default = school
            elif stripped.startswith("*."):
                suffix = _host_key(stripped[2:])
                if b"*" in suffix:
                    raise ValueError(f"invalid host entry {entry!r}")
                claim("*." + suffix.decode(), school)
                # Keyed with the dot so a lookup can slice the host at a label boundary.
                wildcard[b"." + suffix] = school
            else:
                key = _host_key(stripped)
                if b"*" in key:
                    raise ValueError(f"invalid host entry {entry!r}: '*' only as a whole "
                                     f"leading label ('*.example.org') or alone")
                claim(key.decode(), school)
                exact[key] = school
    return exact, wildcard, default


class Router:
    """Host -> school index, built once per config."""

    __slots__ = ("_default", "_exact", "_wildcard")

    def __init__(self, hosts_per_school: Sequence[Iterable[str]]) -> None:
        self._exact, self._wildcard, self._default = _parse_hosts(hosts_per_school)

    def route(self, host: bytes) -> int:
        """School index for a normalised host, or -1 when no entry covers it."""
        school = self._exact.get(host)
        if school is not None:
            return school
        if self._wildcard:
            # Leftmost dot first, so the longest suffix is tried first.
            dot = host.find(b".", 1)
            while dot > 0:
                school = self._wildcard.get(host[dot:])
                if school is not None:
                    return school
                dot = host.find(b".", dot + 1)
        return self._default


def _trim(value: bytes) -> bytes:
    return value.strip(b" \t")


class _Rule:
    __slots__ = ("headers", "methods", "paths")

    def __init__(self, match: MatchLike) -> None:
        self.methods = frozenset(m.strip().upper().encode("ascii") for m in match.methods)
        self.paths = tuple(p.encode("ascii") for p in match.paths)
        self.headers = tuple(
            (name.strip().lower().encode("ascii"),
             None if value == "*" else _trim(value.encode("latin-1")))
            for name, value in match.headers.items()
        )

    def fits(self, method: bytes, path: bytes, head: HeadLike) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.paths and not path.startswith(self.paths):
            return False
        for name, wanted in self.headers:
            value = head.header(name)
            if value is None or (wanted is not None and _trim(value) != wanted):
                return False
        return True


class Classifier:
    """Request -> traffic class index: the first class whose match fits."""

    __slots__ = ("_fallback", "_rules")

    def __init__(self, classes: Sequence[MatchLike | None]) -> None:
        self._rules: list[tuple[int, _Rule]] = []
        self._fallback = -1
        for index, match in enumerate(classes):
            if match is None:
                if self._fallback < 0:
                    self._fallback = index
            else:
                self._rules.append((index, _Rule(match)))

    def classify(self, method: bytes, path: bytes, head: HeadLike) -> int:
        """Index of the first fitting class, else the first match-less one, else -1."""
        for index, rule in self._rules:
            if rule.fits(method, path, head):
                return index
        return self._fallback


__all__ = ["Classifier", "Router"]
