"""Paired lifts with bootstrap CIs, and per-user NDCG that averages to the reported NDCG."""

from __future__ import annotations

import numpy as np
import pytest

from core.metrics import per_user_ndcg, ranking_metrics
from training.evaluation.paired import paired_lift


def test_per_user_ndcg_averages_to_ranking_metrics():
    recommended = {1: [3, 4, 5], 2: [7, 3], 3: [9]}
    relevant = {1: {4: 1.0}, 2: {3: 2.0, 8: 1.0}, 3: {1: 0.0}}  # user 3 has nothing relevant: not scored
    per_user = per_user_ndcg(recommended, relevant, 10)
    assert set(per_user) == {1, 2} and per_user[1] == pytest.approx(1 / np.log2(3))
    assert np.mean(list(per_user.values())) == pytest.approx(ranking_metrics(recommended, relevant, [10])["ndcg@10"])


def test_a_consistent_gain_has_a_ci_above_zero_and_noise_straddles_it():
    rng = np.random.default_rng(0)
    base = {u: float(v) for u, v in enumerate(rng.uniform(0.1, 0.5, 400))}
    better = {u: v * 1.2 for u, v in base.items()}
    result = paired_lift(better, base)
    assert result["lift"] == pytest.approx(0.2) and result["lift_ci"][0] > 0.15 and result["lift_ci"][1] < 0.25
    assert result["share_better"] == 1.0 and result["diff_ci"][0] > 0
    noisy = {u: float(v) for u, v in enumerate(rng.permutation(list(base.values())))}
    noise = paired_lift(noisy, base)
    assert noise["lift_ci"][0] < 0 < noise["lift_ci"][1]
    assert paired_lift(better, base, seed=3)["lift_ci"] == paired_lift(better, base, seed=3)["lift_ci"]


def test_the_sides_must_hold_the_same_users():
    with pytest.raises(ValueError, match="same users"):
        paired_lift({1: 0.5}, {2: 0.5})
