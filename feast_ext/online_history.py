"""The online recent history (`user_recent_history`), read and written in Feast's Redis layout.

The rows are the hashes Feast's Redis store keeps (its key function `_redis_key`, its field names
`_mmh3("<view>:<feature>")` and `_ts:<view>`, values serialized by its `python_values_to_proto_values`),
so `get_online_features` and the serving reads see them as they see Feast's own pushes.

Two writers use it:

* `POST /events` (`prepend`): the stored history plus the new events, read and written in one
  Redis transaction per user (WATCH/MULTI, retried when another process wrote the row in
  between), so concurrent events for one user in several worker processes lose nothing;
* `python -m training restore-online` (`write`): histories rebuilt from the event log.

A written row's time (`_ts`) is never earlier than its newest event, and for `prepend` always
later than the stored row's: Feast's materialization keeps a stored row unless its own is newer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import redis
from feast import FeatureStore
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.redis import _versioned_fv_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

VIEW = "user_recent_history"
ITEMS_FEATURE = "recent_item_ids"
LAST_EVENT_FEATURE = "last_event_timestamp"
ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class HistoryRow:
    items: list[int]  # most recent first
    last_event: datetime | None
    written_at: datetime | None = None  # the row's Feast event timestamp (`_ts:<view>`)


def merge_history(stored: Sequence[int], new_items_newest_first: Sequence[int], length: int) -> list[int]:
    return [int(i) for i in [*new_items_newest_first, *stored][:length]]


class OnlineHistory:
    def __init__(self, store: FeatureStore, length: int) -> None:
        config = store.config
        self.length = length
        self.project = config.project
        self.key_version = config.entity_key_serialization_version
        self.key_ttl = getattr(config.online_store, "key_ttl_seconds", None)
        view_name = _versioned_fv_name(store.get_feature_view(VIEW), config)
        self.ts_field = f"_ts:{view_name}".encode()
        self.items_field = _mmh3(f"{view_name}:{ITEMS_FEATURE}")
        self.last_field = _mmh3(f"{view_name}:{LAST_EVENT_FEATURE}")
        online_store = store._get_provider().online_store  # noqa: SLF001 - Feast's own Redis client
        self.client: redis.Redis = online_store._get_client(config.online_store)  # noqa: SLF001

    # -- layout -----------------------------------------------------------------------------------

    def key(self, user_id: int) -> bytes:
        entity = EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(int64_val=int(user_id))])
        return _redis_key(self.project, entity, entity_key_serialization_version=self.key_version)

    @property
    def fields(self) -> list[bytes]:
        return [self.items_field, self.last_field, self.ts_field]

    def decode(self, reply: Sequence[bytes | None]) -> HistoryRow:
        raw_items, raw_last, raw_ts = reply
        items = [] if raw_items is None else feast_value_type_to_python_type(
            ValueProto.FromString(raw_items), ValueType.INT64_LIST) or []
        last = None if raw_last is None else feast_value_type_to_python_type(
            ValueProto.FromString(raw_last), ValueType.UNIX_TIMESTAMP)
        written = None
        if raw_ts is not None:
            stamp = Timestamp.FromString(raw_ts)
            if stamp.seconds or stamp.nanos:
                written = stamp.ToDatetime(tzinfo=timezone.utc)
        return HistoryRow([int(i) for i in items], _utc(last), written)

    def encode(self, row: HistoryRow) -> dict[bytes, bytes]:
        items = python_values_to_proto_values([list(row.items)], ValueType.INT64_LIST)[0]
        last = python_values_to_proto_values([row.last_event], ValueType.UNIX_TIMESTAMP)[0]
        stamp = Timestamp()
        stamp.FromDatetime(row.written_at)
        return {self.ts_field: stamp.SerializeToString(), self.items_field: items.SerializeToString(),
                self.last_field: last.SerializeToString()}

    # -- reads and writes -----------------------------------------------------------------------

    def read(self, user_ids: Sequence[int], batch: int = 1_000) -> list[HistoryRow]:
        """The stored rows (empty rows for users without one), pipelined."""
        rows: list[HistoryRow] = []
        for start in range(0, len(user_ids), batch):
            with self.client.pipeline(transaction=False) as pipe:
                for user_id in user_ids[start:start + batch]:
                    pipe.hmget(self.key(user_id), self.fields)
                rows += [self.decode(reply) for reply in pipe.execute()]
        return rows

    def prepend(self, user_id: int, items_newest_first: Sequence[int], newest_event: datetime,
                now: datetime | None = None) -> HistoryRow:
        """Put `items_newest_first` in front of the user's stored history, atomically."""
        key = self.key(user_id)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    stored = self.decode(pipe.hmget(key, self.fields))
                    row = self._prepended(stored, items_newest_first, newest_event, now)
                    pipe.multi()
                    self._queue_write(pipe, key, row)
                    pipe.execute()
                    return row
                except redis.WatchError:
                    continue  # another writer changed the row between our read and write: redo

    def _prepended(self, stored: HistoryRow, items: Sequence[int], newest_event: datetime,
                   now: datetime | None) -> HistoryRow:
        newest_event = _utc(newest_event)
        last_event = max(newest_event, stored.last_event) if stored.last_event else newest_event
        written_at = max(now or datetime.now(timezone.utc), newest_event)
        if stored.written_at is not None and written_at <= stored.written_at:
            written_at = stored.written_at + ONE_MICROSECOND
        return HistoryRow(merge_history(stored.items, items, self.length), last_event, written_at)

    def write(self, rows: dict[int, HistoryRow], batch: int = 1_000) -> int:
        """Write `rows` as they are (whatever is stored), pipelined; returns how many."""
        users = list(rows)
        for start in range(0, len(users), batch):
            with self.client.pipeline(transaction=False) as pipe:
                for user_id in users[start:start + batch]:
                    self._queue_write(pipe, self.key(user_id), rows[user_id])
                pipe.execute()
        return len(users)

    def _queue_write(self, pipe, key: bytes, row: HistoryRow) -> None:
        pipe.hset(key, mapping=self.encode(row))
        if self.key_ttl:
            pipe.expire(key, self.key_ttl)


def _utc(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
