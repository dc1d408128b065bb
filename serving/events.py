"""POST /events: validate, append to the event log, push the users' new recent history online.

1. The batch is validated as a whole against the raw events contract
   (`core.schema.validate_table`, the time window of `core.time_window`
   included) and, by default, against the model's catalog; any bad event rejects the whole batch
   (422 naming each bad event and why) and nothing is written.
2. Events may carry an `event_id` (idempotency key): ids already acknowledged (kept in Redis for
   `idempotency_ttl_s`) are answered as duplicates and not written again; ids another request is
   writing right now make the request a 409 (retry it). Ids are reserved before the write and
   released if it fails, so a retry after a failure is written.
3. The events are appended to the event log the next training run reads (`serving.event_log`:
   group commits of fsync'd parquet files in the raw events layout) before anything is answered.
4. Per user, the stored online history with the new items in front (newest first), truncated to
   the history length, is written in one Redis transaction (`feast_ext.online_history`): events
   for one user arriving at several worker processes at once lose nothing.

If Redis is down, or answers without a materialization in it (the store was lost: pushing would
leave one-item histories), the events are still logged, and the response says the online features
were not updated (`online_updated: false, degraded: true`); `python -m training restore-online`
replays them from the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from core.schema import EVENTS_SCHEMA, REJECT_REASON_COLUMN, SOURCE_ROW_COLUMN, SchemaError, validate_table
from feast_ext.online_history import OnlineHistory
from serving.event_log import EventLog
from serving.features import OnlineFeatures, OnlineStoreUnavailable, _is_store_failure
from serving.redact import get_logger

log = get_logger("serving.events")


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
    duplicates: int = 0  # events whose event_id was acknowledged before: not written again


class DuplicateInFlight(RuntimeError):
    """An event id is being written by another request right now."""


class EventIngestor:
    def __init__(self, online: OnlineFeatures, log: EventLog, history: OnlineHistory,
                 idempotency_ttl_s: int = 86_400, pending_ttl_s: int = 60) -> None:
        self.online = online
        self.log = log
        self.history = history
        self.idempotency_ttl_s = idempotency_ttl_s
        self.pending_ttl_s = pending_ttl_s
        self.project = online.store.config.project

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
        details = [{"index": int(row[SOURCE_ROW_COLUMN]) - 1, "reason": row[REJECT_REASON_COLUMN],
                    "event": _jsonable(events[int(row[SOURCE_ROW_COLUMN]) - 1])}
                   for row in result.rejected.select([SOURCE_ROW_COLUMN, REJECT_REASON_COLUMN]).to_pylist()]
        if known_items is not None:
            item_ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
            for position, item in enumerate(item_ids):
                if item is not None and item >= 0 and known_items([int(item)])[0] < 0:
                    details.append({"index": position, "reason": "unknown item_id (not in the model's catalog)",
                                    "event": _jsonable(events[position])})
        details += _repeated_ids(events)
        if details:
            details.sort(key=lambda d: d["index"])
            raise InvalidEvents(f"{len(details)} of {len(events)} events are invalid; nothing was written",
                                details)
        return result.valid

    # -- writing ------------------------------------------------------------------------------

    def ingest(self, events: list[dict[str, Any]], known_items=None, push: bool = True,
               lost: str | None = None) -> IngestResult:
        """Validate, skip acknowledged event ids, log durably, push. `push=False`: Redis is down
        (keyed events then cannot be checked: OnlineStoreUnavailable); `lost`: Redis answers
        but was not materialized (why), so nothing is pushed."""
        table = self.validate(events, known_items)
        ids = [e.get("event_id") for e in events]
        fresh = self._reserve(ids) if any(ids) else list(range(len(events)))
        duplicates = len(events) - len(fresh)
        table = table.take(pa.array(fresh, type=pa.int64()))
        try:
            files = self.log.append(table) if table.num_rows else []
        except BaseException:
            self._release([ids[i] for i in fresh])
            raise
        self._acknowledge([ids[i] for i in fresh])
        frame = table.select(["user_id", "item_id", "event_timestamp"]).to_pandas()
        users = sorted(int(u) for u in frame["user_id"].unique())
        if not push or lost:
            return IngestResult(table.num_rows, files, users, False, lost or "online store unavailable",
                                duplicates)
        try:
            self._push(frame)
        except OnlineStoreUnavailable as error:
            log.warning("events logged but not pushed online: %s", error)
            return IngestResult(table.num_rows, files, users, False, str(error), duplicates)
        return IngestResult(table.num_rows, files, users, True, None, duplicates)

    # -- idempotency keys ---------------------------------------------------------------------

    def _id_key(self, event_id: str) -> bytes:
        return f"recsys:event_id:{self.project}:{event_id}".encode()

    def _reserve(self, ids: list[str | None]) -> list[int]:
        """Positions of the events to write: those without an id, and those whose id this call
        reserved. Acknowledged ids are left out; an id in flight elsewhere raises DuplicateInFlight."""
        keyed = [i for i, event_id in enumerate(ids) if event_id]
        try:
            with self.online._client().pipeline(transaction=False) as pipe:  # noqa: SLF001
                for i in keyed:
                    pipe.set(self._id_key(ids[i]), PENDING, nx=True, ex=self.pending_ttl_s)
                    pipe.get(self._id_key(ids[i]))
                replies = pipe.execute()
        except Exception as error:  # noqa: BLE001
            if _is_store_failure(error):
                raise OnlineStoreUnavailable(f"cannot check event ids: {error}") from error
            raise
        reserved = {i for i, got in zip(keyed, replies[0::2]) if got}
        in_flight = [ids[i] for i, value in zip(keyed, replies[1::2]) if i not in reserved and value == PENDING]
        if in_flight:
            self._release([ids[i] for i in reserved])
            raise DuplicateInFlight(f"{len(in_flight)} event id(s) are being written by another request; retry")
        return [i for i, event_id in enumerate(ids) if not event_id or i in reserved]

    def _release(self, ids: list[str | None]) -> None:
        keys = [self._id_key(i) for i in ids if i]
        if keys:
            try:
                self.online._client().delete(*keys)  # noqa: SLF001
            except Exception:  # noqa: BLE001 - they expire after pending_ttl_s anyway
                log.warning("could not release %d event id reservations", len(keys))

    def _acknowledge(self, ids: list[str | None]) -> None:
        keys = [self._id_key(i) for i in ids if i]
        if not keys:
            return
        try:
            with self.online._client().pipeline(transaction=False) as pipe:  # noqa: SLF001
                for key in keys:
                    pipe.set(key, DONE, ex=self.idempotency_ttl_s)
                pipe.execute()
        except Exception:  # noqa: BLE001 - the events are logged; a retry within pending_ttl_s is refused
            log.warning("could not record %d event ids as written", len(keys))

    # -- online history -----------------------------------------------------------------------

    def _push(self, frame: pd.DataFrame) -> None:
        frame = frame.sort_values(["user_id", "event_timestamp"], ascending=[True, False], kind="stable")
        try:
            for user_id, group in frame.groupby("user_id", sort=True):
                self.history.prepend(int(user_id), [int(i) for i in group["item_id"]],
                                     group["event_timestamp"].iloc[0].to_pydatetime())
        except Exception as error:  # noqa: BLE001
            if _is_store_failure(error):
                raise OnlineStoreUnavailable(f"push to the online store failed: {error}") from error
            raise


PENDING = b"pending"
DONE = b"done"


def _repeated_ids(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    details = []
    for position, event in enumerate(events):
        event_id = event.get("event_id")
        if event_id and event_id in seen:
            details.append({"index": position, "reason": "event_id repeated in the request",
                            "event": _jsonable(event)})
        seen.add(event_id)
    return details


def _jsonable(event: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in event.items()}
