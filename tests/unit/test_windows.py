"""Time windows: weekdays, overnight spans, DST, edges."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.admission.windows import ClassWindows, parse_clock
from gateway.config.schema import TrafficClass, Window

BERLIN = ZoneInfo("Europe/Berlin")
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


def at(*args, tz=BERLIN) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def bulk(*windows: Window, base=None) -> ClassWindows:
    return ClassWindows.from_config(TrafficClass(name="bulk", max_share=base,
                                                 windows=list(windows)))


SCHOOL_DAY = Window(days=WEEKDAYS, start="07:30", end="16:00", tz="Europe/Berlin",
                    max_share=0.1)


def test_school_day_window_in_berlin():
    w = bulk(SCHOOL_DAY)
    assert w.share_at(at(2024, 1, 15, 7, 29)) is None  # Monday before school
    assert w.share_at(at(2024, 1, 15, 7, 30)) == 0.1
    assert w.share_at(at(2024, 1, 15, 15, 59)) == 0.1
    assert w.share_at(at(2024, 1, 15, 16, 0)) is None
    assert w.share_at(at(2024, 1, 13, 10, 0)) is None  # Saturday


def test_next_change_walks_the_edges_across_the_weekend():
    w = bulk(SCHOOL_DAY)
    assert w.next_change(at(2024, 1, 15, 3, 0)) == at(2024, 1, 15, 7, 30)
    assert w.next_change(at(2024, 1, 15, 7, 30)) == at(2024, 1, 15, 16, 0)
    assert w.next_change(at(2024, 1, 19, 16, 0)) == at(2024, 1, 22, 7, 30)  # Fri -> Mon


def test_dst_moves_the_utc_instant_not_the_local_time():
    w = bulk(SCHOOL_DAY)
    utc = ZoneInfo("UTC")
    # Winter: 07:30 CET is 06:30 UTC; summer: 07:30 CEST is 05:30 UTC.
    assert w.share_at(at(2024, 1, 15, 6, 30, tz=utc)) == 0.1
    assert w.share_at(at(2024, 1, 15, 6, 29, tz=utc)) is None
    assert w.share_at(at(2024, 7, 15, 5, 30, tz=utc)) == 0.1
    assert w.share_at(at(2024, 7, 15, 5, 29, tz=utc)) is None
    # The Monday after the spring change (31 March 2024) starts at 05:30 UTC.
    assert w.next_change(at(2024, 3, 29, 16, 0)) == at(2024, 4, 1, 5, 30, tz=utc)


def test_window_across_midnight_belongs_to_its_start_day():
    night = Window(days=["fri"], start="22:00", end="06:00", tz="Europe/Berlin",
                   max_share=0.5)
    w = bulk(night, base=0.2)
    assert w.share_at(at(2024, 1, 19, 21, 59)) == 0.2  # Friday evening: base share
    assert w.share_at(at(2024, 1, 19, 23, 0)) == 0.5
    assert w.share_at(at(2024, 1, 20, 5, 59)) == 0.5  # Saturday morning
    assert w.share_at(at(2024, 1, 20, 6, 0)) == 0.2
    assert w.share_at(at(2024, 1, 20, 23, 0)) == 0.2  # Saturday night: not listed
    assert w.next_change(at(2024, 1, 19, 23, 0)) == at(2024, 1, 20, 6, 0)


def test_overnight_window_over_a_dst_night_lasts_the_real_duration():
    night = Window(days=["sat"], start="22:00", end="06:00", tz="Europe/Berlin",
                   max_share=0.5)
    w = bulk(night)
    start = at(2024, 3, 30, 22, 0)
    assert w.next_change(start) - start == 7 * 3600  # an hour is skipped that night


def test_end_of_day_and_overlaps_take_the_smallest_share():
    evening = Window(days=WEEKDAYS, start="12:00", end="24:00", tz="UTC", max_share=0.5)
    w = bulk(SCHOOL_DAY, evening)
    utc = ZoneInfo("UTC")
    assert w.share_at(at(2024, 1, 15, 13, 0, tz=utc)) == 0.1  # both active
    assert w.share_at(at(2024, 1, 15, 23, 59, tz=utc)) == 0.5
    assert w.share_at(at(2024, 1, 16, 0, 0, tz=utc)) is None


def test_no_windows_never_changes():
    w = bulk(base=0.3)
    assert w.share_at(0.0) == 0.3 and w.next_change(0.0) is None


@pytest.mark.parametrize(("window", "message"), [
    (Window(tz="Mars/Olympus"), "unknown time zone"),
    (Window(start="7:3"), "not HH:MM"),
    (Window(start="25:00"), "out of range"),
    (Window(start="08:00", end="08:00"), "empty"),
    (Window(days=[]), "at least one day"),
])
def test_bad_windows_name_their_key(window, message):
    with pytest.raises(ValueError, match=rf"classes\.bulk\.windows\[0\]: .*{message}"):
        bulk(window)


def test_parse_clock():
    assert parse_clock("07:05").minute == 5
    assert parse_clock("24:00", allow_24=True) is None
    with pytest.raises(ValueError):
        parse_clock("24:00")
