import json
import re
from pathlib import Path

import pytest

from core.bundle import (
    BundleError,
    load_manifest,
    new_version,
    resolve_bundle,
    write_bundle,
)

FEATURES = ["item_daily__ctr_30d", "retrieval_score", "device"]


def text_writer(content: str):
    def write(path: Path) -> None:
        path.write_text(content)

    return write


def publish(models_dir: Path, version: str, content: str = "model") -> Path:
    return write_bundle(
        models_dir,
        version,
        {"ranker.txt": text_writer(content), "feature_spec.json": text_writer("{}")},
        {"feature_service": "ranking", "features": FEATURES, "metrics": {"ndcg@10": 0.5}},
    )


def test_new_version_format():
    version = new_version()
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", version)
    assert new_version() != version


def test_round_trip_and_latest_points_to_newest(tmp_path):
    first = publish(tmp_path, "20261122T031500Z-aaaaaa", "first")
    second = publish(tmp_path, "20261122T041500Z-bbbbbb", "second")
    assert (tmp_path / "latest").read_text().strip() == second.name
    assert resolve_bundle(tmp_path) == second
    assert resolve_bundle(tmp_path, first.name) == first

    manifest = load_manifest(second, expected_features=FEATURES)
    assert manifest["version"] == second.name
    assert manifest["feature_service"] == "ranking"
    assert manifest["metrics"] == {"ndcg@10": 0.5}
    assert set(manifest["files"]) == {"ranker.txt", "feature_spec.json"}
    assert {"lightgbm", "torch", "faiss", "feast", "pyspark", "pandas", "numpy"} <= set(
        manifest["library_versions"]
    )
    assert "git_revision" in manifest and "created_at" in manifest
    assert (second / "ranker.txt").read_text() == "second"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_failing_writer_leaves_no_bundle_and_latest_unchanged(tmp_path):
    good = publish(tmp_path, "20261122T031500Z-aaaaaa")

    def boom(path: Path) -> None:
        path.write_text("partial")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        write_bundle(
            tmp_path,
            "20261122T041500Z-bbbbbb",
            {"ranker.txt": text_writer("ok"), "index.faiss": boom},
            {"feature_service": "ranking", "features": FEATURES},
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name, "latest"]
    assert resolve_bundle(tmp_path) == good


def test_tampered_file_is_rejected(tmp_path):
    bundle = publish(tmp_path, "20261122T031500Z-aaaaaa")
    (bundle / "ranker.txt").write_text("tampered")
    with pytest.raises(BundleError, match="sha256"):
        load_manifest(bundle)


def test_missing_file_and_bad_json_are_rejected(tmp_path):
    bundle = publish(tmp_path, "20261122T031500Z-aaaaaa")
    (bundle / "feature_spec.json").unlink()
    with pytest.raises(BundleError, match="feature_spec.json"):
        load_manifest(bundle)
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        load_manifest(bundle)


def test_required_keys_are_checked(tmp_path):
    bundle = publish(tmp_path, "20261122T031500Z-aaaaaa")
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["feature_service"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="feature_service"):
        load_manifest(bundle)


def test_feature_list_mismatch_names_the_difference(tmp_path):
    bundle = publish(tmp_path, "20261122T031500Z-aaaaaa")
    with pytest.raises(BundleError, match=r"missing.*user_profile__age"):
        load_manifest(bundle, expected_features=[*FEATURES, "user_profile__age"])
    with pytest.raises(BundleError, match=r"extra.*device"):
        load_manifest(bundle, expected_features=FEATURES[:2])
    with pytest.raises(BundleError, match="order"):
        load_manifest(bundle, expected_features=FEATURES[::-1])


def test_missing_latest_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="latest"):
        resolve_bundle(tmp_path)
    with pytest.raises(BundleError, match="not found"):
        resolve_bundle(tmp_path, "20261122T031500Z-aaaaaa")
