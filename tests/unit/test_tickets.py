"""Signed waiting-room tickets and the cookie helpers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import string
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.waiting import (
    Ticket,
    TicketSigner,
    cookie_header,
    new_visitor_id,
    read_cookie,
)

SECRET = b"k" * 32
SCHOOL = "nordby"
VID = bytes(range(16))
T0 = 1_700_000_000.0
TTL = 600.0
B64URL = string.ascii_letters + string.digits + "-_"


@pytest.fixture
def signer() -> TicketSigner:
    return TicketSigner(SECRET)


@pytest.fixture
def ticket(signer) -> str:
    return signer.issue(SCHOOL, VID, arrived_at=T0 - 30.25, now=T0)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(payload: bytes, school: str = SCHOOL, secret: bytes = SECRET) -> str:
    """Sign an arbitrary payload following the documented wire format."""
    name = school.encode()
    message = b"schoolgate-ticket" + struct.pack("!H", len(name)) + name + payload
    return f"{b64(payload)}.{b64(hmac.new(secret, message, hashlib.sha256).digest())}"


def payload(version=1, issued=T0, arrived=T0, vid=VID, id_len=None) -> bytes:
    head = struct.pack("!BQQB", version, int(issued * 1000), int(arrived * 1000),
                       len(vid) if id_len is None else id_len)
    return head + vid


def test_round_trip(signer, ticket):
    assert signer.verify(ticket, SCHOOL, now=T0 + 5, ttl=TTL) == Ticket(VID, T0 - 30.25, T0)


def test_ticket_is_compact_and_cookie_safe(ticket):
    assert len(ticket) <= 100
    assert set(ticket) <= set(B64URL + ".")
    cookie_header("sg", ticket, 600, secure=True)


def test_wire_format_is_the_documented_one(signer, ticket):
    assert ticket == forge(payload(issued=T0, arrived=T0 - 30.25))


def test_milliseconds_survive(signer):
    value = signer.issue(SCHOOL, VID, arrived_at=T0 + 0.123, now=T0 + 0.9)
    got = signer.verify(value, SCHOOL, now=T0 + 1, ttl=TTL)
    assert got.arrived_at == pytest.approx(T0 + 0.123, abs=1e-3)
    assert got.issued_at <= T0 + 0.9


def test_reissue_keeps_the_place_in_line(signer, ticket):
    first = signer.verify(ticket, SCHOOL, now=T0 + 500, ttl=TTL)
    renewed = signer.issue(SCHOOL, first.visitor_id, first.arrived_at, now=T0 + 500)
    # Past the first ticket's lifetime the renewed one still carries arrival.
    assert signer.verify(ticket, SCHOOL, now=T0 + 900, ttl=TTL) is None
    assert signer.verify(renewed, SCHOOL, now=T0 + 900, ttl=TTL).arrived_at == T0 - 30.25


def test_other_secret_is_rejected(ticket):
    assert TicketSigner(b"x" * 32).verify(ticket, SCHOOL, now=T0, ttl=TTL) is None


def test_forged_with_other_key_is_rejected(signer):
    assert signer.verify(forge(payload(), secret=b"z" * 32), SCHOOL, now=T0, ttl=TTL) is None


def test_wrong_school_is_rejected(signer, ticket):
    assert signer.verify(ticket, "sørby", now=T0, ttl=TTL) is None
    assert signer.verify(ticket, SCHOOL + "x", now=T0, ttl=TTL) is None
    assert signer.verify(ticket, "", now=T0, ttl=TTL) is None


def test_expiry_boundary(signer, ticket):
    assert signer.verify(ticket, SCHOOL, now=T0 + TTL, ttl=TTL) is not None
    assert signer.verify(ticket, SCHOOL, now=T0 + TTL + 0.001, ttl=TTL) is None


def test_future_dated_beyond_leeway_is_rejected(ticket):
    signer = TicketSigner(SECRET, leeway=2.0)
    assert signer.verify(ticket, SCHOOL, now=T0 - 2.0, ttl=TTL) is not None
    assert signer.verify(ticket, SCHOOL, now=T0 - 2.5, ttl=TTL) is None
    strict = TicketSigner(SECRET, leeway=0.0)
    assert strict.verify(ticket, SCHOOL, now=T0 - 0.01, ttl=TTL) is None


def test_nan_clock_rejects(signer, ticket):
    assert signer.verify(ticket, SCHOOL, now=float("nan"), ttl=TTL) is None
    assert signer.verify(ticket, SCHOOL, now=T0, ttl=float("nan")) is None


def test_every_single_character_change_is_rejected(signer, ticket):
    for i, char in enumerate(ticket):
        for replacement in {"A", "B", "-", "_", "."} - {char}:
            altered = ticket[:i] + replacement + ticket[i + 1:]
            assert signer.verify(altered, SCHOOL, now=T0, ttl=TTL) is None, (i, replacement)


def test_non_canonical_base64_is_rejected(signer, ticket):
    encoded_payload, mac = ticket.split(".")
    # 33 payload bytes encode to 44 characters with no spare bits; the MAC's
    # 32 bytes leave two spare bits in its last character.
    last = mac[-1]
    value = B64URL.index(last)
    for spare in (1, 2, 3):
        twin = B64URL[value ^ spare]
        assert signer.verify(f"{encoded_payload}.{mac[:-1]}{twin}", SCHOOL, T0, TTL) is None
    assert signer.verify(f"{encoded_payload}.{mac}=", SCHOOL, T0, TTL) is None


def test_swapped_parts_are_rejected(signer, ticket):
    other = signer.issue(SCHOOL, b"\x01" * 16, arrived_at=T0, now=T0)
    (p1, m1), (p2, m2) = ticket.split("."), other.split(".")
    assert signer.verify(f"{p1}.{m2}", SCHOOL, T0, TTL) is None
    assert signer.verify(f"{p2}.{m1}", SCHOOL, T0, TTL) is None
    assert signer.verify(f"{m1}.{p1}", SCHOOL, T0, TTL) is None


@pytest.mark.parametrize(
    "value",
    ["", ".", "abc", "a.b", "a.b.c", "....", "ü.ü", " " * 10, "\x00", "x" * 10_000],
)
def test_malformed_values_are_rejected(signer, ticket, value):
    assert signer.verify(value, SCHOOL, now=T0, ttl=TTL) is None


def test_truncated_and_extended_tickets_are_rejected(signer, ticket):
    for cut in range(1, len(ticket)):
        assert signer.verify(ticket[:cut], SCHOOL, T0, TTL) is None
    assert signer.verify(ticket + "A", SCHOOL, T0, TTL) is None
    assert signer.verify(" " + ticket, SCHOOL, T0, TTL) is None
    assert signer.verify(ticket + ".A", SCHOOL, T0, TTL) is None


@pytest.mark.parametrize(
    "body",
    [
        payload(version=2),
        payload(id_len=15),
        payload(id_len=17),
        payload(vid=b""),
        payload(arrived=T0 + 1, issued=T0),
        payload()[:10],
        b"",
    ],
    ids=["version", "short-len", "long-len", "empty-id", "arrived-after-issue", "cut", "empty"],
)
def test_authentic_but_invalid_payloads_are_rejected(signer, body):
    assert signer.verify(forge(body), SCHOOL, now=T0 + 1, ttl=TTL) is None


def test_school_names_cannot_be_confused(signer):
    # Length-prefixing the school means no school/payload split is ambiguous.
    value = signer.issue("ab", VID, T0, T0)
    assert signer.verify(value, "a", T0, TTL) is None
    assert signer.verify(value, "a\x00b", T0, TTL) is None


@given(st.text(max_size=300))
def test_verify_never_raises(value):
    assert TicketSigner(SECRET).verify(value, SCHOOL, now=T0, ttl=TTL) is None


def test_verify_rejects_non_strings(signer, ticket):
    assert signer.verify(ticket.encode(), SCHOOL, T0, TTL) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"visitor_id": b""}, "visitor_id"),
        ({"visitor_id": b"x" * 65}, "visitor_id"),
        ({"arrived_at": T0 + 1}, "arrived_at"),
        ({"arrived_at": -1.0}, "arrived_at"),
        ({"school": "x" * 70_000}, "school"),
    ],
)
def test_issue_refuses_bad_input(signer, kwargs, message):
    args = {"school": SCHOOL, "visitor_id": VID, "arrived_at": T0, "now": T0} | kwargs
    with pytest.raises(ValueError, match=message):
        signer.issue(**args)


def test_weak_secret_and_negative_leeway_are_refused():
    with pytest.raises(ValueError, match="16 bytes"):
        TicketSigner(b"short")
    with pytest.raises(ValueError, match="leeway"):
        TicketSigner(SECRET, leeway=-1)


def test_new_visitor_id_is_random():
    ids = {new_visitor_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 16 for i in ids)


# -- cookies -------------------------------------------------------------------


def test_cookie_header():
    assert cookie_header("sg_ticket", "abc.def", 600, secure=False) == (
        b"sg_ticket=abc.def; Max-Age=600; Path=/; HttpOnly; SameSite=Lax"
    )
    assert cookie_header("__Host-sg", "v", 0, secure=True) == (
        b"__Host-sg=v; Max-Age=0; Path=/; HttpOnly; SameSite=Lax; Secure"
    )


@pytest.mark.parametrize(
    ("name", "value", "max_age"),
    [("bad name", "v", 1), ("", "v", 1), ("n;x", "v", 1), ("n", "a;b", 1), ("n", "a b", 1),
     ("n", 'a"b', 1), ("n", "a\r\nSet-Cookie: x=y", 1), ("n", "ø", 1), ("n", "v", -1)],
)
def test_cookie_header_refuses_injection(name, value, max_age):
    with pytest.raises(ValueError):
        cookie_header(name, value, max_age, secure=True)


@pytest.mark.parametrize(
    ("header", "name", "expected"),
    [
        (b"sg=abc", "sg", "abc"),
        (b"a=1; sg=abc.def; b=2", "sg", "abc.def"),
        (b"a=1;sg=abc;b=2", "sg", "abc"),
        (b"xsg=1; sg_x=2; sg=3", "sg", "3"),
        (b'sg="quoted"', "sg", "quoted"),
        (b"sg=first; sg=second", "sg", "first"),
        (b"sg=", "sg", ""),
        (b"sg=a=b", "sg", "a=b"),
        (b"a=1; b=2", "sg", None),
        (b"", "sg", None),
        (b"sg", "sg", None),
        (b";;;  ;", "sg", None),
        (b"\xff\xfe=1; sg=ok", "sg", "ok"),
    ],
)
def test_read_cookie(header, name, expected):
    assert read_cookie(header, name) == expected


def test_cookie_round_trip(signer, ticket):
    set_cookie = cookie_header("sg", ticket, int(TTL), secure=True).decode()
    sent = "other=1; " + set_cookie.split(";", 1)[0]
    value = read_cookie(sent.encode(), "sg")
    assert signer.verify(value, SCHOOL, now=T0 + 1, ttl=TTL) == Ticket(VID, T0 - 30.25, T0)


def test_leeway_is_readable():
    assert TicketSigner(SECRET, leeway=2.5).leeway == 2.5


def test_a_ticket_holds_only_in_the_fleet_it_was_signed_for():
    # Two fleets sharing one Redis under different prefixes, by mistake with
    # one secret: neither honours the other's tickets.
    a = TicketSigner(SECRET, fleet="fleet-a:")
    b = TicketSigner(SECRET, fleet="fleet-b:")
    ticket = a.issue(SCHOOL, b"visitor", T0 - 10, T0)
    assert a.verify(ticket, SCHOOL, now=T0, ttl=TTL) is not None
    assert b.verify(ticket, SCHOOL, now=T0, ttl=TTL) is None
    assert TicketSigner(SECRET).verify(ticket, SCHOOL, now=T0, ttl=TTL) is None
