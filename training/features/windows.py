"""Shared Spark building blocks for windowed daily snapshots."""

from __future__ import annotations

from datetime import date, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from core.schema import EVENT_GAIN, EVENT_TYPES

SECONDS_PER_DAY = 86_400.0


def event_read_start(first_snapshot: date, max_window_days: int) -> date:
    """First event date a run needs so the snapshots from `first_snapshot` on are exact.

    A snapshot stamped D covers days [D - w, D - 1]; recency looks one day further back so the
    last all-zero row of an inactive entity still knows when it was last seen.
    """
    return first_snapshot - timedelta(days=max_window_days + 1)


def snapshot_timestamp(day: Column) -> Column:
    """A snapshot built from days <= `day` becomes known at the next midnight (UTC)."""
    return F.to_timestamp(F.date_add(day, 1))


def with_day(events: DataFrame) -> DataFrame:
    return events.withColumn("day", F.to_date("event_timestamp"))


def daily_counts(events: DataFrame, keys: list[str]) -> DataFrame:
    """One row per key and day: counts per event type, gain-weighted count, ratings, last time."""
    per_type = [F.sum((F.col("event_type") == t).cast("long")).alias(t) for t in EVENT_TYPES]
    gain = F.create_map(*[x for t, g in EVENT_GAIN.items() for x in (F.lit(t), F.lit(float(g)))])
    return with_day(events).groupBy(*keys, "day").agg(
        *per_type,
        F.count(F.lit(1)).alias("events"),
        F.sum(gain[F.col("event_type")]).alias("weighted_events"),
        F.sum("rating").alias("rating_sum"),
        F.count("rating").alias("rating_count"),
        F.max("event_timestamp").alias("last_event_ts"),
    )


def dense_grid(spans: DataFrame, key: str, first_col: str, last_col: str) -> DataFrame:
    """Every (key, day) with first <= day <= last, so row-based windows are day-based windows."""
    return spans.where(F.col(first_col) <= F.col(last_col)).select(
        key, F.explode(F.sequence(F.col(first_col), F.col(last_col))).alias("day")
    )


def rolling(column: str, days: int, key: str, fn=F.sum) -> Column:
    window = Window.partitionBy(key).orderBy("day").rowsBetween(-(days - 1), 0)
    return fn(F.col(column)).over(window)


def safe_ratio(numerator: Column, denominator: Column) -> Column:
    return F.when(denominator > 0, numerator / denominator).otherwise(F.lit(0.0))


def in_snapshot_range(first_snapshot: date, last_snapshot: date) -> Column:
    snapshot_day = F.date_add("day", 1)
    return snapshot_day.between(F.lit(first_snapshot), F.lit(last_snapshot))
