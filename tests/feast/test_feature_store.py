"""Feast on the real stack: `feast apply` / `feast materialize` (CLI) into the real Redis, the Spark
offline store's point-in-time joins, and online values equal to the latest offline values."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.contracts import item_daily_feature_names
from core.environment import redis_reachable
from core.settings import Settings
from tests.conftest import hand_built_feast_world, utc

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_reachable(), reason="needs the real Redis at REDIS_URL")]


@pytest.fixture(scope="module")
def store(hand_built_data, tmp_path_factory):
    """Feature tables from the hand-built events, applied (the checked `feast apply` users run) and
    materialized under its own project."""
    with hand_built_feast_world(hand_built_data, tmp_path_factory.mktemp("feast"), "recsys_test",
                                checked_apply=True) as world:
        yield world.store, world.settings, world.repo, world.env


def latest(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return df.sort_values("event_timestamp").groupby(keys).tail(1).set_index(keys).sort_index()


def test_apply_registers_views_and_services(store):
    fs, *_ = store
    assert {fv.name for fv in fs.list_feature_views()} == {
        "user_daily", "item_daily", "user_category", "user_recent_history", "user_profile", "item_profile"}
    assert {s.name for s in fs.list_feature_services()} == {"ranking", "retrieval"}
    assert fs.get_entity("user").join_key == "user_id"


def test_online_features_equal_latest_offline_rows(store):
    fs, settings, *_ = store
    offline = latest(pd.read_parquet(settings.features_dir / "user_daily"), ["user_id"])
    features = [f"user_daily:{c}" for c in ("view_count_7d", "purchase_count_30d", "ctr_30d",
                                            "days_since_last_event", "tenure_days")]
    online = fs.get_online_features(features=features, entity_rows=[{"user_id": 1}, {"user_id": 2}]).to_df()
    online = online.set_index("user_id").sort_index()
    for feature in features:
        name = feature.split(":")[1]
        np.testing.assert_allclose(online[name].to_numpy(float), offline[name].to_numpy(float), err_msg=name)

    items = latest(pd.read_parquet(settings.features_dir / "item_daily"), ["item_id"])
    online_items = fs.get_online_features(
        features=["item_daily:popularity_7d", "item_daily:age_days", "item_profile:item_category"],
        entity_rows=[{"item_id": i} for i in (10, 11, 12)]).to_df().set_index("item_id").sort_index()
    assert online_items["popularity_7d"].tolist() == items["popularity_7d"].tolist()
    np.testing.assert_allclose(online_items["age_days"], items["age_days"])
    assert online_items["item_category"].tolist() == ["books", "games", "books"]

    history = fs.get_online_features(features=["user_recent_history:recent_item_ids"],
                                     entity_rows=[{"user_id": 1}]).to_dict()
    assert history["recent_item_ids"][0] == [12, 11, 11, 10, 10]

    affinity = fs.get_online_features(features=["user_category:category_weighted_events_30d"],
                                      entity_rows=[{"user_id": 1, "category": "games"}]).to_dict()
    assert affinity["category_weighted_events_30d"] == [5.0]


def test_unknown_entity_gets_nulls_online(store):
    fs, *_ = store
    row = fs.get_online_features(features=["user_daily:view_count_7d"], entity_rows=[{"user_id": 999}]).to_dict()
    assert row["view_count_7d"] == [None]


def _hand_built_item_daily(settings: Settings) -> None:
    """item 10 known on Jan 1, Jan 5 and Jan 20 with popularity_7d = 1, 5, 20."""
    names = item_daily_feature_names(tuple(settings.windows_days))
    stamps = [utc(2026, 1, 1), utc(2026, 1, 5), utc(2026, 1, 20)]
    rows = {"item_id": [10, 10, 10], "event_timestamp": stamps}
    for name in names:
        rows[name] = [1.0, 5.0, 20.0] if not name.startswith(("popularity", "purchase", "is_new")) else [1, 5, 20]
    df = pd.DataFrame(rows)
    target = settings.features_dir / "item_daily"
    import shutil
    shutil.rmtree(target)
    for stamp, part in df.groupby(df.event_timestamp.dt.date):
        out = target / f"snapshot_date={stamp.isoformat()}"
        out.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), out / "part.parquet",
                       coerce_timestamps="us")


def test_point_in_time_join_takes_latest_earlier_row_within_ttl(store, spark):
    fs, settings, *_ = store
    _hand_built_item_daily(settings)
    requests = [
        (utc(2025, 12, 31), None),          # before any row: nothing joined
        (utc(2026, 1, 4, 12), 1),           # latest earlier row (Jan 1)
        (utc(2026, 1, 5), 5),               # a row stamped exactly at the request time is known
        (utc(2026, 1, 11, 23), 5),          # Jan 5 row is 6 days 23 h old: within the 7-day TTL
        (utc(2026, 1, 12, 1), None),        # older than the TTL: not joined, and Jan 20 is the future
        (utc(2026, 1, 21), 20),
    ]
    entity_df = spark.createDataFrame(
        pd.DataFrame({"item_id": [10] * len(requests), "event_timestamp": [r[0] for r in requests],
                      "request_id": range(len(requests))}))
    job = fs.get_historical_features(entity_df=entity_df, features=["item_daily:popularity_7d"])
    result = job.to_spark_df().toPandas().sort_values("request_id")
    got = [None if pd.isna(v) else int(v) for v in result["popularity_7d"]]
    assert got == [r[1] for r in requests]


def test_per_entity_group_join_equals_one_direct_call(store, spark):
    from training.datasets.point_in_time import join_feature_service, join_feature_service_direct

    fs, *_ = store
    rows = pd.DataFrame({
        "request_id": range(6),
        "user_id": [1, 1, 2, 2, 1, 999],
        "item_id": [10, 11, 10, 12, 12, 10],
        "category": ["books", "games", "books", "books", "books", "books"],
        "event_timestamp": [utc(2026, 1, 2), utc(2026, 1, 3, 5), utc(2026, 1, 4), utc(2026, 1, 6),
                            utc(2026, 1, 7), utc(2026, 1, 5)],
    })
    sdf = spark.createDataFrame(rows)
    ours = join_feature_service(fs, sdf, "ranking").toPandas().sort_values("request_id").reset_index(drop=True)
    direct = join_feature_service_direct(fs, sdf, "ranking").toPandas().sort_values("request_id").reset_index(drop=True)
    assert sorted(ours.columns) == sorted(direct.columns)
    pd.testing.assert_frame_equal(ours[sorted(ours.columns)], direct[sorted(direct.columns)], check_dtype=False)
    assert ours.loc[0, "user_daily__view_count_1d"] == 1  # user 1 viewed item 10 on Jan 1
    assert pd.isna(ours.loc[5, "user_daily__view_count_1d"])  # unknown user


def test_delete_online_rows_removes_the_projects_hashes_only(store):
    """What the fixtures use instead of `feast teardown`: the project's hashes go, other projects'
    stay (the world's own, and a made-up one)."""
    from core.environment import redis_client
    from feast_ext import repo as feast_repo

    _, _, repo, _ = store
    client = redis_client()

    def n_keys(project: str) -> int:
        return sum(1 for _ in client.scan_iter(match=f"*{project}".encode(), count=10_000))

    gone, kept, world = f"gone_{uuid.uuid4().hex[:8]}", f"kept_{uuid.uuid4().hex[:8]}", feast_repo.project_name(repo)
    for project in (gone, kept):
        for entity in (b"\x02\x00user1", b"\x02\x00user2", b"\x02\x00user3"):
            client.hset(entity + project.encode(), b"_ts:user_daily", b"1")
    world_keys = n_keys(world)
    assert world_keys > 0
    try:
        assert feast_repo.delete_online_rows(gone) == 3
        assert feast_repo.delete_online_rows(gone) == 0
        assert n_keys(kept) == 3
        assert n_keys(world) == world_keys
    finally:
        feast_repo.delete_online_rows(kept)
