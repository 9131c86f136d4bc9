"""Signed waiting-room tickets, kept by the browser in a cookie.

A ticket remembers when a visitor joined the line, so reloading the page or
opening a second tab does not send them to the back. It is signed rather than
stored, so any gateway instance sharing the secret can honour it without a
shared session store.

Wire format (cookie-safe, ~90 characters for a 16-byte visitor id):

    base64url(payload) "." base64url(HMAC-SHA256(secret, context || payload))

    payload = version:u8  issued_ms:u64  arrived_ms:u64  id_len:u8  visitor_id
    context = b"schoolgate-ticket" len(school):u16 school

The school is bound through the MAC input rather than stored, which keeps the
cookie short and makes a ticket from one school worthless at another. Expiry
counts from `issued_at`.

A ticket is worth one admission, and only while its visitor waits:
- The visitor id is the ticket's id: fresh and random (128 bits) when a
  visitor without a valid ticket is turned away, and carried unchanged by
  every re-issue of that ticket.
- The gateway re-issues a ticket (same id and `arrived_at`, new `issued_at`)
  only while its visitor is actually waiting: when their request is turned
  away again, and when the status endpoint finds them waiting in the room.
  A visitor who stops waiting keeps their place for at most the TTL after
  the last re-issue; then the ticket lapses and they are a new arrival.
- The request that gets in with the ticket spends it in the school's shared
  line (gateway.waiting.line.Line.spend): its id is remembered until every
  copy has expired, by every worker and instance sharing the line, so a
  replayed cookie, or a second tab's, lines up by its own arrival like any
  other request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from typing import Final, NamedTuple

_VERSION: Final = 1
_HEAD: Final = struct.Struct("!BQQB")
_MAC_SIZE: Final = hashlib.sha256().digest_size
_CONTEXT: Final = b"schoolgate-ticket"
_MAX_ID: Final = 64
_MIN_SECRET: Final = 16
# Longest well-formed ticket; anything longer is rejected before decoding.
_MAX_VALUE: Final = 4 * -(-(_HEAD.size + _MAX_ID) // 3) + 1 + 4 * -(-_MAC_SIZE // 3)

_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# RFC 6265 cookie-octet: no controls, whitespace, DQUOTE, comma, ";" or "\".
_COOKIE_VALUE: Final = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*\Z")


class Ticket(NamedTuple):
    visitor_id: bytes
    arrived_at: float
    issued_at: float


def new_visitor_id() -> bytes:
    """A fresh, unguessable visitor id (128 bits)."""
    return secrets.token_bytes(16)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict base64url: only the canonical encoding of some bytes decodes.

    Without the canonical check, flipping the unused low bits of the last
    character would give a second spelling of the same ticket.
    """
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if _b64encode(data) == text else None


def _millis(seconds: float) -> int:
    return int(seconds * 1000)


class TicketSigner:
    """Issues and checks tickets under one HMAC secret.

    `leeway` tolerates clock differences between gateway instances: a ticket
    issued up to that many seconds "in the future" still verifies. `fleet`
    names the fleet whose line the ticket holds a place in (the `[redis]
    prefix` when instances share a Redis): it is signed with the ticket, so
    two fleets that share a Redis and, by mistake, a secret still refuse each
    other's tickets. "" (one instance, or no Redis) signs as before.
    """

    __slots__ = ("_fleet", "_key", "_leeway")

    @property
    def leeway(self) -> float:
        """Seconds a ticket's `issued_at` may lie ahead of `now` and still verify."""
        return self._leeway

    def __init__(self, secret: bytes, *, leeway: float = 1.0, fleet: str = "") -> None:
        if len(secret) < _MIN_SECRET:
            raise ValueError(f"ticket secret must be at least {_MIN_SECRET} bytes")
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        self._key = bytes(secret)
        self._leeway = leeway
        fleet_name = fleet.encode("utf-8")
        self._fleet = (b"fleet" + struct.pack("!H", len(fleet_name)) + fleet_name
                       if fleet_name else b"")

    def _mac(self, school: str, payload: bytes) -> bytes:
        name = school.encode("utf-8")
        context = _CONTEXT + self._fleet + struct.pack("!H", len(name)) + name
        return hmac.new(self._key, context + payload, hashlib.sha256).digest()

    def issue(self, school: str, visitor_id: bytes, arrived_at: float, now: float) -> str:
        """A ticket for `visitor_id`, in line at `school` since `arrived_at`."""
        if not 1 <= len(visitor_id) <= _MAX_ID:
            raise ValueError(f"visitor_id must be 1 to {_MAX_ID} bytes")
        if not 0 <= arrived_at <= now:
            raise ValueError("arrived_at must lie between 0 and now")
        if len(school.encode("utf-8")) > 0xFFFF:
            raise ValueError("school name too long")
        payload = _HEAD.pack(_VERSION, _millis(now), _millis(arrived_at), len(visitor_id))
        payload += visitor_id
        return f"{_b64encode(payload)}.{_b64encode(self._mac(school, payload))}"

    def verify(self, value: str, school: str, now: float, ttl: float) -> Ticket | None:
        """The ticket in `value` if it is genuine, for `school` and current.

        Returns None for anything else (forged, altered, another school's,
        expired, issued in the future, malformed); the reason is deliberately
        not reported, a visitor without a valid ticket simply joins the line.
        """
        if not isinstance(value, str) or len(value) > _MAX_VALUE:
            return None
        encoded_payload, dot, encoded_mac = value.partition(".")
        if not dot:
            return None
        payload = _b64decode(encoded_payload)
        mac = _b64decode(encoded_mac)
        if payload is None or mac is None or len(mac) != _MAC_SIZE:
            return None
        try:
            expected = self._mac(school, payload)
        except UnicodeEncodeError:
            return None
        if not hmac.compare_digest(mac, expected):
            return None
        # Authentic from here on, but still checked: a future format or a
        # bug on the issuing side must not be misread.
        if len(payload) < _HEAD.size:
            return None
        version, issued_ms, arrived_ms, id_len = _HEAD.unpack_from(payload)
        visitor_id = payload[_HEAD.size:]
        if version != _VERSION or id_len != len(visitor_id) or id_len == 0:
            return None
        issued_at, arrived_at = issued_ms / 1000, arrived_ms / 1000
        if arrived_at > issued_at:
            return None
        # Written as "not within" so a NaN clock or ttl rejects, not accepts.
        if not (issued_at <= now + self._leeway and now - issued_at <= ttl):
            return None
        return Ticket(visitor_id, arrived_at, issued_at)


def cookie_header(name: str, value: str, max_age: int, secure: bool) -> bytes:
    """A Set-Cookie header value for the ticket cookie.

    HttpOnly because page scripts never need the ticket; SameSite=Lax so the
    place in line survives following a link to the school from elsewhere.
    """
    if not _TOKEN.match(name):
        raise ValueError(f"invalid cookie name {name!r}")
    if not _COOKIE_VALUE.match(value):
        raise ValueError("cookie value contains characters not allowed in a cookie")
    if max_age < 0:
        raise ValueError("max_age must not be negative")
    header = f"{name}={value}; Max-Age={int(max_age)}; Path=/; HttpOnly; SameSite=Lax"
    if secure:
        header += "; Secure"
    return header.encode("ascii")


def read_cookie(cookie_header: bytes, name: str) -> str | None:
    """The value of cookie `name` in a Cookie request header, if present.

    Takes the first occurrence, as browsers send the most specific cookie
    first. Callers join repeated Cookie headers with "; " beforehand.
    """
    for pair in cookie_header.decode("latin-1").split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


__all__ = ["Ticket", "TicketSigner", "cookie_header", "new_visitor_id",
           "read_cookie"]
