"""Training/serving consistency: at a time T after materialization, the ranking rows the server
builds from the online store (Redis + item cache) equal Feast's offline point-in-time rows for the
same (user, item, category, T), and the server's scores equal the offline ranker's on those rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from core.inference import ranker
from core.inference.frame import to_model_matrix
from serving.app import create_app

pytestmark = pytest.mark.slow


def _same(a, b) -> bool:
    if a is None or (isinstance(a, float) and np.isnan(a)):
        return b is None or (isinstance(b, float) and np.isnan(b))
    return a == b


def _offline_rows(store, served: pd.DataFrame, feature_columns: list[str]) -> pd.DataFrame:
    entity = served[["user_id", "item_id", "category", "event_timestamp"]].copy()
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)
    offline = store.get_historical_features(entity_df=entity, features=store.get_feature_service("ranking"),
                                            full_feature_names=True).to_df()
    offline = offline.drop_duplicates("item_id").set_index("item_id")
    request_columns = [c for c in served.columns if c not in feature_columns]
    rows = served[request_columns].join(offline[feature_columns], on="item_id")
    return rows[served.columns]


def test_served_vectors_and_scores_equal_offline_point_in_time(world, tmp_path):
    store = world.store()
    settings = world.serving_settings(tmp_path, log_sample_rate=0.0)
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services
        model = services.holder.current
        features = services.online.ranking_columns
        users = pd.read_parquet(world.settings.raw_dir / "users", columns=["user_id"])["user_id"].tolist()
        warm = [u for u in users[:300]
                if services.online.user(u).get("user_daily__weighted_events_30d") not in (None, 0, 0.0)][:2]
        assert len(warm) == 2
        when = world.request_time
        for user in [*warm, 999_999_999]:  # two warm users and a cold one
            served = services.recommender.recommend(user, 10, "desktop", when=when, keep_rows=True)
            rows, scores = served.rows, served.ranker_scores
            assert not served.degraded and len(rows) > 10
            offline = _offline_rows(store, rows, features)

            # The feature vectors: every `ranking` feature of every candidate, value for value.
            for column in features:
                mismatched = [(i, a, b) for i, a, b in zip(rows["item_id"], rows[column], offline[column])
                              if not _same(_plain(a), _plain(b))]
                assert not mismatched, f"user {user}, {column}: served vs offline {mismatched[:3]}"
            pd.testing.assert_frame_equal(to_model_matrix(rows, model.spec), to_model_matrix(offline, model.spec),
                                          check_exact=True)

            # The scores: the offline ranker on the offline rows.
            offline_scores = ranker.score(model.ranker, offline, model.spec)
            np.testing.assert_array_equal(scores, offline_scores)

            # ... and what the API returns for that request.
            body = client.get(f"/recommendations/{user}",
                              params={"k": 10, "device": "desktop", "time": when.isoformat()}).json()
            by_item = dict(zip(rows["item_id"], offline_scores))
            assert body["items"]
            for item in body["items"]:
                assert item["ranker_score"] == pytest.approx(by_item[item["item_id"]], abs=0, rel=1e-12)


def _plain(value):
    """Feast returns ints for Int64 features online and numpy ints / floats offline."""
    if value is None:
        return None
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    if pd.isna(value) if not isinstance(value, (list, np.ndarray)) else False:
        return None
    return value
