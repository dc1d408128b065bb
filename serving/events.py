"""POST /events: validate, append to the event log, push the users' new recent history online.

1. The batch is validated as a whole against the raw events contract
   (`training.data.schema.validate_table`) and, by default, against the model's catalog; any bad
   event rejects the whole batch (422 naming each bad event and why) and nothing is written.
2. The events are appended to the event log the next training run reads: parquet files in the raw
   events layout (`events/event_date=YYYY-MM-DD/<part>.parquet`) through
   `write_events_partitioned`, under a part name unique to this request.
3. Per user: the online `recent_item_ids` (most recent first) gets the new items prepended
   (newest first) and is truncated to the history length; `store.push("user_activity_push", ...,
   to=PushMode.ONLINE)` writes it with `last_event_timestamp`, so the very next recommendation
   excludes those items and embeds the new history. The row's timestamp is later than the stored
   one (Feast's Redis store ignores a write that is not newer), and a per-user lock serializes the
   read-modify-write of concurrent requests for one user in this process.

The event log is written first: if Redis is down the events are still kept for training, and the
response says the online features were not updated (`online_updated: false, degraded: true`).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from feast.data_source import PushMode

from serving.features import OnlineFeatures, OnlineStoreUnavailable, _is_store_failure
from training.data.schema import EVENTS_SCHEMA, SchemaError, validate_table, write_events_partitioned
from training.retrieval.inputs import HISTORY_COLUMN
from serving.redact import get_logger

log = get_logger("serving.events")

PUSH_SOURCE = "user_activity_push"
LAST_EVENT_COLUMN = "user_recent_history__last_event_timestamp"
_ONE_MICROSECOND = timedelta(microseconds=1)


class InvalidEvents(ValueError):
    def __init__(self, message: str, details: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.details = details


@dataclass
class IngestResult:
    accepted: int
    files: list[str]
    users: list[int]
    online_updated: bool
    error: str | None = None


class EventIngestor:
    def __init__(self, online: OnlineFeatures, events_dir: Path, history_length: int, n_locks: int = 64) -> None:
        self.online = online
        self.store = online.store
        self.events_dir = Path(events_dir)
        self.history_length = history_length
        self._locks = [threading.Lock() for _ in range(n_locks)]

    # -- validation ---------------------------------------------------------------------------

    def validate(self, events: list[dict[str, Any]], known_items=None) -> pa.Table:
        """The events as a valid EVENTS_SCHEMA table, or InvalidEvents naming every bad one."""
        if not events:
            raise InvalidEvents("no events in the request", [])
        try:
            table = pa.Table.from_pylist([{name: e.get(name) for name in EVENTS_SCHEMA.names} for e in events],
                                         schema=EVENTS_SCHEMA)
            result = validate_table(table, "events", source="POST /events")
        except (SchemaError, pa.ArrowException, TypeError, ValueError) as error:
            raise InvalidEvents(f"events do not match the events schema: {error}", []) from error
        details = []
        if result.n_rejected:
            for position, event in enumerate(events):  # only on the error path: find which ones
                single = validate_table(table.slice(position, 1), "events")
                if single.n_rejected:
                    details.append({"index": position, "reason": single.reason_counts().popitem()[0],
                                    "event": _jsonable(event)})
        if known_items is not None:
            item_ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
            for position, item in enumerate(item_ids):
                if item is not None and item >= 0 and known_items([int(item)])[0] < 0:
                    details.append({"index": position, "reason": "unknown item_id (not in the model's catalog)",
                                    "event": _jsonable(events[position])})
        if details:
            details.sort(key=lambda d: d["index"])
            raise InvalidEvents(f"{len(details)} of {len(events)} events are invalid; nothing was written",
                                details)
        return result.valid

    # -- writing ------------------------------------------------------------------------------

    def ingest(self, events: list[dict[str, Any]], known_items=None, push: bool = True) -> IngestResult:
        table = self.validate(events, known_items)
        part = f"serving-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}"
        files = [str(p) for p in write_events_partitioned(table, self.events_dir, part)]
        frame = table.select(["user_id", "item_id", "event_timestamp"]).to_pandas()
        users = sorted(int(u) for u in frame["user_id"].unique())
        if not push:
            return IngestResult(table.num_rows, files, users, False, "online store unavailable")
        try:
            self._push(frame)
        except OnlineStoreUnavailable as error:
            log.warning("events logged but not pushed online: %s", error)
            return IngestResult(table.num_rows, files, users, False, str(error))
        return IngestResult(table.num_rows, files, users, True)

    def _push(self, frame: pd.DataFrame) -> None:
        frame = frame.sort_values(["user_id", "event_timestamp"], ascending=[True, False], kind="stable")
        for user_id, group in frame.groupby("user_id", sort=True):
            with self._locks[int(user_id) % len(self._locks)]:
                self._push_user(int(user_id), group)

    def _push_user(self, user_id: int, events: pd.DataFrame) -> None:
        current, stored_at = self._current_history(user_id)
        history = [int(i) for i in events["item_id"]]  # newest first
        recent = (history + [int(i) for i in (current.get(HISTORY_COLUMN) or [])])[: self.history_length]
        newest = events["event_timestamp"].max().to_pydatetime()
        last_event = current.get(LAST_EVENT_COLUMN)
        last_event = max(newest, last_event) if isinstance(last_event, datetime) else newest
        row_time = max(datetime.now(timezone.utc), newest)
        if stored_at is not None and row_time <= stored_at:
            row_time = stored_at + _ONE_MICROSECOND  # Feast keeps the stored row unless newer
        push = pd.DataFrame({
            "user_id": [user_id],
            "recent_item_ids": [recent],
            "last_event_timestamp": [pd.Timestamp(last_event)],
            "event_timestamp": [pd.Timestamp(row_time)],
        })
        try:
            self.store.push(PUSH_SOURCE, push, to=PushMode.ONLINE)
        except Exception as error:  # noqa: BLE001
            if _is_store_failure(error):
                raise OnlineStoreUnavailable(f"push to the online store failed: {error}") from error
            raise

    def _current_history(self, user_id: int) -> tuple[dict[str, Any], datetime | None]:
        """The user's online recent history and when Feast last wrote it."""
        refs = ["user_recent_history:recent_item_ids", "user_recent_history:last_event_timestamp"]
        try:
            values = self.store.get_online_features(features=refs, entity_rows=[{"user_id": user_id}],
                                                    full_feature_names=True).to_dict()
        except Exception as error:  # noqa: BLE001
            if _is_store_failure(error):
                raise OnlineStoreUnavailable(f"online store unreachable: {error}") from error
            raise
        current = {HISTORY_COLUMN: values[HISTORY_COLUMN][0], LAST_EVENT_COLUMN: values[LAST_EVENT_COLUMN][0]}
        return current, self.online.last_write("user_recent_history", "user_id", user_id)


def _jsonable(event: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in event.items()}
