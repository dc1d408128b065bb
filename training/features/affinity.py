"""User x category affinity over the longest window, one row each time it changes."""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from core.contracts import affinity_feature_names
from training.features.windows import daily_counts, in_snapshot_range, snapshot_timestamp

KEYS = ["user_id", "category"]



def build_user_category(events: DataFrame, items: DataFrame, first_snapshot: date,
                        last_snapshot: date, windows: tuple[int, ...]) -> DataFrame:
    """Gain-weighted interactions of a user with a category over the last `max(windows)` days.

    A pair's count only changes on a day it had events (entering the window) or `max(windows)`
    days later (leaving it), so rows are written on those days only; the share of a category is
    this count over the user's `weighted_events_<w>d` at the same time (see feature assembly).
    """
    longest = max(windows)
    with_category = events.join(F.broadcast(items.select("item_id", "category")), "item_id")
    pair_daily = daily_counts(with_category, KEYS).select(*KEYS, "day", "weighted_events", "events")
    exits = pair_daily.select(*KEYS, F.date_add("day", longest).alias("day"),
                              F.lit(0.0).alias("weighted_events"), F.lit(0).cast("long").alias("events"))
    changes = pair_daily.unionByName(exits).groupBy(*KEYS, "day").agg(
        F.sum("weighted_events").alias("weighted_events"), F.sum("events").alias("events"))
    window = (Window.partitionBy(*KEYS).orderBy(F.datediff("day", F.lit(date(1970, 1, 1))))
              .rangeBetween(-(longest - 1), 0))
    names = affinity_feature_names(windows)
    return (
        changes.select(
            *KEYS, "day",
            F.sum("weighted_events").over(window).alias(names[0]),
            F.sum("events").over(window).alias(names[1]),
        )
        .where(in_snapshot_range(first_snapshot, last_snapshot))
        .select(*KEYS, snapshot_timestamp(F.col("day")).alias("event_timestamp"), *names,
                F.date_add("day", 1).alias("snapshot_date"))
    )
