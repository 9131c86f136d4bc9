"""Content and language negotiation for gateway-generated responses.

Both parsers take the raw header bytes and never raise: these pages are shown
exactly when the gateway is under stress, often to clients with odd headers,
so anything unparseable simply falls back to the defaults (HTML, English).
Results are memoised per distinct header value because real traffic repeats a
handful of browser defaults; the caches are bounded.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .i18n import DEFAULT_LANGUAGE, LANGUAGES

# RFC 9110 qvalue: 0 to 1 with at most three decimals.
_QVALUE = re.compile(r"(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)\Z")
_LANGUAGE_RANGE = re.compile(r"(?:\*|[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*)\Z")
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_RANGE = re.compile(rf"({_TOKEN})/({_TOKEN})\Z")

# Primary subtags that map onto a catalog. Nynorsk readers understand Bokmål
# far better than English, and "no" is the macrolanguage most browsers send.
_ALIASES = {"nb": "nb", "no": "nb", "nn": "nb"}

# Parsing beyond this many list members only burns CPU for hostile headers.
_MAX_MEMBERS = 32
_CACHE_SIZE = 512


def _members(header: bytes) -> list[tuple[str, float]]:
    """Split a `value;q=x, value;q=y` header into (lowercased value, q) pairs.

    Members with an invalid qvalue are dropped, as RFC 9110 asks recipients
    to ignore what they cannot parse rather than guess.
    """
    text = header.decode("latin-1")
    result: list[tuple[str, float]] = []
    for raw in text.split(",")[:_MAX_MEMBERS]:
        value, *params = raw.split(";")
        value = value.strip().lower()
        if not value:
            continue
        q = 1.0
        for param in params:
            key, sep, arg = param.partition("=")
            if key.strip().lower() != "q":
                continue
            arg = arg.strip()
            if not sep or not _QVALUE.match(arg):
                break
            q = float(arg)
        else:
            result.append((value, q))
    return result


@lru_cache(maxsize=_CACHE_SIZE)
def choose_language(accept_language: bytes) -> str:
    """Best supported language for an Accept-Language value.

    Highest q wins; among equal q the earlier member wins, as browsers list
    preferences in order. A bare `*` accepts the default language.
    """
    best, best_q = DEFAULT_LANGUAGE, 0.0
    for value, q in _members(accept_language):
        if q <= best_q or not _LANGUAGE_RANGE.match(value):
            continue
        primary = value.split("-", 1)[0]
        if primary == "*":
            best, best_q = DEFAULT_LANGUAGE, q
            continue
        lang = _ALIASES.get(primary, primary)
        if lang in LANGUAGES:
            best, best_q = lang, q
    return best


def _quality(ranges: list[tuple[str, str, float]], type_: str, subtype: str) -> float:
    """q of the most specific range matching type_/subtype (RFC 9110 12.5.1)."""
    best_specificity, q = -1, 0.0
    for rtype, rsub, rq in ranges:
        if rtype == type_ and rsub == subtype:
            specificity = 2
        elif rtype == type_ and rsub == "*":
            specificity = 1
        elif rtype == "*" and rsub == "*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity:
            best_specificity, q = specificity, rq
    return q


@lru_cache(maxsize=_CACHE_SIZE)
def _media_ranges(accept: bytes) -> tuple[tuple[str, str, float], ...]:
    ranges = []
    for value, q in _members(accept):
        match = _MEDIA_RANGE.match(value)
        if match:
            ranges.append((match.group(1), match.group(2), q))
    return tuple(ranges)


def prefers(accept: bytes, candidate: str, over: str) -> bool:
    """True if `candidate` media type is strictly preferred to `over`.

    Ties go to `over`, so a client that states no preference (`*/*`, or no
    Accept at all) gets the human-readable form.
    """
    ranges = list(_media_ranges(accept))
    if not ranges:
        return False
    ctype, _, csub = candidate.partition("/")
    otype, _, osub = over.partition("/")
    return _quality(ranges, ctype, csub) > _quality(ranges, otype, osub)


def wants_json(accept: bytes, over: str, requested_with: bytes = b"") -> bool:
    """Whether a client should get JSON rather than the `over` media type.

    `X-Requested-With: XMLHttpRequest` marks scripted requests from pages whose
    code cannot do anything useful with an HTML document.
    """
    if requested_with.strip().lower() == b"xmlhttprequest":
        return True
    return prefers(accept, "application/json", over)


__all__ = ["choose_language", "prefers", "wants_json"]
