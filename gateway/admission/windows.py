"""Time windows: a traffic class's share of slots by local wall-clock time.

A window is "these weekdays, from start to end, in this time zone". Each
occurrence is turned into an absolute interval [start, end) of Unix time by
zoneinfo, so DST changes move the instants, not the local times: 07:30 Berlin
is 05:30 UTC in summer and 06:30 UTC in winter. A window whose end is not
after its start crosses midnight and belongs to the day it starts on
(fri 22:00-06:00 runs Friday night into Saturday morning). "24:00" is
accepted as an end. A local time that falls into a DST gap is moved forward
by the gap (zoneinfo's fold=0 mapping).

While several windows are active the smallest share wins: windows only ever
restrict. Outside every window the class's own max_share applies (None means
unrestricted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.config.schema import TrafficClass, Window

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Occurrences examined around `now`: yesterday (an overnight window still
# running) through a week ahead (the next start of a weekly window).
_LOOKBEHIND_DAYS = 1
_LOOKAHEAD_DAYS = 8


def parse_clock(text: str, *, allow_24: bool = False) -> time | None:
    """'HH:MM' -> time; '24:00' (end of day) -> None when allow_24."""
    hours, sep, minutes = text.partition(":")
    if not (sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError(f"time {text!r} is not HH:MM")
    h, m = int(hours), int(minutes)
    if allow_24 and (h, m) == (24, 0):
        return None
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise ValueError(f"time {text!r} is out of range")
    return time(h, m)


@dataclass(frozen=True, slots=True)
class CompiledWindow:
    days: frozenset[int]
    start: time
    # None: midnight at the end of the start day.
    end: time | None
    zone: ZoneInfo
    share: float

    @classmethod
    def from_config(cls, window: Window) -> CompiledWindow:
        try:
            zone = ZoneInfo(window.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {window.tz!r}") from exc
        if not window.days:
            raise ValueError("a window needs at least one day")
        start = parse_clock(window.start)
        end = parse_clock(window.end, allow_24=True)
        if end == start:
            raise ValueError(f"window {window.start}-{window.end} is empty")
        return cls(frozenset(DAYS.index(d) for d in window.days), start, end, zone,
                   window.max_share)

    def occurrences(self, now: float) -> list[tuple[float, float]]:
        """[start, end) Unix-time intervals of the occurrences near now."""
        today = datetime.fromtimestamp(now, self.zone).date()
        spans = []
        for offset in range(-_LOOKBEHIND_DAYS, _LOOKAHEAD_DAYS):
            day = today + timedelta(days=offset)
            if day.weekday() in self.days:
                spans.append((self._instant(day, self.start), self._end(day)))
        return spans

    def _end(self, day: date) -> float:
        if self.end is None or self.end <= self.start:
            return self._instant(day + timedelta(days=1), self.end or time(0))
        return self._instant(day, self.end)

    def _instant(self, day: date, at: time) -> float:
        # fold=0: a local time inside a DST gap maps with the offset from
        # before the change, i.e. forward by the gap (02:30 -> 03:30 CEST).
        return datetime.combine(day, at, tzinfo=self.zone).timestamp()


class ClassWindows:
    """The share of one class over time."""

    __slots__ = ("base", "windows")

    def __init__(self, base: float | None, windows: Sequence[CompiledWindow]):
        self.base = base
        self.windows = tuple(windows)

    @classmethod
    def from_config(cls, klass: TrafficClass) -> ClassWindows:
        compiled = []
        for i, window in enumerate(klass.windows):
            try:
                compiled.append(CompiledWindow.from_config(window))
            except ValueError as exc:
                raise ValueError(f"classes.{klass.name}.windows[{i}]: {exc}") from None
        return cls(klass.max_share, compiled)

    def share_at(self, now: float) -> float | None:
        """The class's share at Unix time now (None: unrestricted)."""
        share = None
        for window in self.windows:
            if any(start <= now < end for start, end in window.occurrences(now)):
                share = window.share if share is None else min(share, window.share)
        return self.base if share is None else share

    def next_change(self, now: float) -> float | None:
        """First window edge after now (None: the share never changes)."""
        edges = [edge for window in self.windows
                 for span in window.occurrences(now) for edge in span if edge > now]
        return min(edges, default=None)


__all__ = ["DAYS", "ClassWindows", "CompiledWindow", "parse_clock"]
