"""Spark sources over the feature tables written by `python -m training features`, plus the push
source through which the serving layer streams real-time user activity."""

from feast import PushSource
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

from core.settings import get_settings

_features_dir = get_settings().features_dir


def _daily_source(table: str, description: str) -> SparkSource:
    return SparkSource(
        name=f"{table}_source",
        path=str(_features_dir / table),
        file_format="parquet",
        timestamp_field="event_timestamp",
        date_partition_column="snapshot_date",
        description=description,
    )


def _static_source(table: str, description: str) -> SparkSource:
    return SparkSource(
        name=f"{table}_source",
        path=str(_features_dir / table),
        file_format="parquet",
        timestamp_field="event_timestamp",
        description=description,
    )


user_daily_source = _daily_source("user_daily", "Daily user behaviour snapshots")
item_daily_source = _daily_source("item_daily", "Daily item popularity snapshots")
user_category_source = _daily_source("user_category", "User x category interactions over 30 days")
user_recent_history_source = _daily_source("user_recent_history", "Last items per user per active day")
user_profile_source = _static_source("user_profile", "User demographics, known from sign-up")
item_profile_source = _static_source("item_profile", "Item catalog attributes, known from creation")

user_activity_push_source = PushSource(
    name="user_activity_push",
    batch_source=user_recent_history_source,
    description="Real-time recent history pushed by the serving layer on each event",
)
