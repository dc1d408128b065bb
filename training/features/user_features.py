"""User snapshots: behaviour over windows, rates, recency, tenure; and user profiles."""

from __future__ import annotations

from datetime import date, timedelta

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from core.contracts import user_daily_feature_names
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


def build_user_daily(events: DataFrame, users: DataFrame, first_snapshot: date,
                     last_snapshot: date, windows: tuple[int, ...]) -> DataFrame:
    """One row per user and snapshot day while the user had events in the longest window.

    The row stamped D is computed from events on days < D. After the user's last event the rows
    go on for `max(windows)` days, the last of them all-zero counts, then stop.
    """
    longest = max(windows)
    daily = daily_counts(events, ["user_id"])
    last_grid_day = last_snapshot - timedelta(days=1)
    spans = daily.groupBy("user_id").agg(
        F.min("day").alias("first_day"),
        F.least(F.date_add(F.max("day"), longest), F.lit(last_grid_day)).alias("last_day"),
    )
    grid = dense_grid(spans, "user_id", "first_day", "last_day")
    filled = grid.join(daily, ["user_id", "day"], "left").fillna(
        0, subset=[*EVENT_TYPES, "events", "weighted_events", "rating_sum", "rating_count"]
    ).withColumn("active", (F.col("events") > 0).cast("long"))

    columns = [rolling(t, w, "user_id").alias(f"{t}_count_{w}d") for w in windows for t in EVENT_TYPES]
    long_window = {c: rolling(c, longest, "user_id") for c in
                   ("view", "click", "purchase", "weighted_events", "active", "rating_sum", "rating_count")}
    last_seen = rolling("last_event_ts", longest + 1, "user_id", F.max)
    snap = filled.select(
        "user_id", "day", *columns,
        long_window["weighted_events"].alias(f"weighted_events_{longest}d"),
        long_window["active"].alias(f"active_days_{longest}d"),
        safe_ratio(long_window["click"], long_window["view"]).alias(f"ctr_{longest}d"),
        safe_ratio(long_window["purchase"], long_window["view"]).alias(f"conversion_rate_{longest}d"),
        F.when(long_window["rating_count"] > 0, long_window["rating_sum"] / long_window["rating_count"])
        .alias(f"avg_rating_{longest}d"),
        last_seen.alias("last_seen"),
    ).where(in_snapshot_range(first_snapshot, last_snapshot))

    ts = snapshot_timestamp(F.col("day"))
    return (
        snap.join(users.select("user_id", "signup_timestamp"), "user_id", "left")
        .withColumn("event_timestamp", ts)
        .withColumn("days_since_last_event",
                    (F.unix_timestamp("event_timestamp") - F.unix_timestamp("last_seen")) / SECONDS_PER_DAY)
        .withColumn("tenure_days", F.greatest(F.lit(0.0), (
            F.unix_timestamp("event_timestamp") - F.unix_timestamp("signup_timestamp")) / SECONDS_PER_DAY))
        .withColumn("snapshot_date", F.date_add("day", 1))
        .select("user_id", "event_timestamp", *user_daily_feature_names(windows), "snapshot_date")
    )


HISTORY_GRANULARITIES = ("day", "event")


def build_user_recent_history(events: DataFrame, first_snapshot: date, last_snapshot: date,
                              length: int, max_age_days: int, granularity: str = "day") -> DataFrame:
    """A user's last `length` items (most recent first) of the `max_age_days` days up to then.

    granularity "day": one row per day the user was active, known from the next midnight.
    granularity "event": one row per moment the user acted, known 1 microsecond after it (so a
    request at exactly that moment does not see it), partitioned by the event's day: the offline
    twin of the history serving pushes on every event, for requests made in the middle of a
    session (e.g. MovieLens users, who rate in one sitting).
    """
    if granularity not in HISTORY_GRANULARITIES:
        raise ValueError(f"recent history granularity must be one of {HISTORY_GRANULARITIES}, got {granularity!r}")
    by_time = Window.partitionBy("user_id").orderBy("event_timestamp", "item_id").rowsBetween(-(length - 1), 0)
    with_history = (events.withColumn("day", F.to_date("event_timestamp"))
                    .withColumn("history", F.collect_list(F.struct("event_timestamp", "item_id")).over(by_time)))
    if granularity == "event":
        return _event_history(with_history, first_snapshot, last_snapshot, max_age_days)
    last_of_day = Window.partitionBy("user_id", "day").orderBy(F.col("event_timestamp").desc(), F.col("item_id").desc())
    recent = (
        with_history.withColumn("rank_in_day", F.row_number().over(last_of_day))
        .where((F.col("rank_in_day") == 1) & in_snapshot_range(first_snapshot, last_snapshot))
    )
    horizon = F.to_timestamp(F.date_sub("day", max_age_days - 1))
    kept = F.filter("history", lambda h: h["event_timestamp"] >= horizon)
    return recent.select(
        "user_id",
        snapshot_timestamp(F.col("day")).alias("event_timestamp"),
        F.reverse(F.transform(kept, lambda h: h["item_id"])).alias("recent_item_ids"),
        F.col("event_timestamp").alias("last_event_timestamp"),
        F.date_add("day", 1).alias("snapshot_date"),
    )


def _event_history(with_history: DataFrame, first_snapshot: date, last_snapshot: date,
                   max_age_days: int) -> DataFrame:
    """One row per (user, event time). A run for snapshots [first, last] reads the events of days
    [first - 1, last - 1] (as the daily rows do) and owns exactly those days' partitions, so
    incremental runs neither overlap nor leave gaps."""
    last_at_moment = Window.partitionBy("user_id", "event_timestamp").orderBy(F.col("item_id").desc())
    recent = (
        with_history.withColumn("rank_at_moment", F.row_number().over(last_at_moment))
        .where((F.col("rank_at_moment") == 1) & in_snapshot_range(first_snapshot, last_snapshot))
    )
    horizon = F.col("event_timestamp") - F.expr(f"INTERVAL {int(max_age_days)} DAYS")
    kept = F.filter("history", lambda h: h["event_timestamp"] >= horizon)
    return recent.select(
        "user_id",
        (F.col("event_timestamp") + F.expr("INTERVAL 1 MICROSECOND")).alias("event_timestamp"),
        F.reverse(F.transform(kept, lambda h: h["item_id"])).alias("recent_item_ids"),
        F.col("event_timestamp").alias("last_event_timestamp"),
        F.col("day").alias("snapshot_date"),
    )


def build_user_profile(users: DataFrame) -> DataFrame:
    """Demographics, known from sign-up."""
    return users.select(
        "user_id", F.col("signup_timestamp").alias("event_timestamp"), "age", "gender", "occupation",
    )
