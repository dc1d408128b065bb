"""Feature views. Field lists come from the Spark jobs' own name functions, so the schema Feast
registers and the columns Spark writes cannot drift apart."""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float64, Int64, String, UnixTimestamp

from core.contracts import affinity_feature_names, item_daily_feature_names, user_daily_feature_names
from core.settings import get_settings
from feature_repo.data_sources import (
    item_daily_source,
    item_profile_source,
    user_activity_push_source,
    user_category_source,
    user_daily_source,
    user_profile_source,
)
from feature_repo.entities import category, item, user

_windows = tuple(get_settings().windows_days)
_INTEGER_PREFIXES = ("view_count", "click_count", "add_to_cart_count", "purchase_count", "active_days",
                     "popularity", "is_new", "category_events")


def _fields(names: list[str]) -> list[Field]:
    return [Field(name=n, dtype=Int64 if n.startswith(_INTEGER_PREFIXES) else Float64) for n in names]


# Rows go on daily while a user is active and end with an all-zero row, so a long TTL is exact.
user_daily = FeatureView(
    name="user_daily",
    entities=[user],
    ttl=timedelta(days=365),
    schema=_fields(user_daily_feature_names(_windows)),
    source=user_daily_source,
    tags={"team": "recsys", "kind": "batch"},
)

# A row for every existing item every day: a missing row means the item does not exist yet.
item_daily = FeatureView(
    name="item_daily",
    entities=[item],
    ttl=timedelta(days=7),
    schema=_fields(item_daily_feature_names(_windows)),
    source=item_daily_source,
    tags={"team": "recsys", "kind": "batch"},
)

user_category = FeatureView(
    name="user_category",
    entities=[user, category],
    ttl=timedelta(days=365),
    schema=_fields(affinity_feature_names(_windows)),
    source=user_category_source,
    tags={"team": "recsys", "kind": "batch"},
)

user_recent_history = FeatureView(
    name="user_recent_history",
    entities=[user],
    ttl=timedelta(days=365),
    schema=[Field(name="recent_item_ids", dtype=Array(Int64)),
            Field(name="last_event_timestamp", dtype=UnixTimestamp)],
    source=user_activity_push_source,
    tags={"team": "recsys", "kind": "streaming"},
)

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(0),  # no expiry: demographics hold from sign-up on
    schema=[Field(name="age", dtype=Int64), Field(name="gender", dtype=String),
            Field(name="occupation", dtype=String)],
    source=user_profile_source,
    tags={"team": "recsys", "kind": "static"},
)

item_profile = FeatureView(
    name="item_profile",
    entities=[item],
    ttl=timedelta(0),
    schema=[Field(name="item_category", dtype=String), Field(name="price", dtype=Float64),
            Field(name="price_bucket", dtype=Int64), Field(name="title", dtype=String)],
    source=item_profile_source,
    tags={"team": "recsys", "kind": "static"},
)
