"""A/B tests in the service: settings, deterministic assignment (the same as `monitoring.ab`), one
bundle per variant, the variant in responses, served logs and metrics, and a broken variant."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from typer.testing import CliRunner

from core.bundle import new_version, write_bundle
from monitoring.ab import assign_variant
from serving.app import create_app
from serving.experiment import VariantRouter
from serving.model import ModelHolder
from serving.settings import ServingSettings

from .helpers import wait_for

COLD_USER = 999_999_999
N_USERS = 120  # users whose service-side variant is compared with `assign_variant`


def _experiment(control: str, treatment: str, **extra) -> dict:
    return {"name": "ranker-v2", "variants": {"control": {"weight": 50, "bundle": control},
                                              "treatment": {"weight": 50, "bundle": treatment}}, **extra}


# ------------------------------------------------------------------------------ settings (no Redis)


def test_experiment_from_the_environment(monkeypatch):
    monkeypatch.setenv("RECSYS_SERVING_EXPERIMENT", json.dumps(_experiment("latest", "v2")))
    settings = ServingSettings()
    assert settings.experiment.name == "ranker-v2" and settings.experiment.salt is None
    assert settings.variant_bundles() == {"control": "latest", "treatment": "v2"}
    assert settings.experiment.split() == "control=50,treatment=50"


def test_no_experiment_is_one_variant_none():
    settings = ServingSettings(bundle_version="v1")
    assert settings.experiment is None and settings.variant_bundles() == {None: "v1"}


def test_a_variant_without_a_bundle_gets_bundle_version():
    settings = ServingSettings(bundle_version="v1", experiment={
        "name": "e", "control": "a", "variants": {"a": {"weight": 1}, "b": {"weight": 3, "bundle": "v2"}}})
    assert settings.variant_bundles() == {"a": "v1", "b": "v2"}
    assert settings.experiment.split() == "a=1,b=3"


@pytest.mark.parametrize("change, message", [
    ({"variants": {"control": {"weight": -1}, "treatment": {"weight": 1}}}, "greater than or equal to 0"),
    ({"variants": {"control": {"weight": 0}, "treatment": {"weight": 0}}}, "must not all be 0"),
    ({"variants": {"control": {"weight": float("inf")}}}, "finite"),
    ({"control": "baseline"}, "control variant 'baseline' is not one of the variants"),
    ({"variants": {"control": {"weight": 1}, "a,b=c": {"weight": 1}}}, "pattern"),
    ({"variants": {"control": {"weight": 1, "bundle": "../elsewhere"}}}, "version directory name"),
    ({"variants": {"control": {"weight": 1, "model": "x"}}}, "Extra inputs are not permitted"),
    ({"variants": {}}, "at least 1 item"),
    ({"name": ""}, "name"),
])
def test_invalid_experiments_are_rejected_with_a_clear_message(change, message):
    with pytest.raises(ValidationError, match=message):
        ServingSettings(experiment={**_experiment("latest", "latest"), **change})


# ------------------------------------------------------------------------------ routing (no Redis)


def _router(experiment: dict | None, tmp_path: Path) -> VariantRouter:
    settings = ServingSettings(models_dir=tmp_path, experiment=experiment)
    return VariantRouter(settings.experiment, settings.variant_bundles(),
                         lambda bundle: ModelHolder(tmp_path, bundle, lambda: None, {}))


@pytest.mark.parametrize("salt", [None, "reshuffled"])
def test_router_assigns_as_monitoring_does(tmp_path, salt):
    router = _router(_experiment("latest", "v2", salt=salt), tmp_path)
    weights = {"control": 50, "treatment": 50}
    for user in range(2_000):
        assert router.assign(user) == assign_variant(user, "ranker-v2", weights, salt=salt)
    shares = pd.Series([router.assign(u) for u in range(2_000)]).value_counts(normalize=True)
    assert 0.45 < shares["control"] < 0.55


def test_variants_naming_one_bundle_share_a_holder(tmp_path):
    router = _router({"name": "e", "variants": {"control": {"weight": 1, "bundle": "latest"},
                                                "b": {"weight": 1, "bundle": "v2"},
                                                "c": {"weight": 1, "bundle": "latest"}}}, tmp_path)
    assert list(router.holders) == ["latest", "v2"]
    assert router.holder("c") is router.holder("control") is router.primary is router.holder(None)
    assert router.group_by_holder(["b", "control", "c", "b"]) == {"v2": [0, 3], "latest": [1, 2]}
    assert not router.ready and set(router.problems()) == {"control", "b", "c"}


def test_without_an_experiment_the_variant_is_none(tmp_path):
    router = _router(None, tmp_path)
    assert router.assign(42) is None and router.describe() is None
    assert list(router.holders) == ["latest"] and router.primary is router.holder(None)


# ------------------------------------------------------------------------------ the service


def _copy_bundle(source: Path, models_dir: Path, version: str | None = None) -> Path:
    """Publish `source` again under another version (same model, checksums recomputed)."""
    manifest = json.loads((source / "manifest.json").read_text())
    writers = {name: (lambda path, name=name: shutil.copyfile(source / name, path)) for name in manifest["files"]}
    kept = {k: v for k, v in manifest.items()
            if k not in ("version", "created_at", "files", "library_versions", "git_revision")}
    return write_bundle(models_dir, version or new_version(), writers, kept)


def _logged_since(log_dir: Path, start) -> int:
    if not log_dir.exists():
        return 0
    stamps = pd.read_parquet(log_dir, columns=["timestamp"])["timestamp"]
    return int((stamps >= pd.Timestamp(start)).sum())


@pytest.fixture(scope="module")
def bundles(world, tmp_path_factory):
    """A models dir of its own: the world's bundle (control) and a copy under a new version (treatment)."""
    models_dir = tmp_path_factory.mktemp("experiment_models")
    shutil.copytree(world.bundle, models_dir / world.bundle.name)
    treatment = _copy_bundle(world.bundle, models_dir)
    return models_dir, world.bundle.name, treatment.name


@pytest.fixture(scope="module")
def ab_client(world, bundles, tmp_path_factory):
    models_dir, control, treatment = bundles
    tmp = tmp_path_factory.mktemp("serving_ab")
    settings = world.serving_settings(tmp, models_dir=models_dir, experiment=_experiment(control, treatment))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def users(world):
    return pd.read_parquet(world.settings.raw_dir / "users", columns=["user_id"])["user_id"].tolist()


@pytest.mark.slow
def test_ready_and_model_report_every_variant(ab_client, bundles):
    _, control, treatment = bundles
    ready = ab_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert {v: s["version"] for v, s in ready.json()["variants"].items()} == {"control": control,
                                                                             "treatment": treatment}
    model = ab_client.get("/model").json()
    assert model["version"] == control
    experiment = model["experiment"]
    assert experiment["name"] == "ranker-v2" and experiment["control"] == "control"
    assert experiment["variants"]["treatment"] == {"weight": 50.0, "share": 0.5, "bundle": treatment,
                                                   "version": treatment, "loaded": True, "last_reload_error": None}
    assert 'recsys_model_info{version="%s"} 1.0' % control in ab_client.get("/metrics").text
    assert 'recsys_model_info{version="%s"} 1.0' % treatment in ab_client.get("/metrics").text


@pytest.mark.slow
def test_each_user_gets_the_monitoring_variant_and_its_bundle(ab_client, bundles, users, world):
    _, control, treatment = bundles
    versions = {"control": control, "treatment": treatment}
    when = {"time": world.request_time.isoformat(), "k": 5}
    served = {}
    for user in [*users[:N_USERS], COLD_USER]:
        response = ab_client.get(f"/recommendations/{user}", params=when)
        assert response.status_code == 200, response.text
        body = response.json()
        expected = assign_variant(user, "ranker-v2", {"control": 50, "treatment": 50})
        assert body["variant"] == expected, user
        assert body["model_version"] == versions[expected]
        served[body["request_id"]] = body
    assert {b["variant"] for b in served.values()} == {"control", "treatment"}

    log_dir = Path(ab_client.app.state.services.settings.log_dir)

    def logged():
        if not log_dir.exists():
            return None
        frame = pd.read_parquet(log_dir, columns=["request_id", "user_id", "variant", "model_version"])
        frame = frame[frame.request_id.isin(served)]
        return frame if len(frame) == len(served) else None

    assert wait_for(lambda: logged() is not None)
    for record in logged().itertuples():
        assert record.variant == served[record.request_id]["variant"]
        assert record.model_version == served[record.request_id]["model_version"]

    counted = {(s.labels["variant"], s.labels["model_version"]): s.value
               for family in text_string_to_metric_families(ab_client.get("/metrics").text)
               for s in family.samples if s.name == "recsys_experiment_recommendations_total"}
    for variant, version in versions.items():
        assert counted[(variant, version)] >= sum(b["variant"] == variant for b in served.values())


@pytest.mark.slow
def test_a_batch_of_both_variants_is_scored_per_bundle(ab_client, bundles, users, world):
    """Requests of two variants in one micro-batch: each is scored by its own bundle, with exactly
    what it gets alone."""
    from serving.recommender import Recommendation, _Pending

    _, control, treatment = bundles
    recommender = ab_client.app.state.services.recommender
    chosen = {}
    for user in users:
        chosen.setdefault(recommender.variants.assign(user), user)
        if len(chosen) == 2:
            break

    def pending(user):
        return _Pending(Recommendation(f"r{user}", user, "", world.request_time, "mobile", [],
                                       variant=recommender.variants.assign(user)), 7)

    alone = []
    for user in chosen.values():
        single = pending(user)
        recommender._process([single])
        alone.append(single.result)
    batch = [pending(user) for user in chosen.values()]
    recommender._process(batch)
    assert all(p.error is None for p in batch)
    for single, batched in zip(alone, (p.result for p in batch)):
        assert batched.model_version == {"control": control, "treatment": treatment}[batched.variant]
        assert batched.items == single.items and batched.items


@pytest.mark.slow
def test_the_ab_report_reads_the_variants_the_service_logged(ab_client, users, world, tmp_path):
    """Serve, click, then `python -m monitoring ab` on the served log and the event log."""
    from monitoring.__main__ import app as monitoring_app

    services = ab_client.app.state.services
    start = world.request_time + timedelta(hours=1)  # after the other tests' requests
    items = services.holder.current.item_ids.ids
    clicking = users[-60:]  # users no other test pushes events for
    for i, user in enumerate(clicking):
        when = start + timedelta(minutes=i)
        body = ab_client.get(f"/recommendations/{user}", params={"time": when.isoformat(), "k": 5}).json()
        clicked = body["items"][0]["item_id"] if body["items"] and i % 3 == 0 else int(items[0])
        event = {"user_id": user, "item_id": clicked, "event_type": "click",
                 "timestamp": (when + timedelta(seconds=30)).isoformat()}
        assert ab_client.post("/events", json=event).status_code == 200
    end = start + timedelta(minutes=len(clicking))
    assert wait_for(lambda: _logged_since(Path(services.settings.log_dir), start) >= len(clicking))
    result = CliRunner().invoke(monitoring_app, [
        "ab", "--variants", "control=50,treatment=50", "--experiment", "ranker-v2", "--metric", "clicked",
        "--start", start.isoformat(), "--end", end.isoformat(), "--horizon", "5m", "--unit", "request",
        "--log-dir", str(services.settings.log_dir), "--events-dir", str(services.settings.events_dir),
        "--out", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ab_summary.json").read_text())
    per_variant = {row["variant"]: row for row in summary["per_variant"]}
    assert set(per_variant) == {"control", "treatment"}
    assert sum(row["units"] for row in per_variant.values()) >= 50  # the last 5 minutes' horizon is open
    assert (tmp_path / "ab_report.html").is_file()


@pytest.mark.slow
def test_a_missing_variant_bundle_is_not_ready_and_its_users_get_503(world, bundles, users, tmp_path):
    models_dir, control, _ = bundles
    missing = "not-published-yet"
    settings = world.serving_settings(tmp_path, models_dir=models_dir, experiment=_experiment(control, missing))
    weights = {"control": 50, "treatment": 50}
    by_variant = {}
    for user in users:
        by_variant.setdefault(assign_variant(user, "ranker-v2", weights), user)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["model_loaded"] is False and body["redis_reachable"] is True
        assert "variant 'treatment'" in body["details"]["model_error"] and missing in body["details"]["model_error"]
        assert body["variants"]["treatment"]["loaded"] is False and body["variants"]["control"]["loaded"] is True

        params = {"time": world.request_time.isoformat()}
        assert client.get(f"/recommendations/{by_variant['control']}", params=params).status_code == 200
        refused = client.get(f"/recommendations/{by_variant['treatment']}", params=params)
        assert refused.status_code == 503
        assert "variant 'treatment'" in refused.json()["error"] and "Traceback" not in refused.text
        assert client.get("/model").json()["experiment"]["variants"]["treatment"]["version"] is None

        _copy_bundle(world.bundle, models_dir, missing)  # published later: picked up by the reloader
        assert wait_for(lambda: client.get("/readyz").status_code == 200, timeout=120)  # checked in a child process first
        response = client.get(f"/recommendations/{by_variant['treatment']}", params=params)
        assert response.status_code == 200 and response.json()["model_version"] == missing
