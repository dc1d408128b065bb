"""The explorer's computations without a service: live figures from a real Prometheus registry,
what the rules did, and the reports folder's boundaries."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import numpy as np
import pytest

from serving.explorer import (
    LiveFigures,
    explain,
    histogram_quantile,
    latest_reports,
    report_file,
    user_page,
    with_titles,
)
from serving.metrics import ServingMetrics
from serving.recommender import Recommendation

ROUTE = "/recommendations/{user_id}"


def test_histogram_quantiles_interpolate_within_buckets_like_prometheus():
    buckets = [(0.01, 50.0), (0.02, 90.0), (0.05, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.01)
    assert histogram_quantile(buckets, 0.7) == pytest.approx(0.015)
    assert histogram_quantile(buckets, 0.95) == pytest.approx(0.035)
    assert histogram_quantile([(0.01, 0.0), (float("inf"), 0.0)], 0.5) is None


def test_live_figures_read_the_services_own_metrics(monkeypatch):
    # Importing Feast puts prometheus_client in multiprocess mode, where same-named metrics of every
    # app in this test process share their values: in-memory values give this registry its own.
    from prometheus_client import values

    monkeypatch.setattr(values, "ValueClass", values.MutexValue)
    metrics = ServingMetrics()
    for seconds in [0.004] * 8 + [0.03, 0.2]:
        metrics.requests.labels(ROUTE, "GET", "200").inc()
        metrics.latency.labels(ROUTE, "GET").observe(seconds)
    metrics.requests.labels("/healthz", "GET", "200").inc(50)  # other endpoints do not count
    metrics.responses.labels("personalized").inc(7)
    metrics.responses.labels("cold_start").inc(2)
    metrics.responses.labels("degraded").inc(1)
    metrics.item_cache_age.set(12.5)
    metrics.redis_up.set(1)

    live = LiveFigures()
    first = live.read(metrics.exposition(), now=100.0)
    assert first["recommendation_requests"] == 10 and first["request_rate_per_s"] is None
    assert first["cold_start_share"] == pytest.approx(0.2) and first["degraded_share"] == pytest.approx(0.1)
    assert 2.5 <= first["latency_ms"]["p50"] <= 5 and 150 <= first["latency_ms"]["p99"] <= 250
    assert first["item_cache_age_s"] == 12.5 and first["online_store_up"] is True

    for _ in range(4):
        metrics.requests.labels(ROUTE, "GET", "200").inc()
    assert live.read(metrics.exposition(), now=102.0)["request_rate_per_s"] == pytest.approx(2.0)


def _result(items, ranker_scores):
    return Recommendation("r", 1, "v1", datetime(2026, 3, 1, tzinfo=timezone.utc), "mobile", items,
                          n_candidates=len(ranker_scores), ranker_scores=np.asarray(ranker_scores))


def test_explain_ranks_items_by_ranker_score_and_counts_what_the_rules_left_out():
    items = [{"item_id": 7, "score": 1.4, "ranker_score": 0.9}, {"item_id": 3, "score": 0.7, "ranker_score": 0.7}]
    explained = explain(_result(items, [0.95, 0.9, 0.8, 0.7, 0.1]))
    assert [(i["item_id"], i["rank"], i["ranker_rank"]) for i in explained["items"]] == [(7, 1, 2), (3, 2, 4)]
    assert explained["items"][0]["rule_adjustment"] == pytest.approx(0.5)
    assert explained["left_out_by_rules"] == 2  # 0.95 and 0.8 scored better than the last chosen item
    trending = explain(_result([{"item_id": 1, "score": 3.0, "ranker_score": None}], []))
    assert trending["left_out_by_rules"] is None and trending["items"][0]["ranker_rank"] is None


def test_report_files_stay_inside_the_reports_folder(tmp_path):
    reports = tmp_path / "reports"
    (reports / "training" / "v1").mkdir(parents=True)
    (reports / "training" / "v1" / "report.html").write_text("ok")
    (tmp_path / "secret.txt").write_text("no")
    os.symlink(tmp_path / "secret.txt", reports / "link.txt")
    assert report_file(reports, "training/v1/report.html") == (reports / "training/v1/report.html").resolve()
    for outside in ("../secret.txt", "training/../../secret.txt", str(tmp_path / "secret.txt"), "link.txt",
                    "training", "missing.html", "bad\x00name"):
        assert report_file(reports, outside) is None, outside


def test_latest_reports_are_the_newest_of_each_kind(tmp_path):
    for stamp, mtime in (("demo-1", 1_000), ("demo-2", 2_000)):
        for kind in ("drift/drift_report.html", "ab/ab_report.html"):
            path = tmp_path / "monitoring" / stamp / kind
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
            os.utime(path, (mtime, mtime))
    assert latest_reports(tmp_path) == {"training": None, "drift": "monitoring/demo-2/drift/drift_report.html",
                                        "ab": "monitoring/demo-2/ab/ab_report.html"}
    assert latest_reports(tmp_path / "missing") == {"training": None, "drift": None, "ab": None}


class FakeStore:
    """Feast's `get_online_features(...).to_dict()` for item titles and categories."""

    def get_online_features(self, features, entity_rows):
        ids = [row["item_id"] for row in entity_rows]

        class Found:
            def to_dict(self):
                return {"item_id": ids, "title": [f"title {i}" for i in ids],
                        "item_category": ["books" if i != 3 else None for i in ids]}
        return Found()


def test_the_user_page_is_plain_json_with_titles_next_to_history_and_recommendations():
    items = [{"item_id": np.int64(7), "score": np.float32(1.5), "ranker_score": 1.0, "source": "covisit",
              "category": None, "is_new": True}]
    result = _result(items, np.array([1.0, 0.5], dtype=np.float32))
    result.n_candidates = np.int64(2)  # as the recommender sets it
    page = user_page(result, [3, 5], FakeStore())
    json.dumps(page)  # nothing numpy left
    assert [(h["item_id"], h["title"], h["category"]) for h in page["history"]] == \
        [(3, "title 3", None), (5, "title 5", "books")]
    top = page["recommendations"][0]
    assert (top["title"], top["category"], top["ranker_rank"], top["rule_adjustment"]) == ("title 7", "books", 1, 0.5)
    assert page["n_candidates"] == 2 and page["left_out_by_rules"] == 0


def test_similar_items_get_titles_and_plain_numbers():
    similar = {"item_id": 7, "model_version": "v", "embedding_neighbours": [
        {"item_id": np.int64(3), "score": np.float32(0.9), "source": "two_tower", "category": None}],
        "covisitation": [{"item_id": 5, "score": np.float64(2.0), "source": "covisit", "category": "books"}]}
    found = with_titles(similar, FakeStore())
    json.dumps(found)
    assert found["item"] == {"item_id": 7, "title": "title 7", "category": "books"}
    assert [i["title"] for i in found["embedding_neighbours"] + found["covisitation"]] == ["title 3", "title 5"]
