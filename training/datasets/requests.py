"""Labelled requests built in Spark from raw events.

Two kinds, chosen by `TrainConfig.request_mode`:

* "daily" (`daily_requests`): a request is (user, request time T at a UTC midnight).
* "session" (`session_requests`): a request is made in the middle of a user's day, just before
  the last `label_share` of that day's events, which are its positives; the features at that time
  (recent history at event granularity) hold the day's earlier events. This is what a service
  sees when a user asks for recommendations mid-session (MovieLens users rate in one sitting).

For daily requests: Its positives are the items the user
interacted with in the label window [T, T + window), graded by the strongest event type
(purchase 4 > add_to_cart 3 > click 2 > view 1). Its context (device) is the device of the user's
first event in the window, which a live request would carry.
"""

from __future__ import annotations

from datetime import date, timedelta

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from core.schema import EVENT_GAIN


def graded_label() -> F.Column:
    gains = F.create_map(*[x for t, g in EVENT_GAIN.items() for x in (F.lit(t), F.lit(g))])
    return gains[F.col("event_type")]


def daily_requests(events: DataFrame, start: date, end: date, label_days: int = 1) -> DataFrame:
    """One request per user and day with interactions in [start, end), labelled by the user's
    interactions in the `label_days` days from the request time (never at or after `end`).

    Columns: request_id, user_id, event_timestamp (T), device, item_id, label.
    """
    if label_days < 1:
        raise ValueError(f"label_days must be at least 1, got {label_days}")
    window_events = events.where(
        (F.col("event_timestamp") >= F.lit(start)) & (F.col("event_timestamp") < F.lit(end))
    ).withColumn("request_day", F.to_date("event_timestamp"))
    if label_days > 1:
        days = window_events.select("user_id", "request_day").distinct()
        later = window_events.withColumnRenamed("request_day", "event_day")
        window_events = (
            days.join(later, "user_id")
            .where((F.col("event_day") >= F.col("request_day"))
                   & (F.col("event_day") < F.date_add(F.col("request_day"), label_days)))
            .drop("event_day")
        )
    return _label(window_events, ["user_id", "request_day"])


def session_requests(events: DataFrame, start: date, end: date, label_shares: float | tuple[float, ...],
                     label_days: int = 1) -> DataFrame:
    """Requests in the middle of users' days in [start, end): for each share s and each user-day
    with at least two events, a request at the time of the first of the day's last ceil(s * n)
    events (ordered by time, then item id), labelled by those events and, with `label_days` > 1,
    by the user's events of the next `label_days - 1` days (never at or after `end`). Several
    shares give several requests per day (request ids end in the share's index). Same columns as
    `daily_requests`."""
    if label_days < 1:
        raise ValueError(f"label_days must be at least 1, got {label_days}")
    shares = (label_shares,) if isinstance(label_shares, (int, float)) else tuple(label_shares)
    if not shares or not all(0 < share < 1 for share in shares):
        raise ValueError(f"label shares must be in (0, 1), got {label_shares}")
    day = ["user_id", "request_day"]
    order = Window.partitionBy(*day).orderBy("event_timestamp", "item_id")
    ranked = (
        events.where((F.col("event_timestamp") >= F.lit(start)) & (F.col("event_timestamp") < F.lit(end)))
        .withColumn("request_day", F.to_date("event_timestamp"))
        .withColumn("position", F.row_number().over(order))
        .withColumn("n", F.count(F.lit(1)).over(Window.partitionBy(*day)))
        .where(F.col("n") >= 2)
    )
    per_share = [
        ranked.withColumn("cut", F.lit(index))
        .where(F.col("position") >= F.col("n") - F.ceil(F.col("n") * F.lit(share)) + 1)
        for index, share in enumerate(shares)
    ]
    labelled = per_share[0]
    for frame in per_share[1:]:
        labelled = labelled.unionByName(frame)
    request = [*day, "cut"]
    labelled = labelled.withColumn("request_time", F.min("event_timestamp").over(Window.partitionBy(*request)))
    first_event = Window.partitionBy(*request).orderBy("event_timestamp", "item_id")
    device = (labelled.withColumn("rank", F.row_number().over(first_event))
              .where(F.col("rank") == 1).select(*request, "device"))
    label_events = labelled.select(*request, "request_time", "item_id", "event_type")
    if label_days > 1:
        later = (events.where(F.col("event_timestamp") < F.lit(end))
                 .select("user_id", "item_id", "event_type", F.to_date("event_timestamp").alias("event_day")))
        following = (label_events.select(*request, "request_time").distinct().join(later, "user_id")
                     .where((F.col("event_day") > F.col("request_day"))
                            & (F.col("event_day") < F.date_add("request_day", label_days))))
        label_events = label_events.unionByName(following.select(*request, "request_time", "item_id", "event_type"))
    labels = label_events.groupBy(*request, "request_time", "item_id").agg(F.max(graded_label()).alias("label"))
    return (
        labels.join(device, request)
        .withColumn("event_timestamp", F.col("request_time"))
        .withColumn("request_id", F.concat_ws(":", F.col("user_id").cast("string"),
                                              F.date_format("request_day", "yyyyMMdd"),
                                              F.concat(F.lit("s"), F.col("cut").cast("string"))))
        .select("request_id", "user_id", "event_timestamp", "device", "item_id", "label")
    )


def window_requests(events: DataFrame, request_day: date, end: date) -> DataFrame:
    """One request per user at `request_day`, labelled by everything in [request_day, end)."""
    window_events = events.where(
        (F.col("event_timestamp") >= F.lit(request_day)) & (F.col("event_timestamp") < F.lit(end))
    ).withColumn("request_day", F.lit(request_day))
    return _label(window_events, ["user_id", "request_day"])


def _label(window_events: DataFrame, request_keys: list[str]) -> DataFrame:
    first_event = Window.partitionBy(*request_keys).orderBy("event_timestamp", "item_id")
    device = (window_events.withColumn("rank", F.row_number().over(first_event))
              .where(F.col("rank") == 1).select(*request_keys, "device"))
    labels = window_events.groupBy(*request_keys, "item_id").agg(F.max(graded_label()).alias("label"))
    return (
        labels.join(device, request_keys)
        .withColumn("event_timestamp", F.to_timestamp("request_day"))
        .withColumn("request_id", F.concat_ws(":", F.col("user_id").cast("string"),
                                              F.date_format("request_day", "yyyyMMdd")))
        .select("request_id", "user_id", "event_timestamp", "device", "item_id", "label")
    )


def sample_requests(requests: DataFrame, max_requests: int, seed: int) -> DataFrame:
    """Keep at most `max_requests` whole requests, chosen by a seeded hash (deterministic)."""
    ids = requests.select("request_id").distinct()
    ranked = ids.withColumn("order", F.xxhash64("request_id", F.lit(seed)))
    keep = ranked.orderBy("order").limit(max_requests).select("request_id")
    return requests.join(keep, "request_id")


def history_before(events: DataFrame, end: date) -> DataFrame:
    """Distinct (user_id, item_id) interacted with before `end` (excluded from candidates)."""
    return events.where(F.col("event_timestamp") < F.lit(end)).select("user_id", "item_id").distinct()


def day_after(day: date) -> date:
    return day + timedelta(days=1)
