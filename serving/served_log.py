"""Sampled log of what was served, for monitoring (training/serving skew, drift, list quality).

One record per sampled request, in parquet files `<log_dir>/date=YYYY-MM-DD/served-<time>-<id>.parquet`:

    request_id, timestamp (UTC), user_id, model_version, variant (the A/B variant; null without
    an experiment), device, cold_start, degraded, items (list<int64>, the returned list, best first),
    scores (list<double>, the returned scores), ranker_scores (list<double>),
    features (list<struct>: the ranker's input rows of the request, one per scored candidate, with
    the columns of the training pipeline's ranking rows: request/retrieval columns + the `ranking`
    service's `<view>__<feature>` columns)

`pd.read_parquet(log_dir)` reads them all; `pd.DataFrame(record["features"])` is a request's rows.
Requests never wait on the disk: `submit` puts (record, rows) on a bounded queue and returns; a
background thread converts and writes a file per flush period. A full queue drops the record
(counted in `recsys_served_log_records_total{outcome="dropped"}`) rather than slowing requests.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.contracts import SERVED_LOG_FEATURES, SERVED_LOG_FILE_PREFIX, SERVED_LOG_RECORD
from serving.redact import get_logger

log = get_logger("serving.served_log")

_STOP = object()


class ServedLog:
    def __init__(self, directory: Path, sample_rate: float, queue_size: int = 1_000, flush_s: float = 2.0,
                 max_rows: int | None = None, count: Callable[[str, int], None] | None = None,
                 seed: int | None = None) -> None:
        self.directory = Path(directory)
        self.sample_rate = sample_rate
        self.flush_s = flush_s
        self.max_rows = max_rows
        self.count = count or (lambda outcome, n: None)
        self._random = random.Random(seed)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self.files_written = 0

    def sampled(self) -> bool:
        return self.sample_rate > 0 and (self.sample_rate >= 1 or self._random.random() < self.sample_rate)

    def submit(self, record: dict[str, Any], rows: pd.DataFrame | None) -> bool:
        """Queue one request's record and its ranker rows (not copied: callers must not mutate them)."""
        try:
            self._queue.put_nowait((record, rows))
        except queue.Full:
            self.count("dropped", 1)
            return False
        self.count("queued", 1)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="served-log-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout)
        self._thread = None

    def _run(self) -> None:
        batch: list[tuple[dict, pd.DataFrame | None]] = []
        deadline = time.monotonic() + self.flush_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._write(batch)
                return
            if item is not None:
                batch.append(item)
            if time.monotonic() >= deadline:
                self._write(batch)
                batch = []
                deadline = time.monotonic() + self.flush_s

    def _write(self, batch: list[tuple[dict, pd.DataFrame | None]]) -> None:
        if not batch:
            return
        try:
            table = self.to_table(batch)
            now = datetime.now(timezone.utc)
            path = self.directory / f"date={now:%Y-%m-%d}" / f"{SERVED_LOG_FILE_PREFIX}{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            pq.write_table(table, tmp)
            tmp.replace(path)  # readers never see a half-written file
            self.files_written += 1
            self.count("written", len(batch))
        except Exception:  # noqa: BLE001 - monitoring must never take serving down
            log.exception("could not write %d served-log records", len(batch))
            self.count("failed", len(batch))

    def to_table(self, batch: list[tuple[dict, pd.DataFrame | None]]) -> pa.Table:
        records = pa.Table.from_pylist([record for record, _ in batch], schema=SERVED_LOG_RECORD)
        frames = []
        for _, rows in batch:
            rows = rows if rows is not None else pd.DataFrame()
            if self.max_rows is not None:
                rows = rows.head(self.max_rows)
            frames.append(pa.Table.from_pandas(rows, preserve_index=False))
        features = pa.concat_tables(frames, promote_options="permissive") if frames else pa.table({})
        offsets = pa.array([0, *pd.Series([f.num_rows for f in frames]).cumsum().tolist()], type=pa.int32())
        # Parquet cannot store a struct without fields: a batch of requests without ranker rows
        # (all cold-start fallbacks or degraded) gets empty lists of a one-field struct.
        structs = features.to_struct_array().combine_chunks() if features.num_columns else \
            pa.array([], type=pa.struct([pa.field("item_id", pa.int64())]))
        return records.append_column(SERVED_LOG_FEATURES, pa.ListArray.from_arrays(offsets, structs))
