"""MatrixPlan: which block (candidate, item, request, pair) feeds each ranker column."""

from __future__ import annotations

import numpy as np
import pytest

from core.inference.frame import CATEGORY_SHARE, FeatureSpec, model_array
from serving.ranker_input import CANDIDATE, ITEM, PAIR, REQUEST, MatrixPlan


def test_matrix_plan_places_every_column_in_its_block():
    spec = FeatureSpec(numeric=[CATEGORY_SHARE, "item_daily__ctr_30d", "retrieval_rank", "user_daily__ctr_30d",
                                "user_category__category_events_30d", "hour_of_day"],
                       categorical=["device", "item_profile__item_category"],
                       vocabularies={"device": ["desktop", "mobile"], "item_profile__item_category": ["a", "b"]})
    plan = MatrixPlan.build(spec, item_columns={"item_daily__ctr_30d", "item_profile__item_category"},
                            user_columns={"user_daily__ctr_30d"}, pair_columns={"user_category__category_events_30d"})
    blocks = {kind: [spec.columns[j] for j in block.positions] for kind, block in plan.blocks.items()}
    assert blocks == {CANDIDATE: ["retrieval_rank"], ITEM: ["item_daily__ctr_30d", "item_profile__item_category"],
                      REQUEST: ["user_daily__ctr_30d", "hour_of_day", "device"],
                      PAIR: [CATEGORY_SHARE, "user_category__category_events_30d"]}
    assert plan.blocks[PAIR].inputs == ["user_category__category_weighted_events_30d", "user_daily__weighted_events_30d",
                                        "user_category__category_events_30d"]
    with pytest.raises(ValueError, match="'item_daily__unknown' has no online source"):
        MatrixPlan.build(FeatureSpec(["item_daily__unknown"], [], {}), set(), set(), set())


def test_assemble_gathers_request_and_pair_rows_per_candidate():
    spec = FeatureSpec(numeric=["retrieval_rank", "item_daily__ctr_30d", "user_daily__ctr_30d",
                                "user_category__category_events_30d"], categorical=[], vocabularies={})
    plan = MatrixPlan.build(spec, {"item_daily__ctr_30d"}, {"user_daily__ctr_30d"}, {"user_category__category_events_30d"})
    candidates = {"retrieval_rank": np.array([1, 2, 3])}
    items = np.array([[0.1], [0.2], [np.nan]])
    requests = plan.blocks[REQUEST].rows({"user_daily__ctr_30d": np.array([0.5, 0.7])})
    pairs = plan.blocks[PAIR].rows({"user_category__category_events_30d": np.array([4.0, np.nan])})
    matrix = plan.assemble(candidates, items, requests, np.array([0, 0, 1]), pairs, np.array([1, 0, 0]))
    joined = {"retrieval_rank": [1, 2, 3], "item_daily__ctr_30d": [0.1, 0.2, np.nan],
              "user_daily__ctr_30d": [0.5, 0.5, 0.7], "user_category__category_events_30d": [np.nan, 4.0, 4.0]}
    np.testing.assert_array_equal(matrix, model_array(joined, spec))
    assert matrix[0, 3] == 0.0  # a missing count is 0, as model_array makes it


def test_relative_scores_are_candidate_columns():
    from core.inference.candidates import ALS_RELATIVE_FEATURES, RELATIVE_FEATURES

    columns = [*RELATIVE_FEATURES, *ALS_RELATIVE_FEATURES]
    plan = MatrixPlan.build(FeatureSpec(columns, [], {}), set(), set(), set())
    assert plan.blocks[CANDIDATE].spec.columns == columns
    assert all(len(plan.blocks[kind].positions) == 0 for kind in (ITEM, REQUEST, PAIR))
