"""The one rule for event and request times: no earlier than `earliest_event_time`, no later than
`max_future_skew` ahead of the clock of the machine checking it (both in `core.settings`).

`ingest`, the feature jobs' raw data and `POST /events` check event times with it, and
`GET /recommendations?time=` its request time: a year-9999 event would overflow the feature
jobs' date range, and a year-1 request time has no features to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc

OUTSIDE_WINDOW = "outside the allowed time window"


@dataclass(frozen=True)
class TimeWindow:
    earliest: datetime
    max_future_skew: timedelta

    def latest(self, now: datetime | None = None) -> datetime:
        return (now or datetime.now(timezone.utc)) + self.max_future_skew

    def problem(self, when: datetime, now: datetime | None = None) -> str | None:
        """Why `when` (naive means UTC) is outside the window, or None when it is inside."""
        when = when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
        if when < self.earliest:
            return f"{OUTSIDE_WINDOW}: before the earliest allowed time {_iso(self.earliest)}"
        latest = self.latest(now)
        if when > latest:
            return (f"{OUTSIDE_WINDOW}: more than {self.max_future_skew} ahead of the server's clock "
                    f"(latest allowed now: {_iso(latest)})")
        return None

    def outside(self, column: pa.ChunkedArray | pa.Array, now: datetime | None = None) -> pa.Array:
        """Per value of a UTC timestamp column: True when outside the window (null: False)."""
        low = pa.scalar(self.earliest, type=column.type)
        high = pa.scalar(self.latest(now), type=column.type)
        return pc.fill_null(pc.or_(pc.less(column, low), pc.greater(column, high)), False)

    def describe(self, now: datetime | None = None) -> str:
        return f"[{_iso(self.earliest)}, {_iso(self.latest(now))}]"


def time_window() -> TimeWindow:
    """The window of the current settings (`RECSYS_EARLIEST_EVENT_TIME`, `RECSYS_MAX_FUTURE_SKEW`)."""
    from core.settings import get_settings

    settings = get_settings()
    earliest = settings.earliest_event_time
    if earliest.tzinfo is None:
        earliest = earliest.replace(tzinfo=timezone.utc)
    return TimeWindow(earliest, settings.max_future_skew)


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
