from math import log2

import numpy as np
import pytest

from core.metrics import metrics_table, ranking_metrics


def test_binary_relevance_one_user_known_positions() -> None:
    # Relevant items 2, 5, 9; hits at ranks 2 and 5 of the top-5.
    metrics = ranking_metrics({7: [1, 2, 3, 4, 5]}, {7: {2: 1, 5: 1, 9: 1}}, ks=(3, 5))

    assert metrics["precision@5"] == pytest.approx(2 / 5)
    assert metrics["recall@5"] == pytest.approx(2 / 3)
    assert metrics["hitrate@5"] == pytest.approx(1.0)
    assert metrics["mrr@5"] == pytest.approx(1 / 2)
    assert metrics["map@5"] == pytest.approx((1 / 2 + 2 / 5) / 3)
    ideal_dcg = 1 + 1 / log2(3) + 1 / log2(4)
    assert metrics["ndcg@5"] == pytest.approx((1 / log2(3) + 1 / log2(6)) / ideal_dcg)

    assert metrics["precision@3"] == pytest.approx(1 / 3)
    assert metrics["recall@3"] == pytest.approx(1 / 3)
    assert metrics["map@3"] == pytest.approx((1 / 2) / 3)
    assert metrics["ndcg@3"] == pytest.approx((1 / log2(3)) / ideal_dcg)


def test_graded_ndcg_uses_exponential_gains_and_ideal_order() -> None:
    # Item 10 has grade 1 and item 11 grade 2, but they are ranked in the wrong order.
    metrics = ranking_metrics({0: [10, 11, 12]}, {0: {10: 1.0, 11: 2.0}}, ks=(3,))

    dcg = (2**1 - 1) / log2(2) + (2**2 - 1) / log2(3)
    ideal_dcg = (2**2 - 1) / log2(2) + (2**1 - 1) / log2(3)
    assert metrics["ndcg@3"] == pytest.approx(dcg / ideal_dcg)


def test_map_normalises_by_min_of_k_and_relevant_count() -> None:
    metrics = ranking_metrics({0: [1, 2, 6]}, {0: {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}}, ks=(2, 3))

    assert metrics["map@2"] == pytest.approx((1 + 1) / 2)
    assert metrics["map@3"] == pytest.approx((1 + 1) / 3)
    assert metrics["recall@2"] == pytest.approx(2 / 5)


def test_missing_user_counts_as_empty_and_users_without_positives_are_skipped() -> None:
    recommended = {1: [5, 8], 99: [1]}  # user 99 is not evaluated
    relevant = {1: {8: 1.0}, 2: {6: 1.0}, 3: {}, 4: {7: 0.0}}

    metrics = ranking_metrics(recommended, relevant, ks=(2,))

    assert metrics["hitrate@2"] == pytest.approx(1 / 2)
    assert metrics["mrr@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert metrics["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert metrics["ndcg@2"] == pytest.approx((1 / log2(3) + 0) / 2)


def test_duplicate_recommendations_are_counted_once() -> None:
    metrics = ranking_metrics({0: [4, 4, 5]}, {0: {4: 1, 5: 1}}, ks=(2,))

    assert metrics["recall@2"] == pytest.approx(1.0)
    assert metrics["ndcg@2"] == pytest.approx(1.0)


def test_coverage_and_novelty() -> None:
    recommended = {0: [0, 1], 1: [1, 2], 2: [4]}
    relevant = {0: {0: 1}, 1: {9: 1}, 2: {3: 1}}
    # p = 4/8, 2/8, 1/8, 1/8 and item 4 (never seen) is treated as p = 1/8.
    popularity = np.array([4, 2, 1, 1, 0, 0, 0, 0, 0, 0])

    metrics = ranking_metrics(
        recommended, relevant, ks=(1, 2), item_popularity=popularity, n_items=10
    )

    assert metrics["coverage@2"] == pytest.approx(4 / 10)
    assert metrics["coverage@1"] == pytest.approx(3 / 10)
    assert metrics["novelty@2"] == pytest.approx(((1 + 2) / 2 + (2 + 3) / 2 + 3) / 3)
    assert metrics["novelty@1"] == pytest.approx((1 + 2 + 3) / 3)


def test_catalog_metrics_only_reported_when_inputs_given() -> None:
    metrics = ranking_metrics({0: [1]}, {0: {1: 1}}, ks=(10,))

    names = ("ndcg", "map", "mrr", "precision", "recall", "hitrate")
    assert set(metrics) == {f"{name}@10" for name in names}


def test_metrics_table_has_one_row_per_model() -> None:
    results = {
        "popularity": {"ndcg@10": 0.1, "recall@10": 0.25, "ndcg@5": 0.9},
        "two_tower": {"ndcg@10": 0.31234, "recall@10": 0.5},
    }

    lines = metrics_table(results, k=10).splitlines()

    assert lines[0].split("|")[1:-1] == [" model      ", " ndcg@10 ", " recall@10 "]
    assert set(lines[1]) <= {"|", "-"}
    assert [cell.strip() for cell in lines[3].split("|")[1:-1]] == ["two_tower", "0.3123", "0.5000"]
    assert len(lines) == 4


def test_precision_at_k_is_hits_over_the_filled_slots_offline_and_online():
    from core.metrics import precision_at_k

    assert precision_at_k(2, 10, 10) == 0.2
    assert precision_at_k(2, 4, 10) == 0.5  # a short list is not charged for empty slots
    assert precision_at_k(0, 0, 10) == 0.0
    np.testing.assert_allclose(precision_at_k(np.array([1, 3]), np.array([2, 20]), 10), [0.5, 0.3])
    short = ranking_metrics({1: [5, 6]}, {1: {5: 1.0}}, ks=[10])
    assert short["precision@10"] == 0.5
