"""Business rules as pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from serving.rules import (
    RuleConfig,
    apply_rules,
    by_score,
    category_cap,
    category_similarity,
    dedup_best,
    embedding_similarity,
    freshness_boost,
    mmr,
    not_seen,
)

NONE = RuleConfig(exclude_seen=False, dedup=False, diversity="none", freshness_boost=0.0)


def test_not_seen_removes_interacted_items():
    assert not_seen(np.array([1, 2, 3, 4]), {2, 4, 99}).tolist() == [True, False, True, False]
    assert not_seen(np.array([1, 2]), []).tolist() == [True, True]


def test_dedup_keeps_the_best_score_of_each_item_in_input_order():
    keep = dedup_best(np.array([7, 3, 7, 5, 3]), np.array([0.1, 0.9, 0.8, 0.5, 0.2]))
    assert keep.tolist() == [1, 2, 3]
    assert dedup_best(np.array([1, 1]), np.array([0.5, 0.5])).tolist() == [0]  # ties: first wins
    assert dedup_best(np.array([], dtype=np.int64), np.array([])).tolist() == []


def test_freshness_boost_is_in_score_standard_deviations():
    scores = np.array([1.0, 2.0, 3.0])
    boosted = freshness_boost(scores, np.array([False, False, True]), 0.5)
    assert boosted.tolist() == pytest.approx([1.0, 2.0, 3.0 + 0.5 * np.std(scores)])
    assert freshness_boost(scores, np.array([True, True, True]), 0.0).tolist() == scores.tolist()
    assert freshness_boost(np.array([2.0, 2.0]), np.array([True, False]), 1.0).tolist() == [3.0, 2.0]


def test_freshness_boost_can_lift_a_new_item_above_an_old_one():
    ids, scores = np.array([1, 2]), np.array([1.0, 0.9])
    # std of the scores is 0.05: a boost of 3 std lifts the new item by 0.15.
    config = RuleConfig(exclude_seen=False, dedup=False, diversity="none", freshness_boost=3.0)
    chosen, _ = apply_rules(ids, scores, np.array(["a", "a"], dtype=object), np.array([False, True]), 2, config)
    assert ids[chosen].tolist() == [2, 1]
    chosen, _ = apply_rules(ids, scores, np.array(["a", "a"], dtype=object), np.array([False, True]), 2, NONE)
    assert ids[chosen].tolist() == [1, 2]


def test_category_cap_limits_each_category_and_fills_when_short():
    categories = np.array(["a", "a", "a", "b", "a", "c"], dtype=object)
    order = by_score(np.array([6, 5, 4, 3, 2, 1.0]))
    assert category_cap(order, categories, cap=2, k=4).tolist() == [0, 1, 3, 5]
    # Only two categories: the cap cannot be met for k=5, so the best skipped items fill the list.
    two = np.array(["a", "a", "a", "b", "a"], dtype=object)
    assert category_cap(by_score(np.array([5, 4, 3, 2, 1.0])), two, cap=1, k=3).tolist() == [0, 3, 1]


def test_mmr_trades_relevance_for_diversity():
    scores = np.array([1.0, 0.99, 0.5])
    similarity = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1.0]])  # items 0 and 1 are duplicates in kind
    assert mmr(scores, similarity, 2, lam=1.0).tolist() == [0, 1]  # pure relevance
    assert mmr(scores, similarity, 2, lam=0.5).tolist() == [0, 2]  # diversity wins
    assert mmr(scores, similarity, 10, lam=0.5).tolist() == [0, 2, 1]


def test_similarities():
    assert category_similarity(np.array(["a", "b", "a"], dtype=object)).tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    sim = embedding_similarity(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]))
    assert sim.round(6).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_apply_rules_end_to_end():
    ids = np.array([10, 11, 12, 10, 13, 14, 15])
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.6, 0.5, 0.4])
    categories = np.array(["x", "x", "x", "x", "y", "y", "z"], dtype=object)
    is_new = np.zeros(7, dtype=bool)
    config = RuleConfig(exclude_seen=True, dedup=True, diversity="category_cap", max_per_category=2,
                        freshness_boost=0.0)
    chosen, final = apply_rules(ids, scores, categories, is_new, 4, config, seen={11})
    assert ids[chosen].tolist() == [10, 12, 13, 14]  # 11 seen, 10 deduplicated (best kept), x capped at 2
    assert chosen[0] == 3 and final.tolist() == [0.95, 0.7, 0.6, 0.5]


def test_apply_rules_mmr_with_embeddings():
    ids = np.arange(4)
    scores = np.array([1.0, 0.98, 0.97, 0.5])
    embeddings = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1.0]])
    config = RuleConfig(exclude_seen=False, dedup=True, diversity="mmr", mmr_lambda=0.5, freshness_boost=0.0)
    chosen, _ = apply_rules(ids, scores, np.array(["a"] * 4, dtype=object), np.zeros(4, bool), 2, config,
                            embeddings=embeddings)
    assert chosen.tolist() == [0, 3]


def test_each_rule_can_be_switched_off():
    ids = np.array([1, 1, 2])
    scores = np.array([0.5, 0.9, 0.1])
    chosen, _ = apply_rules(ids, scores, np.array(["a"] * 3, dtype=object), np.zeros(3, bool), 3, NONE, seen={2})
    assert ids[chosen].tolist() == [1, 1, 2]


def test_invalid_rule_config_is_refused():
    with pytest.raises(ValueError):
        RuleConfig(diversity="random")
    with pytest.raises(ValueError):
        RuleConfig(max_per_category=0)
