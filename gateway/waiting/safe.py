"""Escaping for every value the pages insert, one function per context.

School titles come from config and URLs from the request line, so both are
treated as hostile: a title like `</script><script>alert(1)</script>` or a
path like `//evil.example` must come out inert.
"""

from __future__ import annotations

import html
import re
from urllib.parse import quote

import msgspec

_json = msgspec.json.Encoder()

# Inside <script> the HTML tokenizer only looks for "</script" and "<!--", but
# escaping every <, > and & keeps the JSON inert in any HTML context. U+2028
# and U+2029 are escaped for pre-ES2019 engines that reject them in strings.
_SCRIPT_UNSAFE = {
    b"<": b"\\u003c",
    b">": b"\\u003e",
    b"&": b"\\u0026",
    "\u2028".encode(): b"\\u2028",
    "\u2029".encode(): b"\\u2029",
}
_SCRIPT_UNSAFE_RE = re.compile(b"|".join(re.escape(k) for k in _SCRIPT_UNSAFE))

# Characters kept as they are in a redirect path: RFC 3986 pchar plus "/" and
# "?", minus the quote, which would end a `url='...'` in a meta refresh.
_PATH_SAFE = "/?:@!$&()*+,;=-._~%"
# Control characters and whitespace are stripped or rewritten by URL parsers
# ("/\t/evil" becomes "//evil"), and browsers read "\" as "/" in http URLs.
_PATH_REJECT = re.compile(r"[\x00-\x20\x7f\\]")


def html_text(value: object) -> str:
    """Escape for HTML text and quoted attribute values."""
    return html.escape(str(value), quote=True)


def script_json(value: object) -> str:
    """JSON that is safe to place inside an HTML <script> element."""
    encoded = _SCRIPT_UNSAFE_RE.sub(lambda m: _SCRIPT_UNSAFE[m.group()], _json.encode(value))
    return encoded.decode()


def same_origin_path(url: str | None, default: str = "/") -> str:
    """`url` if it is a path on this origin, else `default`.

    Only origin-relative paths ("/x?y") pass: absolute URLs, scheme-relative
    "//host" and any scheme such as "javascript:" are refused rather than
    repaired, since guessing intent in a redirect target is how open
    redirects happen. Characters outside the URL grammar are percent-encoded
    so the result is also safe inside a meta refresh.
    """
    if (
        not url
        or not url.startswith("/")
        or url.startswith("//")
        or _PATH_REJECT.search(url)
    ):
        return default
    try:
        return quote(url.partition("#")[0], safe=_PATH_SAFE, encoding="utf-8")
    except UnicodeEncodeError:  # lone surrogates from a lossy decode
        return default


__all__ = ["html_text", "same_origin_path", "script_json"]
