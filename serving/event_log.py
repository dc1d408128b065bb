"""The serving side of the raw event log: group commits of durable parquet files.

Every `POST /events` used to write its own parquet file: thousands of tiny files a day for the
Spark jobs to list and open. Here requests hand their validated events to one writer thread per
process, which waits `group_wait_s` for more, then writes everything queued as one file per event
date (`events/event_date=YYYY-MM-DD/serving-<time>-<id>.parquet`, the raw layout the feature jobs
read), each fsync'd and renamed into place (and its directory fsync'd) before any of those
requests is answered. A failed write fails every request of its group; none is acknowledged.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from core.schema import EVENT_DATE_COLUMN, event_dates, write_events_partitioned
from serving.redact import get_logger

log = get_logger("serving.event_log")


class EventLog:
    def __init__(self, events_dir: Path, group_wait_s: float = 0.002, max_group_events: int = 50_000) -> None:
        self.events_dir = Path(events_dir)
        self.group_wait_s = group_wait_s
        self.max_group_events = max_group_events
        self.groups_written = 0
        self._queue: queue.Queue[tuple[pa.Table, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="event-log-writer", daemon=True)
        self._thread.start()

    def append(self, table: pa.Table, timeout_s: float = 30.0) -> list[str]:
        """Write `table` (valid EVENTS_SCHEMA rows) durably; the files holding them."""
        done: Future = Future()
        self._queue.put((table, done))
        return done.result(timeout=timeout_s)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = self._collect(first)
            self._write(group)
            if group[-1] is None:
                return

    def _collect(self, first: tuple[pa.Table, Future]) -> list:
        """`first` plus what arrives within `group_wait_s`, up to `max_group_events` events."""
        group, events = [first], first[0].num_rows
        deadline = time.monotonic() + self.group_wait_s
        while events < self.max_group_events:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic())) if self.group_wait_s else \
                    self._queue.get_nowait()
            except queue.Empty:
                break
            group.append(item)
            if item is None:
                break
            events += item[0].num_rows
        return group

    def _write(self, group: list) -> None:
        requests = [item for item in group if item is not None]
        part = f"serving-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}"
        try:
            files = write_events_partitioned(pa.concat_tables([t for t, _ in requests]), self.events_dir, part,
                                             durable=True)
        except Exception as error:  # noqa: BLE001 - handed to every request of the group
            log.exception("event log write failed (%d requests)", len(requests))
            for _, done in requests:
                done.set_exception(error)
            return
        self.groups_written += 1
        for table, done in requests:
            days = {f"{EVENT_DATE_COLUMN}={day}" for day in event_dates(table.column("event_timestamp"))}
            done.set_result([str(f) for f in files if f.parent.name in days])
