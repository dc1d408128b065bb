"""The whole training pipeline on a small synthetic world: real Spark, real Feast (Spark store),
real models. Slow (a few minutes) but it is the promise users rely on."""

from __future__ import annotations

import json

import pytest

from core.bundle import BundleError, load_manifest, resolve_bundle
from core.contracts import service_features
from training.pipeline import rank_requests

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_world, spark):
    """The session's trained world (tests/conftest.py): bundle, store, settings, result, spark."""
    return trained_world.bundle, trained_world.store(), trained_world.settings, trained_world.result, spark


def test_bundle_is_complete_and_latest(trained):
    bundle, store, settings, *_ = trained
    assert resolve_bundle(settings.artifacts_dir / "models") == bundle
    expected = service_features(store, "ranking").columns
    manifest = load_manifest(bundle, expected_features=expected)
    assert manifest["feature_service"] == "ranking"
    assert manifest["features"] == expected
    for name in ("ranker.txt", "faiss.index", "two_tower/two_tower.pt", "item_ids.npy", "covisitation.npz",
                 "als_item_factors.npy", "als.faiss"):
        assert (bundle / name).is_file(), name
    assert (bundle / "ranker.txt").read_text().startswith("tree")
    assert manifest["training_window"]["test_start"] < manifest["training_window"]["end"]
    assert not {"item_idx", "item_id", "user_id", "label", "request_id"} & set(manifest["ranker_features"])
    assert "retrieval_score" in manifest["ranker_features"]


def test_loader_refuses_a_bundle_trained_on_other_features(trained):
    bundle, store, *_ = trained
    expected = service_features(store, "ranking").columns
    with pytest.raises(BundleError, match="user_daily__view_count_1d"):
        load_manifest(bundle, expected_features=[c for c in expected if c != "user_daily__view_count_1d"])


def test_two_stage_beats_popularity_and_report_is_written(trained):
    bundle, _, settings, *_ = trained
    report_dir = settings.reports_dir / "training" / bundle.name
    metrics = json.loads((report_dir / "metrics.json").read_text())
    for name in ("popularity", "trending", "covisitation", "bpr_mf", "two_tower", "als", "two_stage"):
        assert {"ndcg@10", "recall@10", "map@10", "mrr@10", "hitrate@50", "coverage@10"} <= set(metrics[name])
    assert metrics["two_stage"]["ndcg@10"] > metrics["popularity"]["ndcg@10"]
    assert "<img" in (report_dir / "report.html").read_text()


def test_rank_requests_ranks_offline_requests_and_honours_exclusions(trained):
    import pandas as pd

    _, store, _, result, spark = trained
    users = result.events_np["user_id"].drop_duplicates().head(6).tolist()
    when = pd.Timestamp(int(result.events_np.ts.max()), unit="s", tz="UTC").normalize()
    requests = pd.DataFrame({"request_id": [f"r{u}" for u in users], "user_id": users,
                             "event_timestamp": when, "device": "mobile"})
    first = rank_requests(result, store, spark, requests, {}, k=10, name="first")
    assert sorted(first) == sorted(f"r{u}" for u in users) and all(len(items) == 10 for items in first.values())
    catalog = set(result.catalog.item_ids.ids.tolist())
    assert all(set(items) <= catalog for items in first.values())
    exclude = {f"r{users[0]}": set(first[f"r{users[0]}"][:5])}
    second = rank_requests(result, store, spark, requests, exclude, k=10, name="second")
    assert not set(second[f"r{users[0]}"]) & exclude[f"r{users[0]}"] and len(second[f"r{users[0]}"]) == 10
    assert second[f"r{users[1]}"] == first[f"r{users[1]}"]  # other requests are untouched


def test_rank_requests_answers_several_requests_of_a_user_each_at_its_time(trained):
    """Keyed by request: one user asked at two times; with no exclusions given, each request leaves
    out exactly the items its user had interacted with before its own time."""
    import pandas as pd

    _, store, _, result, spark = trained
    events = result.events_np
    user = int(events["user_id"].value_counts().index[0])
    own = events[events.user_id == user].sort_values("ts")
    early = int(own.ts.iloc[len(own) // 2])
    late = int(events.ts.max()) + 1
    requests = pd.DataFrame({"request_id": ["early", "late"], "user_id": [user, user],
                             "event_timestamp": pd.to_datetime([early, late], unit="s", utc=True),
                             "device": "mobile"})
    lists = rank_requests(result, store, spark, requests, None, k=50, name="per_request")
    assert sorted(lists) == ["early", "late"]
    for rid, when in (("early", early), ("late", late)):
        seen = set(own[own.ts < when]["item_id"].tolist())
        assert lists[rid] and not set(lists[rid]) & seen, rid
    met_later = set(own[own.ts >= early]["item_id"].tolist()) - set(own[own.ts < early]["item_id"].tolist())
    assert set(lists["early"]) & met_later, "the early request may show what the user only met later"


def test_training_with_both_ranker_kinds_ships_the_one_better_on_validation(trained_world, spark, tmp_path):
    """LightGBM and DCN on the same requests (the world's two-tower reused): the bundle ships the
    kind with the higher validation NDCG@10, and the test window reports both."""
    from core.bundle import RANKER_KIND_KEY, Bundle
    from core.inference.candidates import CandidateConfig
    from core.inference.ranker import as_ranker
    from training.pipeline import TrainConfig, train_two_stage
    from training.ranking.dcn import DCNConfig

    settings = trained_world.settings.model_copy(update={"artifacts_dir": tmp_path / "artifacts",
                                                         "reports_dir": tmp_path / "reports"})
    config = TrainConfig(max_ranker_requests=1_000, max_val_requests=500, max_test_users=800,
                         candidates=CandidateConfig(n_ann=100, n_trending=30, n_covisit=30),
                         ranker_kinds=("lightgbm", "dcn"), dcn=DCNConfig(epochs=4, patience=2, deep_layers=(32,)))
    config.bpr.epochs = 5
    store = trained_world.store()
    result = train_two_stage(spark, store, settings, config, retrieval=trained_world.result.retrieval)

    report_dir = settings.training_report_dir(result.bundle.name)
    stats = json.loads((report_dir / "training_stats.json").read_text())
    choice = stats["ranker_choice"]
    assert set(choice["validation"]) == {"lightgbm", "dcn"} and 0 < min(choice["validation"].values()) <= 1
    chosen = max(choice["validation"], key=choice["validation"].get)
    assert choice["chosen"] == stats["ranker_kind"] == chosen == result.ranker.kind
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert {"two_stage", "two_stage_lightgbm", "two_stage_dcn", "two_stage_before_refit"} <= set(metrics)
    assert metrics["two_stage"] == metrics[f"two_stage_{chosen}"]
    assert (report_dir / "dcn_ranker_curves.png").is_file() and "DCN ranker" in (report_dir / "report.html").read_text()
    manifest = load_manifest(result.bundle, expected_features=service_features(store, "ranking").columns)
    assert manifest[RANKER_KIND_KEY] == chosen and manifest["ranker_choice"] == choice
    assert as_ranker(Bundle.load(result.bundle).ranker).kind == chosen
