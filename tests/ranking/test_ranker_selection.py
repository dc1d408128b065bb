"""The choice between ranker kinds on validation (LightGBM and DCN trained on the same rows)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from core.inference.frame import fit_feature_spec
from core.inference.ranker import DCN, LIGHTGBM
from training.ranking.dcn import DCNConfig, RankingSet
from training.ranking.lgbm_ranker import RankerConfig
from training.ranking.selection import SELECTION_METRIC, refit, select_ranker_kind, validation_ndcg

GOOD_LIGHTGBM = RankerConfig(learning_rate=0.1, num_leaves=15, min_data_in_leaf=20, num_boost_round=60,
                             early_stopping_rounds=10)
# No leaf can hold this many rows: every tree is a single leaf, every score the same.
NO_SPLIT_LIGHTGBM = replace(GOOD_LIGHTGBM, min_data_in_leaf=10**7, num_boost_round=3)
GOOD_DCN = DCNConfig(epochs=8, patience=3, learning_rate=3e-3, groups_per_batch=32, deep_layers=(32, 16), seed=3)
UNTRAINED_DCN = replace(GOOD_DCN, epochs=1, learning_rate=1e-7)


@pytest.fixture(scope="module")
def spec(ranking_splits):
    return fit_feature_spec(ranking_splits["train"])


@pytest.fixture(scope="module")
def dcn_wins(ranking_splits, spec):
    return select_ranker_kind(ranking_splits["train"], ranking_splits["val"], spec, ("lightgbm", "dcn"),
                              NO_SPLIT_LIGHTGBM, None, GOOD_DCN)


def test_selection_picks_the_kind_with_the_higher_validation_ndcg(ranking_splits, spec, dcn_wins):
    lightgbm_wins = select_ranker_kind(ranking_splits["train"], ranking_splits["val"], spec, ("lightgbm", "dcn"),
                                       GOOD_LIGHTGBM, None, UNTRAINED_DCN)
    assert dcn_wins.chosen == DCN and dcn_wins.best is dcn_wins.validated[DCN]
    assert dcn_wins.validation_scores[DCN] > dcn_wins.validation_scores[LIGHTGBM] + 0.1
    assert lightgbm_wins.chosen == LIGHTGBM
    assert lightgbm_wins.validation_scores[LIGHTGBM] > lightgbm_wins.validation_scores[DCN] + 0.1
    # Each score is that ranker's own validation NDCG@10, LightGBM's as LightGBM reports it.
    assert dcn_wins.validation_scores[DCN] == pytest.approx(dcn_wins.validated[DCN].best_score, abs=1e-6)
    assert lightgbm_wins.validation_scores[LIGHTGBM] == pytest.approx(
        lightgbm_wins.validated[LIGHTGBM].best_score, abs=1e-9)
    record = dcn_wins.to_dict()
    assert record["chosen"] == DCN and record["metric"] == SELECTION_METRIC == "ndcg@10"
    assert set(record["validation"]) == {LIGHTGBM, DCN}
    assert record["dcn_best_epoch"] == dcn_wins.validated[DCN].best_epoch


def test_a_single_kind_is_chosen_and_unknown_kinds_are_refused(ranking_splits, spec):
    alone = select_ranker_kind(ranking_splits["train"], ranking_splits["val"], spec, ("lightgbm",), GOOD_LIGHTGBM)
    assert alone.chosen == LIGHTGBM and set(alone.validated) == {LIGHTGBM}
    assert alone.lightgbm_trace[0]["best_iteration"] == alone.best.best_iteration
    for kinds in [(), ("xgboost",), ("dcn", "dcn")]:
        with pytest.raises(ValueError, match="ranker kinds"):
            select_ranker_kind(ranking_splits["train"], ranking_splits["val"], spec, kinds)


def test_refit_keeps_the_kind_and_its_validated_length(ranking_splits, dcn_wins):
    both = pd.concat([ranking_splits["train"], ranking_splits["val"]], ignore_index=True)
    dcn = refit(dcn_wins.validated[DCN], both)
    lightgbm = refit(dcn_wins.validated[LIGHTGBM], both)
    assert (dcn.kind, dcn.best_epoch) == (DCN, dcn_wins.validated[DCN].best_epoch)
    assert (lightgbm.kind, lightgbm.best_iteration) == (LIGHTGBM, dcn_wins.validated[LIGHTGBM].best_iteration)
    val = RankingSet.from_rows(ranking_splits["val"], dcn.spec, 5)
    assert validation_ndcg(dcn, val) > 0.9  # it has seen the validation rows now
