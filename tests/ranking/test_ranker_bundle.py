"""A whole model bundle with either kind of ranker (LightGBM or DCN): saved, verified, loaded for
serving, smoke-tested and scored through the common interface."""

from __future__ import annotations

import json
import shutil

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from core.bundle import (
    MANIFEST_FILE,
    RANKER,
    RANKER_DCN_CONFIG,
    RANKER_DCN_WEIGHTS,
    RANKER_KIND_KEY,
    Bundle,
    BundleError,
)
from core.inference import ann_index
from core.inference.dcn import DCNScorer
from core.inference.frame import fit_feature_spec, model_array
from core.inference.inputs import UserInputSpec, item_features
from core.inference.ranker import DCN, LIGHTGBM, as_ranker, lightgbm_booster, score
from serving.model import LoadedModel
from training.ranking.dcn import DCNConfig, train_dcn
from training.ranking.lgbm_ranker import RankerConfig, train_ranker
from training.retrieval.two_tower import TwoTowerConfig, TwoTowerModel

FEATURES = ["item_daily__ctr_30d", "retrieval_score", "device"]  # the manifest's feature service list


@pytest.fixture(scope="module")
def spec(ranking_splits):
    return fit_feature_spec(ranking_splits["train"])


@pytest.fixture(scope="module")
def rankers(ranking_splits, spec):
    """kind -> a trained ranker behind the common interface."""
    train, val = ranking_splits["train"], ranking_splits["val"]
    return {DCN: train_dcn(train, val, spec, DCNConfig(epochs=3, deep_layers=(16,), seed=1)).scorer,
            LIGHTGBM: train_ranker(train, val, spec, RankerConfig(num_leaves=7, min_data_in_leaf=20,
                                                                  num_boost_round=20)).scorer}


def bundle_with(ranker, spec, n_items: int = 12, n_users: int = 5) -> Bundle:
    """A complete, small bundle: an untrained two-tower, its FAISS index, and `ranker`."""
    categories = ["a", "b"]
    catalog = pd.DataFrame({"item_id": np.arange(100, 100 + n_items), "category": ["a", "b"] * (n_items // 2),
                            "price": np.linspace(1, 20, n_items)})
    user_spec = UserInputSpec([], [], history_length=4)
    model = TwoTowerModel(TwoTowerConfig(epochs=0, progress=False), n_users, n_items, len(categories) + 1, 0, 1)
    item_emb = model.eval().item_embeddings(item_features(catalog, categories))
    return Bundle.from_two_tower_state(
        model.state_arrays(), two_tower_config=model.metadata(), user_spec=user_spec,
        index=ann_index.build_index(item_emb), item_embeddings=item_emb, ranker=ranker, ranker_spec=spec,
        item_ids=catalog["item_id"].to_numpy(), user_ids=np.arange(n_users), categories=categories,
        item_available_from=np.zeros(n_items, dtype=np.int64), covisitation=np.eye(n_items),
        trending_scores=np.linspace(1, 0, n_items),
        manifest={"feature_service": "ranking", "features": FEATURES, "ranker_features": spec.columns})


@pytest.fixture(scope="module")
def saved(rankers, spec, tmp_path_factory):
    """kind -> (bundle directory, the ranker saved in it)."""
    models_dir = tmp_path_factory.mktemp("models")
    out = {}
    for kind, version in ((DCN, "20261122T031500Z-aaaaaa"), (LIGHTGBM, "20261122T041500Z-bbbbbb")):
        model = rankers[kind]
        out[kind] = (bundle_with(model, spec).save(models_dir, version), model)
    return out


@pytest.mark.parametrize("kind", [DCN, LIGHTGBM])
def test_a_bundle_with_either_ranker_loads_and_scores_through_the_common_interface(saved, kind, ranking_splits,
                                                                                     spec):
    bundle_dir, model = saved[kind]
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest[RANKER_KIND_KEY] == kind
    ranker_files = {DCN: {RANKER_DCN_WEIGHTS, RANKER_DCN_CONFIG}, LIGHTGBM: {RANKER}}[kind]
    assert ranker_files <= set(manifest["files"])
    assert not ({RANKER, RANKER_DCN_WEIGHTS, RANKER_DCN_CONFIG} - ranker_files) & set(manifest["files"])
    loaded = Bundle.load(bundle_dir, expected_features=FEATURES)
    assert isinstance(loaded.ranker, DCNScorer if kind == DCN else lgb.Booster)
    test = ranking_splits["test"]
    np.testing.assert_allclose(score(loaded.ranker, test, spec), score(model, test, spec), rtol=0, atol=1e-12)

    served = LoadedModel.load(bundle_dir, FEATURES)  # verified, assembled and smoke-tested as serving does
    assert served.ranker.kind == kind and served.ranker.feature_names == spec.columns
    matrix = model_array(test, spec)
    np.testing.assert_array_equal(served.ranker.predict(matrix, num_threads=1), score(model, test, spec))
    assert (lightgbm_booster(loaded.ranker) is None) == (kind == DCN)  # LightGBM-only extras degrade for DCN


def test_a_bundle_without_a_ranker_kind_is_a_lightgbm_one(saved, tmp_path):
    """Bundles written before there were kinds have ranker.txt and no "ranker_kind"."""
    source, _ = saved[LIGHTGBM]
    bundle_dir = tmp_path / source.name
    shutil.copytree(source, bundle_dir)
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    del manifest[RANKER_KIND_KEY]
    (bundle_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert as_ranker(Bundle.load(bundle_dir).ranker).kind == LIGHTGBM


def test_a_dcn_bundle_with_a_changed_or_unknown_ranker_is_refused(saved, tmp_path):
    source, _ = saved[DCN]
    tampered = tmp_path / "tampered" / source.name
    shutil.copytree(source, tampered)
    config = json.loads((tampered / RANKER_DCN_CONFIG).read_text())
    (tampered / RANKER_DCN_CONFIG).write_text(json.dumps({**config, "clip": 3.0}))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Bundle.load(tampered)

    unknown = tmp_path / "unknown" / source.name
    shutil.copytree(source, unknown)
    manifest = json.loads((unknown / MANIFEST_FILE).read_text())
    (unknown / MANIFEST_FILE).write_text(json.dumps({**manifest, RANKER_KIND_KEY: "xgboost"}))
    with pytest.raises(BundleError, match="unknown ranker kind 'xgboost'"):
        Bundle.load(unknown)
    with pytest.raises(BundleError, match="unknown ranker kind"):
        LoadedModel.load(unknown, None)

    mislabelled = tmp_path / "mislabelled" / source.name
    shutil.copytree(source, mislabelled)
    manifest = json.loads((mislabelled / MANIFEST_FILE).read_text())
    (mislabelled / MANIFEST_FILE).write_text(json.dumps({**manifest, RANKER_KIND_KEY: LIGHTGBM}))
    with pytest.raises(BundleError, match=f"{RANKER} not in the manifest"):
        Bundle.load(mislabelled)
