"""Read the service's served log (what was recommended, and the ranker's input rows) for a window.

The log is written by `serving.served_log.ServedLog`: parquet files under
`<log_dir>/date=YYYY-MM-DD/served-*.parquet`, one record per sampled request with
`request_id, timestamp, user_id, model_version, variant, device, cold_start, degraded, items,
scores, ranker_scores` and `features` (list<struct>: the ranker's input rows of the request).
JSON-lines files (`*.jsonl`, one such record per line, `features` a list of objects) are read too.

Only `_read_log_file` knows that format: everything else works on the two frames it returns
(`records`: one row per request; `rows`: one row per scored candidate, keyed by `request_id`). If
the serving log changes shape, that function is the one place to adapt.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.contracts import SERVED_LOG_FEATURES, SERVED_LOG_RECORD, SERVED_LOG_REQUIRED
from monitoring.errors import MonitoringInputError
from monitoring.window import TimeWindow

RECORD_COLUMNS = tuple(name for name in SERVED_LOG_RECORD.names if name != "ranker_scores")
REQUIRED_COLUMNS = SERVED_LOG_REQUIRED
LOG_SUFFIXES = (".parquet", ".jsonl")


@dataclass
class ServedLogs:
    records: pd.DataFrame  # one row per request
    rows: pd.DataFrame  # the ranker's input rows, one per scored candidate (request_id links them)
    window: TimeWindow
    files: list[Path] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # requests left out by a filter, by reason

    @property
    def n_requests(self) -> int:
        return len(self.records)


def log_files(log_dir: str | Path) -> list[Path]:
    log_dir = Path(log_dir)
    if not log_dir.exists():
        raise MonitoringInputError(
            f"no served log at {log_dir}: is the service running with logging on "
            f"(RECSYS_SERVING_LOG_SAMPLE_RATE > 0) and writing to this directory (--log-dir)?")
    files = sorted(p for p in log_dir.rglob("*") if p.is_file() and p.suffix in LOG_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise MonitoringInputError(f"no served-log files (*.parquet, *.jsonl) under {log_dir}")
    return files


def read_served_logs(log_dir: str | Path, window: TimeWindow, model_version: str | None = None,
                     include_degraded: bool = True, with_rows: bool = True) -> ServedLogs:
    """Every logged request with `window.start <= timestamp < window.end` (optionally one model
    version; optionally without degraded requests), and their ranker input rows."""
    files = log_files(log_dir)
    records, rows, seen = [], [], []
    for path in files:
        try:
            file_records, file_rows, first_last = _read_log_file(path, window, with_rows)
        except (OSError, ValueError, pa.ArrowException, json.JSONDecodeError) as error:
            raise MonitoringInputError(f"unreadable served-log file {path}: {error}") from error
        if first_last is not None:
            seen.append(first_last)
        if len(file_records):
            records.append(file_records)
            rows.append(file_rows)
    if not records:
        raise MonitoringInputError(_empty_window_message(log_dir, window, seen))
    with warnings.catch_warnings():  # all-null columns in some files (e.g. `variant`) are expected
        warnings.simplefilter("ignore", FutureWarning)
        records_df = pd.concat(records, ignore_index=True)
        rows_df = pd.concat([r for r in rows if len(r)], ignore_index=True) if any(len(r) for r in rows) else \
            pd.DataFrame({"request_id": pd.Series(dtype=object)})
    missing = [c for c in REQUIRED_COLUMNS if c not in records_df]
    if missing:
        raise MonitoringInputError(f"served log under {log_dir} lacks columns {missing}: not a served log?")
    for column in RECORD_COLUMNS:
        if column not in records_df:
            records_df[column] = None
    records_df["timestamp"] = pd.to_datetime(records_df["timestamp"], utc=True)
    records_df = records_df.drop_duplicates("request_id").sort_values("timestamp", kind="stable")

    dropped: dict[str, int] = {}
    keep = pd.Series(True, index=records_df.index)
    if model_version is not None:
        other = records_df["model_version"].astype(str) != model_version
        dropped["other_model_version"] = int(other.sum())
        keep &= ~other
    if not include_degraded:
        degraded = records_df["degraded"].fillna(False).astype(bool)
        dropped["degraded"] = int((degraded & keep).sum())
        keep &= ~degraded
    records_df = records_df[keep].reset_index(drop=True)
    if records_df.empty:
        raise MonitoringInputError(
            f"no served requests left in {window.label()} after filtering ({dropped}); "
            f"versions in the window: {sorted(map(str, pd.concat(records)['model_version'].unique()))}")
    if with_rows and "request_id" in rows_df:
        rows_df = rows_df[rows_df["request_id"].isin(set(records_df["request_id"]))].reset_index(drop=True)
        if "event_timestamp" in rows_df:
            rows_df["event_timestamp"] = pd.to_datetime(rows_df["event_timestamp"], utc=True)
    return ServedLogs(records_df, rows_df, window, files, dropped)


def without_degraded(logs: ServedLogs) -> ServedLogs:
    """The same logs without the requests served in degraded mode (missing features by design)."""
    degraded = logs.records["degraded"].fillna(False).astype(bool)
    records = logs.records[~degraded].reset_index(drop=True)
    rows = logs.rows[logs.rows["request_id"].isin(set(records["request_id"]))].reset_index(drop=True) \
        if "request_id" in logs.rows else logs.rows
    return ServedLogs(records, rows, logs.window, logs.files, {**logs.dropped, "degraded": int(degraded.sum())})


def recommendation_lists(records: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """One row per (request, recommended item): request_id, timestamp, user_id, model_version,
    variant, rank (1 = first), item_id, score; only the first `k` of each list when given."""
    base = records[["request_id", "timestamp", "user_id", "model_version", "variant", "items", "scores"]]
    lengths = base["items"].map(lambda v: 0 if v is None else len(v)).to_numpy()
    repeat = np.repeat(np.arange(len(base)), lengths)
    out = base.drop(columns=["items", "scores"]).iloc[repeat].reset_index(drop=True)
    out["rank"] = np.concatenate([np.arange(1, n + 1) for n in lengths]) if lengths.sum() else np.zeros(0, int)
    out["item_id"] = np.concatenate([np.asarray(v, dtype=np.int64) for v, n in zip(base["items"], lengths) if n]) \
        if lengths.sum() else np.zeros(0, np.int64)
    scores = [np.asarray(s if s is not None and len(s) == n else [np.nan] * n, dtype=float)
              for s, n in zip(base["scores"], lengths) if n]
    out["score"] = np.concatenate(scores) if scores else np.zeros(0)
    if k is not None:
        out = out[out["rank"] <= k].reset_index(drop=True)
    return out


def _empty_window_message(log_dir, window: TimeWindow, seen: list[tuple[pd.Timestamp, pd.Timestamp]]) -> str:
    if not seen:
        return f"no served requests in {window.label()}: the served log under {log_dir} is empty"
    first, last = min(s[0] for s in seen), max(s[1] for s in seen)
    return (f"no served requests in {window.label()}: the served log under {log_dir} covers "
            f"{first.isoformat()} .. {last.isoformat()}; choose a window inside it (--window/--start/--end)")


# ------------------------------------------------------------------------- the format, in one place


def _read_log_file(path: Path, window: TimeWindow,
                   with_rows: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, tuple | None]:
    """(records in the window, their ranker rows, (first, last) timestamp in the file or None).

    Parquet: the `ServedLog` layout (`features` is list<struct>, exploded with Arrow, no Python
    loop per row); row-group statistics skip files entirely outside the window. JSON lines: one
    record object per line, `features` a list of row objects."""
    start, end = pd.Timestamp(window.start), pd.Timestamp(window.end)
    if path.suffix == ".jsonl":
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            return pd.DataFrame(), pd.DataFrame(), None
        records = pd.DataFrame(lines)
        records["timestamp"] = pd.to_datetime(records["timestamp"], utc=True)
        first_last = (records["timestamp"].min(), records["timestamp"].max())
        records = records[(records["timestamp"] >= start) & (records["timestamp"] < end)].reset_index(drop=True)
        features = records.pop(SERVED_LOG_FEATURES) if SERVED_LOG_FEATURES in records else pd.Series([[]] * len(records))
        rows = [dict(row, request_id=rid) for rid, rs in zip(records["request_id"], features) for row in (rs or [])]
        return records, (pd.DataFrame(rows) if with_rows else pd.DataFrame()), first_last

    parquet = pq.ParquetFile(path)
    stats_range = _timestamp_range(parquet)
    if stats_range is not None and (stats_range[1] < start or stats_range[0] >= end):
        return pd.DataFrame(), pd.DataFrame(), stats_range
    columns = None if with_rows else [n for n in parquet.schema_arrow.names if n != SERVED_LOG_FEATURES]
    table = parquet.read(columns=columns)
    if table.num_rows == 0:
        return pd.DataFrame(), pd.DataFrame(), None
    stamps = table.column("timestamp")
    if not pa.types.is_timestamp(stamps.type):
        stamps = pc.cast(stamps, pa.timestamp("us", tz="UTC"))
    first_last = (pd.Timestamp(pc.min(stamps).as_py()), pd.Timestamp(pc.max(stamps).as_py()))
    first_last = tuple(t.tz_localize("UTC") if t.tzinfo is None else t for t in first_last)
    as_utc = pc.cast(stamps, pa.timestamp("us", tz="UTC")) if stamps.type.tz is None else stamps
    mask = pc.and_(pc.greater_equal(as_utc, pa.scalar(start.to_pydatetime(), pa.timestamp("us", tz="UTC"))),
                   pc.less(as_utc, pa.scalar(end.to_pydatetime(), pa.timestamp("us", tz="UTC"))))
    table = table.filter(mask)
    rows = pd.DataFrame()
    if with_rows and SERVED_LOG_FEATURES in table.column_names:
        features = table.column(SERVED_LOG_FEATURES).combine_chunks()
        flat = pc.list_flatten(features)
        if len(flat) and pa.types.is_struct(flat.type) and flat.type.num_fields:
            parents = pc.list_parent_indices(features).to_numpy()
            rows = pa.Table.from_struct_array(flat).to_pandas()
            rows["request_id"] = table.column("request_id").to_numpy(zero_copy_only=False)[parents]
        table = table.drop_columns([SERVED_LOG_FEATURES])
    return table.to_pandas(), rows, first_last


def _timestamp_range(parquet: pq.ParquetFile) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(min, max) request time from the row-group statistics, or None when they are missing."""
    try:
        index = parquet.schema_arrow.get_field_index("timestamp")
        metadata = parquet.metadata
        lows, highs = [], []
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(index).statistics
            if stats is None or not stats.has_min_max:
                return None
            lows.append(pd.Timestamp(stats.min))
            highs.append(pd.Timestamp(stats.max))
        if not lows:
            return None
        low, high = min(lows), max(highs)
        return (low.tz_localize("UTC") if low.tzinfo is None else low.tz_convert("UTC"),
                high.tz_localize("UTC") if high.tzinfo is None else high.tz_convert("UTC"))
    except (KeyError, ValueError, TypeError, IndexError):
        return None
