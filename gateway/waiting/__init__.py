"""Waiting room and error pages: what visitors see instead of "502 Bad Gateway".

Everything here is sans-IO: headers and numbers in, a `Page` (status,
headers, body) or a ticket string out, with the current time passed in.
"""

from .loader import clear_cache
from .negotiate import choose_language
from .pages import Kind, Page, render, render_status_json
from .tickets import (
    SpentTickets,
    Ticket,
    TicketSigner,
    cookie_header,
    new_visitor_id,
    read_cookie,
)

__all__ = [
    "Kind", "Page", "SpentTickets", "Ticket", "TicketSigner", "choose_language", "clear_cache",
    "cookie_header", "new_visitor_id", "read_cookie", "render", "render_status_json",
]
