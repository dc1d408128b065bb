"""Item snapshots: popularity over windows, rates, age; and item profiles."""

from __future__ import annotations

from datetime import date, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from core.contracts import item_daily_feature_names
from core.schema import EVENT_TYPES
from training.features.windows import (
    SECONDS_PER_DAY,
    daily_counts,
    dense_grid,
    in_snapshot_range,
    rolling,
    safe_ratio,
    snapshot_timestamp,
)


def build_item_daily(events: DataFrame, items: DataFrame, first_snapshot: date, last_snapshot: date,
                     read_start: date, windows: tuple[int, ...], new_item_days: int) -> DataFrame:
    """One row per existing item and snapshot day (also for items nobody touched yet)."""
    longest = max(windows)
    daily = daily_counts(events, ["item_id"])
    spans = items.select(
        "item_id",
        F.greatest(F.to_date("created_timestamp"), F.lit(read_start)).alias("first_day"),
        F.lit(last_snapshot - timedelta(days=1)).alias("last_day"),
    )
    filled = dense_grid(spans, "item_id", "first_day", "last_day").join(
        daily, ["item_id", "day"], "left"
    ).fillna(0, subset=[*EVENT_TYPES, "events", "rating_sum", "rating_count"])

    popularity = []
    for w in windows:
        count = rolling("events", w, "item_id")
        popularity += [count.alias(f"popularity_{w}d"), F.log1p(count).alias(f"log_popularity_{w}d")]
    long_window = {c: rolling(c, longest, "item_id") for c in
                   ("view", "click", "purchase", "rating_sum", "rating_count")}
    snap = filled.select(
        "item_id", "day", *popularity,
        long_window["purchase"].alias(f"purchase_count_{longest}d"),
        safe_ratio(long_window["click"], long_window["view"]).alias(f"ctr_{longest}d"),
        safe_ratio(long_window["purchase"], long_window["view"]).alias(f"conversion_rate_{longest}d"),
        F.when(long_window["rating_count"] > 0, long_window["rating_sum"] / long_window["rating_count"])
        .alias(f"avg_rating_{longest}d"),
    ).where(in_snapshot_range(first_snapshot, last_snapshot))

    age_days = (F.unix_timestamp("event_timestamp") - F.unix_timestamp("created_timestamp")) / SECONDS_PER_DAY
    return (
        snap.join(items.select("item_id", "created_timestamp"), "item_id")
        .withColumn("event_timestamp", snapshot_timestamp(F.col("day")))
        .withColumn("age_days", F.greatest(F.lit(0.0), age_days))
        .withColumn("is_new", (F.col("age_days") < new_item_days).cast("long"))
        .withColumn("snapshot_date", F.date_add("day", 1))
        .select("item_id", "event_timestamp", *item_daily_feature_names(windows), "snapshot_date")
    )


def price_bucket(price: F.Column, edges: tuple[float, ...]) -> F.Column:
    bucket = F.lit(len(edges))
    for index, edge in reversed(list(enumerate(edges))):
        bucket = F.when(price < edge, F.lit(index)).otherwise(bucket)
    return bucket.cast("long")


def build_item_profile(items: DataFrame, price_edges: tuple[float, ...]) -> DataFrame:
    """Catalog attributes, known from the item's creation."""
    return items.select(
        "item_id", F.col("created_timestamp").alias("event_timestamp"),
        F.col("category").alias("item_category"), "price",
        price_bucket(F.col("price"), price_edges).alias("price_bucket"), "title",
    )
