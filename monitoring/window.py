"""Reporting windows: `--window 24h` (ending now or at --end), or explicit `--start/--end` (UTC)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pandas as pd

from monitoring.errors import MonitoringInputError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class TimeWindow:
    """[start, end) in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise MonitoringInputError(f"empty window: end {self.end.isoformat()} is not after start "
                                       f"{self.start.isoformat()}")

    def contains(self, stamps: pd.Series) -> pd.Series:
        stamps = pd.to_datetime(stamps, utc=True)
        return (stamps >= pd.Timestamp(self.start)) & (stamps < pd.Timestamp(self.end))

    def label(self) -> str:
        return f"{self.start:%Y-%m-%dT%H:%M}Z..{self.end:%Y-%m-%dT%H:%M}Z"

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


def parse_duration(text: str) -> timedelta:
    """`90m`, `24h`, `7d`, `2w` (also `1.5h`)."""
    match = _DURATION.match(text or "")
    if not match:
        raise MonitoringInputError(f"invalid duration {text!r}: use a number and a unit s/m/h/d/w, e.g. 24h or 7d")
    value, unit = float(match.group(1)), match.group(2).lower()
    duration = timedelta(**{_UNITS[unit]: value})
    if duration <= timedelta(0):
        raise MonitoringInputError(f"invalid duration {text!r}: must be positive")
    return duration


def parse_time(text: str) -> datetime:
    """ISO date or datetime; naive values are UTC."""
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError) as error:
        raise MonitoringInputError(f"invalid time {text!r}: use ISO format, e.g. 2026-03-01 or "
                                   f"2026-03-01T12:00:00Z") from error
    if pd.isna(stamp):
        raise MonitoringInputError(f"invalid time {text!r}")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


def resolve_window(window: str | None = None, start: str | None = None, end: str | None = None,
                   now: datetime | None = None) -> TimeWindow:
    """`window` alone: the last `window` before now; with `end`: the `window` before `end`; with
    `start`: the `window` after `start`; `start` + `end`: exactly that."""
    end_at = parse_time(end) if end else None
    start_at = parse_time(start) if start else None
    if window and start_at and end_at:
        raise MonitoringInputError("give --window or --start/--end, not all three")
    if window:
        duration = parse_duration(window)
        if start_at is not None:
            return TimeWindow(start_at, start_at + duration)
        end_at = end_at or (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        return TimeWindow(end_at - duration, end_at)
    if start_at is None:
        raise MonitoringInputError("no window: give --window (e.g. 24h, 7d) or --start [--end]")
    return TimeWindow(start_at, end_at or (now or datetime.now(timezone.utc)).astimezone(timezone.utc))
