"""A marker key that says the online store holds a materialization.

Redis without persistence comes back empty after a restart, and an empty store answers every
read: all users look cold. Materialization (`feast_ext.materialize`) writes this key after a
run whose views all succeeded; serving's health check reads it (a missing marker: the store was
lost, `/readyz` 503); `python -m training restore-online` re-materializes and writes it again.

The key ends with the project name, as Feast's own keys do, so `feast teardown` (and
`feast_repo.delete_online_rows`) removes it with the project's rows.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import redis

RESTORE_COMMAND = "python -m training restore-online"


def marker_key(project: str) -> bytes:
    return f"recsys:online_materialized:{project}".encode()


def write_marker(client: redis.Redis, project: str, **info: Any) -> None:
    value = {"written_at": datetime.now(timezone.utc).isoformat(), **info}
    client.set(marker_key(project), json.dumps(value, default=str))


def read_marker(client: redis.Redis, project: str) -> dict[str, Any] | None:
    raw = client.get(marker_key(project))
    return None if raw is None else json.loads(raw)


def missing_marker_reason(project: str) -> str:
    return (f"online store not materialized (marker key {marker_key(project).decode()} missing: Redis lost "
            f"its data or was never loaded); restore it with `{RESTORE_COMMAND}`")
