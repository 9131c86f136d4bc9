"""Waiting room and error pages: what visitors see instead of "502 Bad Gateway".

Everything here is sans-IO: headers and numbers in, a `Page` (status,
headers, body) or a ticket string out, with the current time passed in.

Two halves, loaded apart. The tickets (`tickets`: signed cookies, spent
tickets) are used by every worker from the start. The page renderer
(`pages`, `loader`, `i18n`, `negotiate`, `safe`: templates, translations,
content negotiation) is needed only once someone is turned away or polls the
status endpoint, so it is imported on the first lookup of one of its names
here (a module `__getattr__`, PEP 562): a worker that never renders a page
never loads it. Importing one of those modules directly loads it at once.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from .tickets import (
    Ticket,
    TicketSigner,
    cookie_header,
    new_visitor_id,
    read_cookie,
)

if TYPE_CHECKING:
    from .negotiate import choose_language, wants_json
    from .pages import Kind, Page, render, render_status_json

# The page renderer's names, by the module that defines them.
_RENDERER = {
    "Kind": "pages", "Page": "pages", "render": "pages", "render_status_json": "pages",
    "choose_language": "negotiate", "wants_json": "negotiate",
}


def __getattr__(name: str) -> Any:
    module = _RENDERER.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_RENDERER))


def clear_cache() -> None:
    """Forget the templates and assets read so far (a reload calls this: a
    school's templates may have changed on disk). Before the first page was
    rendered nothing has been read, and the renderer stays unloaded."""
    loader = sys.modules.get(f"{__name__}.loader")
    if loader is not None:
        loader.clear_cache()


__all__ = [
    "Kind", "Page", "Ticket", "TicketSigner", "choose_language", "clear_cache",
    "cookie_header", "new_visitor_id", "read_cookie", "render", "render_status_json",
    "wants_json",
]
