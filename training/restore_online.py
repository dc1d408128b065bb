"""`python -m training restore-online`: reload a lost (or stale) online store.

1. `feast materialize` of every view up to just after the last feature snapshot (which also
   writes the online-store marker, `core.online_marker`);
2. the real-time recent history replayed from the event log: per user, the materialized snapshot
   row (the latest `user_recent_history` row up to that end) with the logged events at or after
   its time put in front, newest first, as `POST /events` would have pushed them. Every user whose
   stored row differs from that is rewritten (whatever its stored time), so a row pushed into an
   empty store, or one shadowing a good snapshot, is replaced by what the log holds.

Events posted while step 2 runs (a few seconds) are logged, but their push may be overwritten by
the replay when it read the log before them; the next materialization includes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds

from core.online_marker import write_marker
from core.settings import Settings
from feast_ext.online_history import ONE_MICROSECOND, HistoryRow, OnlineHistory, merge_history

EPOCH = datetime(1970, 1, 1)


@dataclass
class RestoreResult:
    end: datetime
    users_in_log: int
    histories_rewritten: int


def materialize_end(raw_dir: Path) -> datetime:
    """Just after the last feature snapshot: what `python -m training materialize` loads."""
    from training.features.pipeline import default_snapshot_range

    last: date = default_snapshot_range(raw_dir)[1]
    return datetime(last.year, last.month, last.day) + timedelta(seconds=1)


def restore_online(settings: Settings, repo_path: Path | None = None, env: dict[str, str] | None = None
                   ) -> RestoreResult:
    from feast_ext import repo as feast_repo

    end = materialize_end(settings.raw_dir)
    feast_repo.materialize(EPOCH, end, repo_path=repo_path, env=env)
    store = feast_repo.feature_store(repo_path)
    history = OnlineHistory(store, settings.recent_history_length)
    expected = expected_histories(snapshot_rows(settings.features_dir, end), logged_events(settings.raw_dir),
                                  settings.recent_history_length)
    users = list(expected)
    stored = dict(zip(users, history.read(users)))
    stale = {u: row for u, row in expected.items() if _content(stored[u]) != _content(row)}
    history.write(stale)
    write_marker(history.client, store.config.project, restored_from="event log", end_time=end)
    return RestoreResult(end, len(users), len(stale))


def snapshot_rows(features_dir: Path, end: datetime) -> pd.DataFrame:
    """Per user, the latest `user_recent_history` row stamped before `end` (what materialization
    loaded): user_id, recent_item_ids, last_event_timestamp, event_timestamp."""
    columns = ["user_id", "recent_item_ids", "last_event_timestamp", "event_timestamp"]
    table = ds.dataset(features_dir / "user_recent_history", format="parquet", partitioning="hive")
    limit = pd.Timestamp(end, tz="UTC")
    frame = table.to_table(columns=columns, filter=ds.field("event_timestamp") < limit).to_pandas()
    frame = frame.sort_values(["user_id", "event_timestamp"], kind="stable")
    return frame.drop_duplicates("user_id", keep="last").set_index("user_id")


def logged_events(raw_dir: Path) -> pd.DataFrame:
    table = ds.dataset(raw_dir / "events", format="parquet", partitioning=None)
    return table.to_table(columns=["user_id", "item_id", "event_timestamp"]).to_pandas()


def expected_histories(snapshots: pd.DataFrame, events: pd.DataFrame, length: int) -> dict[int, HistoryRow]:
    """Per user in the log: the snapshot row with the events at or after its time in front."""
    events = events.sort_values(["user_id", "event_timestamp", "item_id"], ascending=[True, False, False],
                                kind="stable")
    rows: dict[int, HistoryRow] = {}
    for user_id, group in events.groupby("user_id", sort=False):
        user_id = int(user_id)
        snapshot = snapshots.loc[user_id] if user_id in snapshots.index else None
        since = snapshot["event_timestamp"] if snapshot is not None else None
        newer = group if since is None else group[group["event_timestamp"] >= since]
        rows[user_id] = _row(snapshot, newer, length)
    return rows


def _row(snapshot: pd.Series | None, newer: pd.DataFrame, length: int) -> HistoryRow:
    stored = [] if snapshot is None else list(snapshot["recent_item_ids"] if snapshot["recent_item_ids"] is not None else [])
    items = merge_history(stored, newer["item_id"].tolist(), length)
    if newer.empty:
        return HistoryRow(items, _py(snapshot["last_event_timestamp"]), _py(snapshot["event_timestamp"]))
    newest = _py(newer["event_timestamp"].iloc[0])
    written = newest + ONE_MICROSECOND
    if snapshot is not None:
        written = max(written, _py(snapshot["event_timestamp"]))
    return HistoryRow(items, newest, written)


def _content(row: HistoryRow) -> tuple:
    """What a reader sees (Feast keeps UNIX_TIMESTAMP values in whole seconds)."""
    return tuple(row.items), None if row.last_event is None else int(row.last_event.timestamp())


def _py(value) -> datetime | None:
    if value is None or pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()
