"""A marker key that says the online store holds a materialization.

Redis without persistence comes back empty after a restart, and an empty store answers every
read: all users look cold. Materialization (`feast_ext.materialize`) writes this key after a
run whose views all succeeded; serving's health check reads it (a missing marker: the store was
lost, `/readyz` 503); `python -m training restore-online` re-materializes and writes it again.

The key ends with the project name, as Feast's own keys do, so `feast teardown` (and
`feast_repo.delete_online_rows`) removes it with the project's rows.

Write tokens: the project's online store (`feast_ext.online_store.FastRedisOnlineStore`) sets a
fresh random token per feature view after every write to it (materialization, push,
`write_to_online_store`). A reader that keeps a copy of a view's rows (serving's item cache)
compares the token with the one it saw at its last full read: unchanged, nothing was written since,
so it need not re-read 100k write stamps to find out. A missing token (Feast's built-in store, or
an emptied Redis) means "unknown": the reader reads the stamps.

Written entities: the same store adds the id of every item it writes a row for to a Redis set
(`written_ids_key`), so serving can find items created after its model bundle (`serving.new_items`)
without scanning the keyspace: a changed set size says something new may be there.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

import redis

RESTORE_COMMAND = "python -m training restore-online"


def marker_key(project: str) -> bytes:
    return f"recsys:online_materialized:{project}".encode()


BOOKKEEPING_PREFIX = b"recsys:"  # our own keys (marker, write tokens, event ids), never a Feast entity hash


def is_bookkeeping_key(key: bytes) -> bool:
    return key.startswith(BOOKKEEPING_PREFIX)


def write_token_key(project: str, view: str) -> bytes:
    return f"recsys:online_writes:{view}:{project}".encode()


# Join keys whose written ids are kept in a set (single-key views only): the catalog's.
TRACKED_JOIN_KEYS = ("item_id",)


def written_ids_key(project: str, join_key: str) -> bytes:
    """The set of `join_key` values some view of `project` holds a row for."""
    return f"recsys:online_ids:{join_key}:{project}".encode()


def new_write_token() -> str:
    return uuid.uuid4().hex


def write_marker(client: redis.Redis, project: str, **info: Any) -> None:
    value = {"written_at": datetime.now(timezone.utc).isoformat(), **info}
    client.set(marker_key(project), json.dumps(value, default=str))


def read_marker(client: redis.Redis, project: str) -> dict[str, Any] | None:
    raw = client.get(marker_key(project))
    return None if raw is None else json.loads(raw)


def missing_marker_reason(project: str) -> str:
    return (f"online store not materialized (marker key {marker_key(project).decode()} missing: Redis lost "
            f"its data or was never loaded); restore it with `{RESTORE_COMMAND}`")
