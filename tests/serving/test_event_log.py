"""The event log's group commits: concurrent requests share files, every event lands once, and a
failed write acknowledges nobody."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from core.schema import EVENTS_SCHEMA
from serving.event_log import EventLog

START = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def request(i: int, n: int = 3) -> pa.Table:
    return pa.Table.from_pylist([{"user_id": i, "item_id": 100 + j, "event_type": "view", "rating": None,
                                  "event_timestamp": START + timedelta(seconds=j), "device": "mobile"}
                                 for j in range(n)], schema=EVENTS_SCHEMA)


def test_concurrent_requests_share_files_and_lose_nothing(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events", group_wait_s=0.05)
    answers: dict[int, list[str]] = {}
    barrier = threading.Barrier(40)

    def post(i: int) -> None:
        barrier.wait()
        answers[i] = log.append(request(i))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()

    files = sorted((tmp_path / "events").rglob("*.parquet"))
    assert 1 <= len(files) <= 10, len(files)  # 40 requests, a handful of group commits
    assert log.groups_written == len(files)
    assert all(Path(answers[i][0]) in files and "event_date=2026-03-01" in answers[i][0] for i in range(40))
    logged = ds.dataset(tmp_path / "events", format="parquet", partitioning=None).to_table()
    assert logged.num_rows == 120
    assert sorted(set(logged.column("user_id").to_pylist())) == list(range(40))
    assert not [p for p in (tmp_path / "events").rglob(".*")]  # no temp file left


def test_a_failed_write_fails_the_request(tmp_path: Path) -> None:
    blocker = tmp_path / "events"
    blocker.write_text("a file where the log's folder should be")
    log = EventLog(blocker, group_wait_s=0.0)

    with pytest.raises(OSError):
        log.append(request(1))
    log.close()
