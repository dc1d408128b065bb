"""Run all feature jobs for a range of snapshot dates and write the tables Feast reads.

Tables partitioned by `snapshot_date` are written with dynamic partition overwrite: re-running a
day replaces that day's partition and never duplicates rows.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from tqdm.auto import tqdm

from core.atomic import replace_directory
from core.schema import SchemaError
from core.settings import Settings
from training.features.affinity import build_user_category
from training.features.item_features import build_item_daily, build_item_profile
from training.features.raw_io import read_events, read_items, read_users
from training.features.user_features import (
    build_user_daily,
    build_user_profile,
    build_user_recent_history,
)
from training.features.windows import event_read_start

# Feature tables under settings.features_dir; Feast sources point at the same names.
PARTITIONED_TABLES = ("user_daily", "item_daily", "user_category", "user_recent_history")
STATIC_TABLES = ("user_profile", "item_profile")


@dataclass
class PipelineResult:
    first_snapshot: date
    last_snapshot: date
    rows: dict[str, int] = field(default_factory=dict)


def event_date_range(raw_dir: Path) -> tuple[date, date]:
    """First and last event date, from the partition directory names (no data read)."""
    days = sorted(
        date.fromisoformat(m.group(1))
        for p in (raw_dir / "events").glob("event_date=*")
        if (m := re.fullmatch(r"event_date=(\d{4}-\d{2}-\d{2})", p.name))
    )
    if not days:
        raise SchemaError(str(raw_dir / "events"), "no event_date=YYYY-MM-DD partitions: generate or ingest events first")
    return days[0], days[-1]


def default_snapshot_range(raw_dir: Path) -> tuple[date, date]:
    first_day, last_day = event_date_range(raw_dir)
    return first_day + timedelta(days=1), last_day + timedelta(days=1)


def _write_partitioned(df: DataFrame, path: Path) -> int:
    df.write.mode("overwrite").partitionBy("snapshot_date").parquet(str(path))
    return df.sparkSession.read.parquet(str(path)).count()


def _write_replacing(df: DataFrame, path: Path) -> int:
    """Write a whole table to a temp dir, then swap it in, so readers never see half a table."""
    staging = path.with_name(f".{path.name}.staging-{uuid.uuid4().hex}")  # Spark creates it
    df.write.mode("overwrite").parquet(str(staging))
    replace_directory(staging, path)
    return df.sparkSession.read.parquet(str(path)).count()


def run_feature_pipeline(spark: SparkSession, settings: Settings, first_snapshot: date | None = None,
                         last_snapshot: date | None = None, progress: bool = True) -> PipelineResult:
    default_first, default_last = default_snapshot_range(settings.raw_dir)
    first_snapshot = first_snapshot or default_first
    last_snapshot = last_snapshot or default_last
    if first_snapshot > last_snapshot:
        raise ValueError(f"first snapshot {first_snapshot} is after last snapshot {last_snapshot}")
    windows = tuple(settings.windows_days)
    read_start = event_read_start(first_snapshot, max(windows))

    events = read_events(spark, settings.raw_dir, read_start, last_snapshot, settings.quarantine_dir)
    events = events.persist(StorageLevel.MEMORY_AND_DISK)
    users, items = read_users(spark, settings.raw_dir), read_items(spark, settings.raw_dir)

    jobs = {
        "user_daily": lambda: build_user_daily(events, users, first_snapshot, last_snapshot, windows),
        "item_daily": lambda: build_item_daily(events, items, first_snapshot, last_snapshot, read_start,
                                               windows, settings.new_item_days),
        "user_category": lambda: build_user_category(events, items, first_snapshot, last_snapshot, windows),
        "user_recent_history": lambda: build_user_recent_history(
            events, first_snapshot, last_snapshot, settings.recent_history_length, max(windows),
            settings.recent_history_granularity),
        "user_profile": lambda: build_user_profile(users),
        "item_profile": lambda: build_item_profile(items, tuple(settings.price_bucket_edges)),
    }
    result = PipelineResult(first_snapshot, last_snapshot)
    for name in tqdm(jobs, desc="feature jobs", disable=not progress):
        path = settings.features_dir / name
        writer = _write_partitioned if name in PARTITIONED_TABLES else _write_replacing
        result.rows[name] = writer(jobs[name](), path)
    events.unpersist()
    return result
