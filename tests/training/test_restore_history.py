"""The recent history restore-online replays: the snapshot row with the logged events after it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from feast_ext.online_history import ONE_MICROSECOND, merge_history
from training.restore_online import expected_histories

T = pd.Timestamp(datetime(2026, 3, 2, tzinfo=timezone.utc))


def test_events_after_the_snapshot_go_in_front_newest_first() -> None:
    snapshots = pd.DataFrame({"user_id": [1, 2], "recent_item_ids": [[5, 4, 3], [9]],
                              "last_event_timestamp": [T - timedelta(hours=1), T - timedelta(hours=5)],
                              "event_timestamp": [T, T]}).set_index("user_id")
    events = pd.DataFrame({"user_id": [1, 1, 1, 2, 3], "item_id": [3, 7, 8, 9, 11],
                           "event_timestamp": [T - timedelta(hours=1), T + timedelta(minutes=5),
                                               T + timedelta(minutes=9), T - timedelta(hours=5),
                                               T + timedelta(hours=2)]})

    rows = expected_histories(snapshots, events, length=4)

    assert rows[1].items == [8, 7, 5, 4]  # the event before the snapshot is in it already
    assert rows[1].last_event == T + timedelta(minutes=9)
    assert rows[1].written_at == T + timedelta(minutes=9) + ONE_MICROSECOND
    assert rows[2].items == [9] and rows[2].written_at == T  # nothing after its snapshot: the snapshot
    assert rows[3].items == [11]  # no snapshot row: the log alone


def test_merge_keeps_the_newest_and_truncates() -> None:
    assert merge_history([3, 2, 1], [5, 4], 4) == [5, 4, 3, 2]
    assert merge_history([1], [6, 5, 4, 3, 2], 3) == [6, 5, 4]
