"""Finding, reading and caching page templates.

A school may put `wait.html` / `down.html` / `resend.html` (and per-language
variants such as `wait.de.html`, `wait.nb.html`) into its `templates`
directory; anything it
does not provide comes from the built-in `templates/` folder next to this
module. Templates use `string.Template` syntax (`$name`, `$$` for a dollar)
and are filled with `safe_substitute`, so a stray `$` in a school's markup is
left alone rather than failing the page. The placeholders are listed in
`pages.py`.

Every path is read at most once, including paths that turned out not to
exist: these pages are served when the gateway is overloaded, the worst time
to add filesystem work per request. `clear_cache()` is called on reload.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path
from string import Template
from typing import NamedTuple

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).with_name("templates")

_templates: dict[str, Template | None] = {}
_assets: dict[str, str] = {}
_scripts: dict[str, Script] = {}


class Script(NamedTuple):
    source: str
    # CSP source expression ('sha256-...') allowing exactly this inline script.
    csp_hash: str


def _read_template(path: str) -> Template | None:
    try:
        return _templates[path]
    except KeyError:
        pass
    template: Template | None
    try:
        with open(path, encoding="utf-8") as f:
            template = Template(f.read())
    except FileNotFoundError:
        template = None
    except (OSError, UnicodeDecodeError) as exc:
        # A broken override must not turn the waiting room into an error:
        # warn once (the miss is cached) and serve the built-in page.
        log.warning("waiting-room template %s unusable, using the default: %s", path, exc)
        template = None
    _templates[path] = template
    return template


def find_template(kind: str, lang: str, templates_dir: str | None) -> tuple[Template, bool]:
    """The template for `kind` in `lang` and whether it is the built-in one.

    Search order: `<dir>/<kind>.<lang>.html`, `<dir>/<kind>.html`, built-in.
    """
    if templates_dir:
        for name in (f"{kind}.{lang}.html", f"{kind}.html"):
            template = _read_template(os.path.join(templates_dir, name))
            if template is not None:
                return template, False
    template = _read_template(str(BUILTIN_DIR / f"{kind}.html"))
    if template is None:
        raise RuntimeError(f"built-in template {kind}.html is missing from {BUILTIN_DIR}")
    return template, True


def asset(name: str) -> str:
    """A built-in text asset (stylesheet, script) from the templates folder."""
    try:
        return _assets[name]
    except KeyError:
        text = (BUILTIN_DIR / name).read_text(encoding="utf-8")
        _assets[name] = text
        return text


def poll_script() -> Script:
    """The waiting-room polling script and its CSP hash."""
    try:
        return _scripts["poll.js"]
    except KeyError:
        source = asset("poll.js")
        digest = hashlib.sha256(source.encode()).digest()
        script = Script(source, f"'sha256-{base64.b64encode(digest).decode()}'")
        _scripts["poll.js"] = script
        return script


def clear_cache() -> None:
    """Forget every loaded template and asset (config reload)."""
    _templates.clear()
    _assets.clear()
    _scripts.clear()


__all__ = ["BUILTIN_DIR", "Script", "asset", "clear_cache", "find_template", "poll_script"]
