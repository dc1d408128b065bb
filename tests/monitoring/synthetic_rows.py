"""Ranker-like rows computed with pandas from the synthetic generator's raw events (no Spark).

A row is one viewed (user, item) at time t, with the features the `ranking` service would give it at
the snapshot of t's day (events strictly before that UTC midnight): user activity over 30 days,
the user's weighted events in the item's category over 30 days (-> `category_share_30d`), the
item's 7-day popularity, profiles and the request's device. The names are the real feature names,
so the drift code runs on them unchanged.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd

from core.inference.frame import FeatureSpec
from core.schema import EVENT_GAIN

NUMERIC = ["user_daily__weighted_events_30d", "user_daily__click_count_30d", "user_daily__ctr_30d",
           "user_category__category_weighted_events_30d", "category_share_30d", "item_daily__popularity_7d",
           "item_profile__price", "user_profile__age"]
CATEGORICAL = ["device", "item_profile__item_category", "user_profile__gender"]


def spec_for(rows: pd.DataFrame) -> FeatureSpec:
    vocab = {c: sorted(rows[c].dropna().astype(str).unique().tolist()) for c in CATEGORICAL}
    return FeatureSpec(list(NUMERIC), list(CATEGORICAL), vocab)


def load_raw(raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    events = pd.read_parquet(raw_dir / "events")
    events["event_timestamp"] = pd.to_datetime(events["event_timestamp"], utc=True)
    return events, pd.read_parquet(raw_dir / "users"), pd.read_parquet(raw_dir / "items")


def ranking_rows(raw_dir: Path, first_day: pd.Timestamp, days: int, max_rows: int | None = None,
                 seed: int = 0) -> pd.DataFrame:
    """Rows for the views of [first_day, first_day + days), features as of each view's day."""
    events, users, items = load_raw(raw_dir)
    events = events.merge(items[["item_id", "category"]], on="item_id")
    events["gain"] = events["event_type"].map(EVENT_GAIN).astype(float)
    frames = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        views = events[(events.event_type == "view") & (events.event_timestamp >= day)
                       & (events.event_timestamp < day + timedelta(days=1))]
        past30 = events[(events.event_timestamp >= day - timedelta(days=30)) & (events.event_timestamp < day)]
        past7 = events[(events.event_timestamp >= day - timedelta(days=7)) & (events.event_timestamp < day)]
        user = past30.groupby("user_id").agg(
            user_daily__weighted_events_30d=("gain", "sum"),
            user_daily__click_count_30d=("event_type", lambda s: float((s == "click").sum())),
            views=("event_type", lambda s: float((s == "view").sum())))
        user["user_daily__ctr_30d"] = user["user_daily__click_count_30d"] / user["views"].where(user["views"] > 0)
        affinity = past30.groupby(["user_id", "category"])["gain"].sum().rename(
            "user_category__category_weighted_events_30d")
        popularity = past7.groupby("item_id").size().rename("item_daily__popularity_7d").astype(float)
        rows = (views[["user_id", "item_id", "category", "event_timestamp", "device"]]
                .join(user.drop(columns="views"), on="user_id")
                .join(affinity, on=["user_id", "category"])
                .join(popularity, on="item_id"))
        frames.append(rows)
    rows = pd.concat(frames, ignore_index=True)
    rows = rows.merge(items[["item_id", "price"]].rename(columns={"price": "item_profile__price"}), on="item_id")
    rows = rows.merge(users[["user_id", "age", "gender"]].rename(
        columns={"age": "user_profile__age", "gender": "user_profile__gender"}), on="user_id")
    rows["item_profile__item_category"] = rows["category"]
    # One request per user and day (its rows: the items the user viewed that day).
    rows["request_id"] = rows["user_id"].astype(str) + ":" + rows["event_timestamp"].dt.strftime("%Y%m%d")
    if max_rows is not None and len(rows) > max_rows:
        rows = rows.sample(n=max_rows, random_state=seed)
    return rows.reset_index(drop=True)
