"""The DCN-v2 ranker: numpy forward pass against torch's, its inputs, training with early stopping,
the refit, persistence, and NDCG computed as LightGBM computes it."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest
import torch

from core.inference.dcn import DCNScorer, DCNSpec, fit_dcn_spec, load_dcn, save_dcn
from core.inference.frame import fit_feature_spec, model_array
from core.inference.ranker import DCN, Ranker, as_ranker, score
from core.metrics import grouped_ndcg, ranking_metrics
from training.ranking.dcn import DCNConfig, DCNNetwork, RankingSet, listwise_loss, refit_dcn, train_dcn
from training.ranking.lgbm_ranker import RankerConfig, train_ranker

CONFIG = DCNConfig(epochs=12, patience=3, learning_rate=3e-3, groups_per_batch=32, deep_layers=(32, 16), seed=3)


@pytest.fixture(scope="module")
def spec(ranking_splits):
    return fit_feature_spec(ranking_splits["train"])


@pytest.fixture(scope="module")
def trained(ranking_splits, spec):
    return train_dcn(ranking_splits["train"], ranking_splits["val"], spec, CONFIG)


def raw_matrix(n: int, seed: int = 0) -> np.ndarray:
    """Three numeric columns (one heavy-tailed count, one with missing values) and two categorical
    codes, one of them sometimes missing or unseen (code 9 of a 3-value vocabulary)."""
    rng = np.random.default_rng(seed)
    count = rng.poisson(40, n).astype(float)
    gappy = rng.normal(2.0, 3.0, n)
    gappy[rng.random(n) < 0.2] = np.nan
    device = rng.integers(0, 3, n).astype(float)
    device[rng.random(n) < 0.1] = np.nan
    device[rng.random(n) < 0.05] = 9.0
    return np.column_stack([count, gappy, rng.normal(size=n), device, rng.integers(0, 5, n)])


def random_network(dcn_spec: DCNSpec, seed: int = 0) -> DCNNetwork:
    torch.manual_seed(seed)
    network = DCNNetwork(dcn_spec)
    with torch.no_grad():  # every weight away from its initial value (near-identity cross layers, zero biases)
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    return network.eval()


def fitted_spec(structure: str = "parallel", deep_layers=(16, 8)) -> DCNSpec:
    return fit_dcn_spec(raw_matrix(500), ["count", "gappy", "plain", "device", "bucket"], 3, [3, 5],
                        embedding_dim=3, cross_layers=2, deep_layers=deep_layers, structure=structure)


@pytest.mark.parametrize(("structure", "deep_layers"), [("parallel", (16, 8)), ("stacked", (16, 8)),
                                                        ("parallel", ())])
def test_numpy_forward_equals_torch(structure, deep_layers):
    dcn_spec = fitted_spec(structure, deep_layers)
    network = random_network(dcn_spec)
    scorer = DCNScorer(dcn_spec, network.state_arrays())
    matrix = raw_matrix(300, seed=1)
    dense, codes = dcn_spec.dense_inputs(matrix), dcn_spec.category_codes(matrix)
    with torch.no_grad():
        expected = network(torch.from_numpy(dense), torch.from_numpy(codes)).numpy()
    np.testing.assert_allclose(scorer.predict(matrix), expected, rtol=1e-5, atol=1e-5)
    assert np.std(expected) > 0.1  # the comparison is not between two constants
    assert scorer.predict(matrix[:0]).shape == (0,)


def test_inputs_standardize_with_training_statistics_and_flag_missing_values():
    dcn_spec = fitted_spec()
    assert dcn_spec.log_columns == (0,)  # the count spans orders of magnitude; the others are signed
    assert dcn_spec.indicator_columns == (1,)  # only "gappy" had missing values in training
    dense = dcn_spec.dense_inputs(raw_matrix(500))  # the training rows themselves
    np.testing.assert_allclose(dense[:, [0, 2]].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(dense[:, [0, 2]].std(axis=0), 1.0, atol=1e-4)
    rows = np.array([[np.nan, np.nan, 1e9, np.nan, 1.0], [np.inf, 2.0, -1e9, 9.0, 4.0]])
    dense = dcn_spec.dense_inputs(rows)
    assert dense.shape == (2, 4)  # three numeric columns and one missing indicator
    assert dense[0, 0] == 0.0 and dense[0, 1] == 0.0 and dense[0, 3] == 1.0  # missing -> 0, flagged
    assert dense[1, 0] == 0.0 and dense[1, 3] == 0.0  # an infinite value is missing; "count" has no flag
    assert dense[0, 2] == dcn_spec.clip and dense[1, 2] == -dcn_spec.clip
    assert dcn_spec.category_codes(rows).tolist() == [[3, 1], [3, 4]]  # missing and unseen share row 3


def test_training_reaches_a_useful_ndcg_and_keeps_its_best_epoch(trained, ranking_splits, spec):
    val = RankingSet.from_rows(ranking_splits["val"], spec, len(CONFIG.label_gain))
    curve = trained.history["val_ndcg@10"]
    random_ndcg = grouped_ndcg(np.random.default_rng(0).random(len(val.labels)), val.labels, val.sizes, 10)
    assert trained.best_score > random_ndcg + 0.25, (trained.best_score, random_ndcg)
    assert trained.best_score == max(curve) and curve[trained.best_epoch - 1] == trained.best_score
    assert len(curve) == CONFIG.epochs or len(curve) == trained.best_epoch + CONFIG.patience
    # The weights handed over are the best epoch's, not the last one's.
    assert grouped_ndcg(trained.scorer.predict(val.matrix), val.labels, val.sizes, 10) == pytest.approx(
        trained.best_score, abs=1e-6)
    assert len(trained.history["train_loss"]) == len(curve)
    assert trained.history["train_loss"][-1] < trained.history["train_loss"][0]


def test_early_stopping_restores_an_earlier_epoch_when_validation_gets_worse(ranking_splits, spec):
    """Few training requests, a large step and no weight decay overfit: validation peaks early."""
    train = ranking_splits["train"]
    few = train[train["request_id"].isin(sorted(train["request_id"].unique())[:15])]
    config = replace(CONFIG, epochs=40, patience=4, learning_rate=3e-2, weight_decay=0.0, groups_per_batch=4)
    result = train_dcn(few, ranking_splits["val"], spec, config)
    curve = result.history["val_ndcg@10"]
    assert result.best_epoch < len(curve) == result.best_epoch + config.patience < config.epochs
    val = RankingSet.from_rows(ranking_splits["val"], spec, len(config.label_gain))
    assert grouped_ndcg(result.scorer.predict(val.matrix), val.labels, val.sizes, 10) == pytest.approx(
        curve[result.best_epoch - 1], abs=1e-6)
    assert curve[-1] < result.best_score


def test_training_is_deterministic_under_its_seed(ranking_splits, spec, trained):
    again = train_dcn(ranking_splits["train"], ranking_splits["val"], spec, CONFIG)
    assert again.history == trained.history
    for name, array in trained.scorer.weights.items():
        np.testing.assert_array_equal(again.scorer.weights[name], array)


def test_refit_trains_for_the_validated_epochs_on_more_rows(trained, ranking_splits):
    both = __import__("pandas").concat([ranking_splits["train"], ranking_splits["val"]], ignore_index=True)
    refit = refit_dcn(both, trained)
    assert refit.best_epoch == trained.best_epoch == len(refit.history["train_loss"])
    assert "val_ndcg@10" not in refit.history
    assert refit.best_score == trained.best_score
    test = ranking_splits["test"]
    test_set = RankingSet.from_rows(test, trained.spec, len(CONFIG.label_gain))
    refit_ndcg = grouped_ndcg(refit.scorer.predict(test_set.matrix), test_set.labels, test_set.sizes, 10)
    random_ndcg = grouped_ndcg(np.random.default_rng(1).random(len(test_set.labels)), test_set.labels,
                               test_set.sizes, 10)
    assert refit_ndcg > random_ndcg + 0.25
    assert refit.scorer.spec.mean != trained.scorer.spec.mean  # statistics of the rows it was refitted on
    assert refit_dcn(both, trained, epochs=2).best_epoch == 2


def test_save_and_load_give_identical_scores_without_pickle(trained, ranking_splits, tmp_path):
    weights, config = tmp_path / "ranker_dcn.npz", tmp_path / "ranker_dcn.json"
    save_dcn(trained.scorer, weights, config)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
    assert json.loads(config.read_text())["feature_names"] == trained.spec.columns
    with np.load(weights, allow_pickle=False) as arrays:
        assert all(arrays[name].dtype == np.float32 for name in arrays.files)
    loaded = load_dcn(weights, config)
    test = ranking_splits["test"]
    np.testing.assert_array_equal(score(loaded, test, trained.spec), score(trained.scorer, test, trained.spec))
    assert isinstance(loaded, Ranker) and as_ranker(loaded) is loaded and loaded.kind == DCN
    np.testing.assert_array_equal(loaded.predict(model_array(test, trained.spec), num_threads=1),
                                  score(loaded, test, trained.spec))


def test_loader_refuses_weights_that_do_not_fit_the_config(trained, tmp_path):
    weights = dict(trained.scorer.weights)
    weights["cross.0.weight"] = weights["cross.0.weight"][:, :-1]
    with pytest.raises(ValueError, match=r"cross\.0\.weight"):
        DCNScorer(trained.scorer.spec, weights)
    del weights["head.bias"]
    with pytest.raises(ValueError, match="do not fit"):
        DCNScorer(trained.scorer.spec, weights)
    config = tmp_path / "ranker_dcn.json"
    config.write_text(json.dumps({**json.loads(trained.scorer.spec.to_json()), "format_version": 99}))
    with pytest.raises(ValueError, match="format version"):
        DCNSpec.from_json(config.read_text())


def test_score_refuses_a_spec_with_other_columns(trained, ranking_splits):
    other = fit_feature_spec(ranking_splits["test"].drop(columns=["retrieval_rank"]))
    with pytest.raises(ValueError, match="differ from the spec"):
        score(trained.scorer, ranking_splits["test"], other)


def test_grouped_ndcg_is_lightgbms_ndcg_and_the_offline_metric(ranking_splits, spec):
    lightgbm = train_ranker(ranking_splits["train"], ranking_splits["val"], spec,
                            RankerConfig(num_leaves=15, min_data_in_leaf=20, num_boost_round=30))
    val = RankingSet.from_rows(ranking_splits["val"], spec, 5)
    scores = lightgbm.scorer.predict(val.matrix)
    assert grouped_ndcg(scores, val.labels, val.sizes, 10) == pytest.approx(lightgbm.best_score, abs=1e-9)
    offsets = val.offsets
    recommended = {g: list(np.argsort(-scores[a:b], kind="stable")) for g, (a, b) in
                   enumerate(pairwise(offsets))}
    relevant = {g: dict(enumerate(val.labels[a:b].astype(float))) for g, (a, b) in
                enumerate(pairwise(offsets))}
    assert grouped_ndcg(scores, val.labels, val.sizes, 10) == pytest.approx(
        ranking_metrics(recommended, relevant, ks=[10])["ndcg@10"], abs=1e-12)
    assert grouped_ndcg(np.zeros(3), np.zeros(3, dtype=int), [3], 10) == 1.0  # no positive: LightGBM's 1
    with pytest.raises(ValueError, match="add up"):
        grouped_ndcg(np.zeros(3), np.zeros(3), [2], 10)


def test_listwise_loss_prefers_the_order_of_the_gains():
    gains = torch.tensor([0.0, 15.0, 1.0, 0.0, 0.0])
    slots = (torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 1, 2, 0, 1]))
    good = listwise_loss(torch.tensor([0.0, 3.0, 1.0, 0.0, 1.0]), gains, slots)
    bad = listwise_loss(torch.tensor([3.0, 0.0, 1.0, 1.0, 0.0]), gains, slots)
    assert good < bad  # the second request has no positive and does not count
    assert listwise_loss(torch.zeros(2), torch.zeros(2), (torch.tensor([0, 0]), torch.tensor([0, 1]))) is None
