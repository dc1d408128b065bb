"""Training/serving skew: the pure comparison on small frames, and (slow, real Feast + Redis) a
corrupted online value caught against Feast's offline point-in-time features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitoring.errors import MonitoringInputError
from monitoring.skew import compare_features, entity_rows, sample_requests


def _online() -> pd.DataFrame:
    return pd.DataFrame({
        "request_id": ["r1", "r1", "r2", "r2", "r3"], "item_id": [10, 11, 10, 12, 13],
        "item_daily__popularity_7d": [3, 5, 7, 9, 1],
        "user_daily__ctr_30d": [0.5, 0.5, 0.25, 0.25, 0.0],
        "item_profile__item_category": ["books", "games", "books", None, "toys"],
        "user_daily__avg_rating_30d": [None, None, 4.0, 4.0, 1.0],
        "user_recent_history__recent_item_ids": [[1, 2], [1, 2], [3], [3], []],
    })


def _offline() -> pd.DataFrame:
    offline = _online().iloc[:4].copy()  # r3 has no offline row
    offline["item_daily__popularity_7d"] = [3.0, 5.0, 8.0, 9.0]  # floats offline; one real difference
    offline["user_daily__ctr_30d"] = [0.5 + 1e-12, 0.5, 0.2501, 0.2501]  # float noise vs a real difference
    offline["item_profile__item_category"] = ["books", "Games", "books", None]
    offline["user_daily__avg_rating_30d"] = [None, 3.0, 4.0, np.nan]
    offline["user_recent_history__recent_item_ids"] = [[1, 2], [2, 1], np.array([3]), [3]]
    extra = offline.iloc[:1].assign(request_id="r9")  # offline rows nobody asked for are ignored
    return pd.concat([offline.iloc[::-1], extra], ignore_index=True)  # order does not matter


def test_mismatch_rates_per_feature():
    result = compare_features(_online(), _offline())
    rates = result.mismatch_rates
    assert result.n_rows == 5 and result.n_unmatched == 1
    assert rates == {"item_daily__popularity_7d": 0.25, "user_daily__ctr_30d": 0.5,
                     "item_profile__item_category": 0.25, "user_daily__avg_rating_30d": 0.5,
                     "user_recent_history__recent_item_ids": 0.25}
    table = result.per_feature.set_index("feature")
    assert table.loc["user_daily__avg_rating_30d", "offline_missing"] == 1  # 4.0 online, nothing offline
    assert table.loc["user_daily__avg_rating_30d", "online_missing"] == 1  # nothing online, 3.0 offline
    assert table.loc["item_daily__popularity_7d", "max_abs_diff"] == pytest.approx(1.0)
    example = result.examples["item_daily__popularity_7d"]
    assert example[["request_id", "item_id", "online", "offline"]].values.tolist() == [["r2", 10, 7, 8.0]]
    assert result.info["rows_with_any_mismatch"] == 3  # of the 4 matched rows
    assert set(result.skewed_features) == set(rates)


def test_tolerance_is_configurable():
    loose = compare_features(_online(), _offline(), features=["user_daily__ctr_30d"], rtol=1e-3)
    assert loose.mismatch_rates == {"user_daily__ctr_30d": 0.0}
    exact = compare_features(_online(), _offline(), features=["user_daily__ctr_30d"], rtol=0, atol=0)
    assert exact.mismatch_rates == {"user_daily__ctr_30d": 0.75}


def test_bad_input():
    with pytest.raises(MonitoringInputError, match="missing online"):
        compare_features(_online().drop(columns=["user_daily__ctr_30d"]), _offline(), ["user_daily__ctr_30d"])
    with pytest.raises(MonitoringInputError, match="key columns"):
        compare_features(_online().drop(columns=["request_id"]), _offline())
    with pytest.raises(MonitoringInputError, match="no logged rows"):
        compare_features(_online().head(0), _offline())
    with pytest.raises(MonitoringInputError, match="cannot ask Feast"):
        entity_rows(_online())  # no user_id / category / event_timestamp


def test_sampling_keeps_whole_requests():
    rows = _online()
    sampled = sample_requests(rows, 2)
    assert sampled["request_id"].nunique() == 2
    assert sampled.groupby("request_id").size().to_dict() == rows[rows.request_id.isin(sampled.request_id)] \
        .groupby("request_id").size().to_dict()


# ------------------------------------------------------------------------------ real Feast + Redis


@pytest.fixture(scope="module")
def feast_world(hand_built_data, tmp_path_factory):
    from core.environment import redis_reachable
    from tests.conftest import hand_built_feast_world

    if not redis_reachable():
        pytest.skip("needs the real Redis at REDIS_URL")
    with hand_built_feast_world(hand_built_data, tmp_path_factory.mktemp("skew_feast"), "recsys_skew") as world:
        yield world.store


def _served_rows(store, pairs: list[tuple[int, int]], when: pd.Timestamp) -> pd.DataFrame:
    """What serving logs: the online `ranking` features of (user, item) pairs at `when`."""
    categories = store.get_online_features(features=["item_profile:item_category"],
                                           entity_rows=[{"item_id": i} for _, i in pairs]).to_dict()["item_category"]
    entity = [{"user_id": u, "item_id": i, "category": c} for (u, i), c in zip(pairs, categories)]
    online = store.get_online_features(features=store.get_feature_service("ranking"), entity_rows=entity,
                                       full_feature_names=True).to_df()
    online["request_id"] = [f"req-{u}" for u, _ in pairs]
    online["category"] = categories
    online["event_timestamp"] = when
    return online


@pytest.mark.slow
def test_a_corrupted_online_value_is_caught(feast_world):
    from monitoring.skew import offline_features, service_columns

    store = feast_world
    when = pd.Timestamp("2026-01-07T12:00", tz="UTC")  # after the last snapshot, within every TTL
    pairs = [(1, 10), (1, 11), (1, 12), (2, 10), (2, 12)]
    features = service_columns(store)
    clean = _served_rows(store, pairs, when)
    baseline = compare_features(clean, offline_features(store, clean), features)
    assert baseline.n_unmatched == 0 and baseline.skewed_features == [], baseline.per_feature

    # A corrupted Redis entry for item 11: popularity_7d overwritten by a bad write at 06:00 (Feast's
    # Redis store ignores writes not newer than the stored row, so the bad row is stamped later).
    refs = [f"item_daily:{f.name}" for f in store.get_feature_view("item_daily").features]
    stored = store.get_online_features(features=refs, entity_rows=[{"item_id": 11}]).to_df()
    stored["popularity_7d"] = 999
    stored["event_timestamp"] = pd.Timestamp("2026-01-07T06:00", tz="UTC")
    store.write_to_online_store("item_daily", stored)
    served = _served_rows(store, pairs, when)
    result = compare_features(served, offline_features(store, served), features)
    assert result.skewed_features == ["item_daily__popularity_7d"]
    assert result.mismatch_rates["item_daily__popularity_7d"] == pytest.approx(1 / 5)
    example = result.examples["item_daily__popularity_7d"]
    assert example["item_id"].tolist() == [11] and example["online"].tolist() == [999]
