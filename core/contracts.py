"""Names every stage agrees on: feature services, feature-table columns, the served-log schema.

Defined here once; the Feast definitions (`feature_repo/`), the Spark feature jobs, training,
serving and monitoring import them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from core.schema import EVENT_TYPES

if TYPE_CHECKING:
    from feast import FeatureStore

# ---------------------------------------------------------------- feature services (feature_repo/)
RANKING_SERVICE = "ranking"  # a (user, item) pair's features for the ranker
RETRIEVAL_SERVICE = "retrieval"  # user-side features for the two-tower user tower
TIMESTAMP_COLUMN = "event_timestamp"  # when a feature row became known; a request's time in a training set


def user_daily_feature_names(windows: tuple[int, ...]) -> list[str]:
    """Columns of the `user_daily` table (behavioural counts over `windows` days)."""
    longest = max(windows)
    counts = [f"{t}_count_{w}d" for w in windows for t in EVENT_TYPES]
    return counts + [
        f"weighted_events_{longest}d", f"active_days_{longest}d", f"ctr_{longest}d",
        f"conversion_rate_{longest}d", f"avg_rating_{longest}d", "days_since_last_event",
        "tenure_days",
    ]


def item_daily_feature_names(windows: tuple[int, ...]) -> list[str]:
    """Columns of the `item_daily` table."""
    longest = max(windows)
    popularity = [f"{name}_{w}d" for w in windows for name in ("popularity", "log_popularity")]
    return popularity + [
        f"purchase_count_{longest}d", f"ctr_{longest}d", f"conversion_rate_{longest}d",
        f"avg_rating_{longest}d", "age_days", "is_new",
    ]


def affinity_feature_names(windows: tuple[int, ...]) -> list[str]:
    """Columns of the `user_category` table (a user's interactions with a category)."""
    longest = max(windows)
    return [f"category_weighted_events_{longest}d", f"category_events_{longest}d"]


@dataclass(frozen=True)
class ServiceFeatures:
    """The feature service's features grouped by join keys, in the service's order."""

    name: str
    refs_by_keys: dict[tuple[str, ...], list[str]]

    @property
    def columns(self) -> list[str]:
        """Output column names (full feature names: `<view>__<feature>`), in service order."""
        return [ref.replace(":", "__") for refs in self.refs_by_keys.values() for ref in refs]

    @property
    def refs(self) -> list[str]:
        return [ref for refs in self.refs_by_keys.values() for ref in refs]


def service_features(store: FeatureStore, service_name: str) -> ServiceFeatures:
    """A registered feature service's features, grouped by the join keys of their views."""
    service = store.get_feature_service(service_name)
    grouped: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        keys = tuple(column.name for column in view.entity_columns)
        grouped[keys] += [f"{projection.name_to_use()}:{f.name}" for f in projection.features]
    return ServiceFeatures(service_name, dict(grouped))


# ------------------------------------------------------------------- served log (serving -> monitoring)
# One record per sampled request, parquet files `<log_dir>/date=YYYY-MM-DD/served-<time>-<id>.parquet`.
# `features` (list<struct>, the ranker's input rows of the request) comes after these columns.
SERVED_LOG_RECORD = pa.schema([
    pa.field("request_id", pa.string()),
    pa.field("timestamp", pa.timestamp("us", tz="UTC")),
    pa.field("user_id", pa.int64()),
    pa.field("model_version", pa.string()),
    pa.field("variant", pa.string()),
    pa.field("device", pa.string()),
    pa.field("cold_start", pa.bool_()),
    pa.field("degraded", pa.bool_()),
    pa.field("items", pa.list_(pa.int64())),
    pa.field("scores", pa.list_(pa.float64())),
    pa.field("ranker_scores", pa.list_(pa.float64())),
])
SERVED_LOG_FEATURES = "features"
SERVED_LOG_REQUIRED = ("request_id", "timestamp", "user_id", "model_version", "items")
SERVED_LOG_FILE_PREFIX = "served-"
