"""The as-of offline store (feast_ext.offline_store) returns exactly what Feast's built-in Spark
store returns, on hand-built and on randomized feature tables, for awkward request times."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.environment import redis_reachable
from core.settings import Settings
from feast_ext import repo as feast_repo
from feast_ext.offline_store import STORE_TYPE, AsofSparkOfflineStore
from tests.conftest import copy_data_dir, utc
from tests.feast.test_feature_store import _hand_built_item_daily
from training.data.synthetic import GeneratorConfig, generate
from training.features.pipeline import run_feature_pipeline

# `feast apply` updates the online store's infrastructure, so it needs the Redis named in the config
# (nothing is materialized here, so nothing is written to it).
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_reachable(), reason="needs the real Redis at REDIS_URL")]

STORES = {"builtin": "spark", "asof": STORE_TYPE}


def _apply(root: Path, data_dir: Path, store: str) -> object:
    """An isolated project over `data_dir` with the given offline store type and its own registry."""
    repo = feast_repo.make_isolated_repo(root / f"repo_{store}", f"asof_test_{uuid.uuid4().hex[:8]}", data_dir)
    def with_store(config: dict) -> None:
        config["offline_store"]["type"] = STORES[store]
        config["registry"]["path"] = str(root / f"registry_{store}.db")
    feast_repo.edit_config(repo, with_store)
    feast_repo.apply(repo, {"RECSYS_DATA_DIR": str(data_dir)}, checked=False)
    return feast_repo.feature_store(repo)


def _stores(root: Path, data_dir: Path) -> dict[str, object]:
    return {name: _apply(root, data_dir, name) for name in STORES}


@pytest.fixture(scope="module")
def hand_built(hand_built_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("asof_hand")
    settings = copy_data_dir(hand_built_data, root)
    return settings, _stores(root, settings.data_dir)


@pytest.fixture(scope="module")
def randomized(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("asof_random")
    settings = Settings(data_dir=root / "data")
    config = GeneratorConfig(n_users=40, n_items=30, n_events=600, n_days=20, n_categories=4, seed=7,
                             chunk_events=10_000)
    generate(config, settings.raw_dir, progress=False)
    run_feature_pipeline(spark, settings, progress=False)
    return settings, _stores(root, settings.data_dir)


def _entity_rows(settings: Settings, seed: int, n: int = 300) -> pd.DataFrame:
    """Random requests over known and unknown keys: uniform times from before the first row to
    beyond the item_daily TTL after the last one, times exactly equal to snapshot times, and
    duplicated rows."""
    rng = np.random.default_rng(seed)
    features = settings.features_dir
    pairs = pd.read_parquet(features / "user_category", columns=["user_id", "category"]).drop_duplicates()
    users = np.append(pd.read_parquet(features / "user_profile", columns=["user_id"]).user_id.unique(), 999_999)
    items = np.append(pd.read_parquet(features / "item_profile", columns=["item_id"]).item_id.unique(), 888_888)
    categories = np.append(pairs.category.unique(), "no_such_category")
    stamps = pd.concat([pd.read_parquet(features / t, columns=["event_timestamp"]).event_timestamp
                        for t in ("user_daily", "item_daily", "user_category")]).unique()
    first, last = stamps.min() - pd.Timedelta(days=3), stamps.max() + pd.Timedelta(days=12)
    times = pd.Series(first + pd.to_timedelta(rng.uniform(0, (last - first).total_seconds(), n), unit="s"))
    exact = rng.random(n) < 0.3  # exactly a snapshot time
    times[exact] = pd.Series(stamps).sample(int(exact.sum()), replace=True, random_state=seed).to_numpy()
    picked = pairs.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    own_pair = rng.random(n) < 0.5  # half the rows ask for a (user, category) pair that has rows
    rows = pd.DataFrame({
        "user_id": np.where(own_pair, picked.user_id, rng.choice(users, n)).astype("int64"),
        "item_id": rng.choice(items, n).astype("int64"),
        "category": np.where(own_pair, picked.category, rng.choice(categories, n)),
        "event_timestamp": times.dt.round("us"),
    })
    rows.loc[: n // 10, "event_timestamp"] = first  # before any row
    rows["request_id"] = np.arange(n)
    same_request = rows.sample(n // 10, random_state=seed)  # fully duplicated rows
    same_keys = rows.sample(n // 10, random_state=seed + 1).assign(request_id=lambda d: d.request_id + 10_000)
    return pd.concat([rows, same_request, same_keys], ignore_index=True)


def _normalized(job) -> tuple[list[tuple[str, str]], pd.DataFrame]:
    """Spark schema (names and types, in order) and the rows sorted, arrays as tuples."""
    df = job.to_spark_df()
    schema = [(f.name, f.dataType.simpleString()) for f in df.schema.fields]
    pdf = df.toPandas()
    for column in pdf.columns:
        if pdf[column].dtype == object:
            pdf[column] = pdf[column].map(lambda v: tuple(v) if isinstance(v, (list, np.ndarray)) else v)
    keys = ["request_id", "user_id", "item_id", "category", "event_timestamp"]
    return schema, pdf.sort_values([k for k in keys if k in pdf.columns]).reset_index(drop=True)


def _assert_same(stores: dict, entity_df, features, full_feature_names: bool) -> pd.DataFrame:
    results = {}
    for name, store in stores.items():
        # A fresh copy each time: the built-in store converts a pandas frame in place.
        entity = entity_df.copy() if isinstance(entity_df, pd.DataFrame) else entity_df
        job = store.get_historical_features(entity_df=entity, features=features,
                                            full_feature_names=full_feature_names)
        assert job.query.startswith("SELECT * FROM feast_asof_") == (name == "asof")  # no fallback
        results[name] = _normalized(job)
    (builtin_schema, builtin), (asof_schema, asof) = results["builtin"], results["asof"]
    assert asof_schema == builtin_schema
    pd.testing.assert_frame_equal(asof, builtin, check_exact=True)
    return asof


def test_asof_store_is_configured(hand_built):
    _, stores = hand_built
    assert type(stores["asof"]._get_provider().offline_store) is AsofSparkOfflineStore
    assert stores["asof"].config.offline_store.type == STORE_TYPE


@pytest.mark.parametrize("service", ["ranking", "retrieval"])
@pytest.mark.parametrize("dataset", ["hand_built", "randomized"])
def test_feature_services_equal_builtin(dataset, service, request, spark):
    settings, stores = request.getfixturevalue(dataset)
    entity_df = spark.createDataFrame(_entity_rows(settings, seed=len(service)))
    result = _assert_same(stores, entity_df, stores["builtin"].get_feature_service(service), True)
    assert len(result) == entity_df.count()
    features = [c for c in result.columns if "__" in c]
    assert result[features].notna().any().all(), "every feature is joined somewhere"
    assert result[features].isna().any().any(), "and missing somewhere"


@pytest.mark.parametrize("dataset", ["hand_built", "randomized"])
def test_feature_subset_without_full_names_equal_builtin(dataset, request):
    settings, stores = request.getfixturevalue(dataset)
    features = ["item_daily:popularity_7d", "user_category:category_events_30d", "user_daily:ctr_30d",
                "item_profile:price", "user_recent_history:recent_item_ids"]
    entity_df = _entity_rows(settings, seed=3).drop(columns=["request_id"])  # a pandas entity frame
    result = _assert_same(stores, entity_df, features, False)
    assert list(result.columns) == ["user_id", "item_id", "category", "event_timestamp", "popularity_7d",
                                    "category_events_30d", "ctr_30d", "price", "recent_item_ids"]


def test_to_df_and_to_arrow(hand_built):
    _, stores = hand_built
    entity_df = pd.DataFrame({"user_id": [1, 2], "event_timestamp": [utc(2026, 1, 4), utc(2026, 1, 7)]})
    job = stores["asof"].get_historical_features(entity_df=entity_df, features=["user_daily:view_count_7d"])
    assert job.to_df().sort_values("user_id")["view_count_7d"].tolist() == [2, 1]
    assert job.to_arrow().num_rows == 2


def test_point_in_time_join_takes_latest_earlier_row_within_ttl(spark, tmp_path_factory, hand_built):
    """The hand-built case of test_feature_store.py, against the as-of store."""
    settings, _ = hand_built
    root = tmp_path_factory.mktemp("asof_pit")
    own = Settings(data_dir=root / "data")
    shutil.copytree(settings.features_dir, own.features_dir)
    _hand_built_item_daily(own)
    store = _apply(root, own.data_dir, "asof")
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
    job = store.get_historical_features(entity_df=entity_df, features=["item_daily:popularity_7d"])
    result = job.to_spark_df().toPandas().sort_values("request_id")
    got = [None if pd.isna(v) else int(v) for v in result["popularity_7d"]]
    assert got == [r[1] for r in requests]
