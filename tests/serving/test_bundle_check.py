"""Corrupt bundles whose manifest checksums match: rejected with the reason, never served, and the
server process survives them (LightGBM aborts the process that parses a truncated model)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.bundle import USER_TOWER, BundleError, new_version, write_bundle
from serving.app import create_app
from serving.bundle_check import check_bundle

from .helpers import wait_for

pytestmark = pytest.mark.slow


def truncate(source: Path, path: Path) -> None:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def publish(models_dir: Path, source: Path, corrupt: dict | None = None) -> Path:
    """A copy of bundle `source` as a new version, `corrupt` files written by their own writer
    (name -> writer(source_path, path)); the manifest's checksums are of what was written."""
    manifest = json.loads((source / "manifest.json").read_text())
    writers = {name: (lambda path, name=name: shutil.copyfile(source / name, path)) for name in manifest["files"]}
    for name, writer in (corrupt or {}).items():
        writers[name] = lambda path, name=name, writer=writer: writer(source / name, path)
    kept = {k: v for k, v in manifest.items()
            if k not in ("version", "created_at", "files", "library_versions", "git_revision")}
    return write_bundle(models_dir, new_version(), writers, kept)


CORRUPTIONS = {
    "truncated LightGBM text": lambda bundle: {"ranker.txt": truncate},
    "truncated user tower weights": lambda bundle: {USER_TOWER: truncate},  # what serving loads (numpy)
    "truncated FAISS index": lambda bundle: {"faiss.index": truncate},
    "bad JSON metadata": lambda bundle: {"ranker_spec.json": lambda _, path: path.write_text('{"columns": [')},
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_bundle_is_rejected_in_a_child_process(world, tmp_path, kind):
    bundle = publish(tmp_path, world.bundle, CORRUPTIONS[kind](world.bundle))
    with pytest.raises(BundleError, match=bundle.name) as rejected:
        check_bundle(bundle, None, {}, timeout_s=120)
    started = time.perf_counter()
    with pytest.raises(BundleError) as again:  # the verdict is cached: not retried
        check_bundle(bundle, None, {}, timeout_s=120)
    assert time.perf_counter() - started < 0.5 and str(again.value) == str(rejected.value)


def test_a_truncated_ranker_aborts_its_child_not_the_server(world, tmp_path):
    bundle = publish(tmp_path, world.bundle, {"ranker.txt": truncate})
    with pytest.raises(BundleError, match="crashed the process that loaded it|cannot be loaded") as rejected:
        check_bundle(bundle, None, {}, timeout_s=120)
    print(rejected.value)


def test_started_on_a_broken_latest_the_service_is_up_not_ready_and_recovers(world, tmp_path):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    broken = publish(models_dir, world.bundle, {"ranker.txt": truncate})
    settings = world.serving_settings(tmp_path, models_dir=models_dir)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["model_loaded"] is False
        reason = ready.json()["details"]["model_error"]
        assert broken.name in reason and "rejected" in reason
        assert str(models_dir) not in ready.text
        answer = client.get("/recommendations/1")
        assert answer.status_code == 503 and broken.name in answer.json()["error"]

        good = publish(models_dir, world.bundle)
        assert wait_for(lambda: client.get("/readyz").status_code == 200, timeout=120)
        assert client.get("/recommendations/1").json()["model_version"] == good.name
        model = client.get("/model").json()
        assert broken.name in model["rejected_bundles"]
        assert str(models_dir) not in json.dumps(model)


def test_a_corrupt_bundle_published_while_serving_is_never_swapped_in(world, tmp_path):
    models_dir = tmp_path / "models"
    shutil.copytree(world.bundle, models_dir / world.bundle.name)
    (models_dir / "latest").write_text(world.bundle.name + "\n")
    settings = world.serving_settings(tmp_path, models_dir=models_dir)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        services = client.app.state.services
        assert client.get("/readyz").status_code == 200
        broken = publish(models_dir, world.bundle, {"faiss.index": truncate, "ranker.txt": truncate})
        assert wait_for(lambda: broken.name in services.holder.rejected, timeout=120)
        assert client.get("/recommendations/1").json()["model_version"] == world.bundle.name
        assert client.get("/readyz").status_code == 200
