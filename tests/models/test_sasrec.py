"""SASRec source: the numpy forward pass against torch's, the fit, refits, and its candidates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from core.inference.sasrec import SASRecScorer, SASRecShape, weight_names
from training.retrieval.sasrec import (
    SASRecConfig,
    SASRecFitter,
    SASRecModel,
    fit_sasrec,
    training_windows,
    user_sequences,
)

SHAPE = SASRecShape(n_items=30, dim=16, n_blocks=2, n_heads=2, max_len=6)


def random_model(seed: int = 0) -> SASRecModel:
    torch.manual_seed(seed)
    model = SASRecModel(SHAPE, dropout=0.0)
    with torch.no_grad():  # every weight away from its initial value (LayerNorm ones, zero biases)
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
        model.item_embedding.weight[SHAPE.n_items].zero_()
    return model.eval()


def test_numpy_forward_equals_torch_for_short_long_padded_and_empty_histories():
    model = random_model()
    scorer = SASRecScorer(SHAPE, model.state_arrays())
    pad = SHAPE.n_items
    history = np.array([[3, 7, 9, pad, pad, pad, pad, pad],  # most recent first, padded
                        [1, pad, pad, pad, pad, pad, pad, pad],
                        [pad] * 8,
                        [4, 5, 6, 7, 8, 9, 10, 11],  # longer than max_len: the 6 newest count
                        [2, -1, 5, 99, pad, pad, pad, pad]])  # unknown indices are padding
    sequences = scorer.sequences(history)
    assert sequences[0].tolist() == [pad, pad, pad, 9, 7, 3]  # time order, newest last
    assert sequences[3].tolist() == [9, 8, 7, 6, 5, 4]
    assert sequences[4].tolist() == [pad, pad, pad, pad, 5, 2]
    with torch.no_grad():
        expected = model(torch.from_numpy(sequences))[:, -1].numpy()
    expected[2] = 0.0  # an empty history has no vector
    vectors = scorer.user_vectors(history)
    np.testing.assert_allclose(vectors, expected, atol=2e-5)
    assert not vectors[2].any() and not scorer.scores(vectors)[2].any()
    logits = torch.from_numpy(vectors) @ model.item_embedding.weight[:pad].detach().T
    expected_scores = torch.softmax(logits, dim=1).numpy()
    expected_scores[2] = 0.0
    np.testing.assert_allclose(scorer.scores(vectors), expected_scores, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(scorer.scores(vectors)[[0, 1, 3, 4]].sum(axis=1), 1.0, rtol=1e-5)


def test_scorer_refuses_weights_that_do_not_fit_its_shape():
    weights = random_model().state_arrays()
    assert sorted(weights) == sorted(weight_names(SHAPE))
    with pytest.raises(ValueError, match="lack final_norm.weight"):
        SASRecScorer(SHAPE, {k: v for k, v in weights.items() if k != "final_norm.weight"})
    with pytest.raises(ValueError, match="item embedding is"):
        SASRecScorer(SASRecShape(29, 16, 2, 2, 6), weights)


def test_sequences_and_windows_follow_the_recent_history_order():
    users = np.array([1, 0, 1, 1, 0, 2])
    items = np.array([5, 3, 4, 6, 2, 9])
    times = np.array([10, 5, 10, 11, 7, 1])
    # user 0: 3 (t5), 2 (t7); user 1: ties at t10 by item index, then 6; user 2 has one item only
    assert [s.tolist() for s in user_sequences(users, items, times)] == [[3, 2], [4, 5, 6]]
    inputs, targets = training_windows([np.arange(8)], max_len=3, pad=99)
    assert inputs.tolist() == [[4, 5, 6], [1, 2, 3], [99, 99, 0]]
    assert targets.tolist() == [[5, 6, 7], [2, 3, 4], [99, 99, 1]]


def cycles(n_users: int = 60, n_items: int = 12, length: int = 15, seed: int = 0):
    """Users walk the items in a cycle, each from a random start: the next item is always +1."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for user in range(n_users):
        start = rng.integers(n_items)
        users += [user] * length
        items += [(start + step) % n_items for step in range(length)]
        times += list(range(1000 * user, 1000 * user + length))
    return np.array(users), np.array(items), np.array(times)


def test_fit_learns_the_next_item_and_a_warm_start_needs_fewer_epochs():
    users, items, times = cycles()
    config = SASRecConfig(dim=16, n_heads=2, max_len=6, epochs=40, warm_epochs=3, dropout=0.0, seed=1,
                          learning_rate=5e-3, batch_size=32)
    scorer = fit_sasrec(users, items, times, 12, config)
    history = np.array([[(7 - k) % 12 for k in range(5)]])  # ..., 5, 6, 7 (newest first)
    assert int(np.argmax(scorer.scores(scorer.user_vectors(history))[0])) == 8
    again = fit_sasrec(users, items, times, 12, config, warm_start=scorer)
    assert int(np.argmax(again.scores(again.user_vectors(history))[0])) == 8
    assert not np.array_equal(again.weights["final_norm.weight"], scorer.weights["final_norm.weight"])


def test_sampled_softmax_for_large_catalogs_learns_too():
    users, items, times = cycles()
    config = SASRecConfig(dim=16, n_heads=2, max_len=6, epochs=40, dropout=0.0, seed=1, learning_rate=5e-3,
                          batch_size=32, full_softmax_max_items=5, sampled_negatives=8)
    scorer = fit_sasrec(users, items, times, 12, config)
    history = np.array([[(3 - k) % 12 for k in range(5)]])
    assert int(np.argmax(scorer.scores(scorer.user_vectors(history))[0])) == 4


def test_fitter_reuses_a_fit_within_the_refit_period_and_never_one_from_the_future(monkeypatch):
    import training.retrieval.sasrec as sasrec

    calls = []

    def fake_fit(user_idx, item_idx, ts, n_items, config, warm_start=None):
        calls.append((int(ts.max()) if len(ts) else None, warm_start))
        return f"fit{len(calls)}"

    monkeypatch.setattr(sasrec, "fit_sasrec", fake_fit)
    day = 86_400
    events = pd.DataFrame({"user_idx": [0] * 5, "item_idx": range(5), "ts": [0, day, 5 * day, 9 * day, 20 * day]})
    fitter = SASRecFitter(SASRecConfig(), refit_days=7)
    assert fitter.at(events, 2 * day, 5) == "fit1" and calls[-1] == (day, None)
    assert fitter.at(events, 8 * day, 5) == "fit1"  # 6 days later: reused
    assert fitter.at(events, 9 * day + 1, 5) == "fit2" and calls[-1] == (9 * day, "fit1")  # warm start
    assert fitter.at(events, 3 * day, 5) == "fit3" and calls[-1] == (day, None)  # earlier: never fit2
    assert fitter.final(events, 4 * day, 5) == "fit4"  # final: always up to its time
    assert fitter.final(events, 4 * day, 5) == "fit4" and fitter.fits == 4


def test_generator_adds_the_sasrec_source_and_features():
    from core.inference.ann_index import build_index
    from core.inference.baselines import CoVisitationRecommender, TrendingRecommender
    from core.inference.candidates import (
        RETRIEVAL_FEATURES,
        SASREC_FEATURES,
        SASREC_RELATIVE_FEATURES,
        CandidateConfig,
        CandidateGenerator,
        primary_source,
    )
    from core.inference.two_tower import UserFeatures

    n_items = SHAPE.n_items
    scorer = SASRecScorer(SHAPE, random_model(3).state_arrays())
    emb = np.eye(n_items, 4, dtype=np.float32) + 0.01

    class Encoder:
        def user_embeddings(self, users):
            return np.ones((len(users), 4), dtype=np.float32)

    trending = TrendingRecommender(n_items).fit(np.zeros(1), np.array([0]), np.array([0]))
    config = CandidateConfig(n_ann=1, n_trending=1, n_covisit=1, n_sasrec=4, relative_scores=True)
    generator = CandidateGenerator(Encoder(), emb, build_index(emb), np.zeros(n_items, dtype=np.int64), trending,
                                   CoVisitationRecommender(n_items), config, sasrec=scorer)
    assert generator.sources[-1] == "sasrec"
    history = np.array([[4, 9, n_items]])
    frame = generator.generate(UserFeatures(np.array([0]), history, np.zeros((1, 0), np.float32)), np.array([100]))
    assert [c for c in frame.columns if "sasrec" in c] == [*SASREC_FEATURES, *SASREC_RELATIVE_FEATURES]
    assert set(RETRIEVAL_FEATURES) <= set(frame.columns)
    scores = scorer.scores(scorer.user_vectors(history))[0]
    ranked = [i for i in np.argsort(-scores, kind="stable") if i not in (4, 9) and scores[i] > 0][:4]
    by_item = frame.set_index("item_idx")
    assert by_item[by_item.from_sasrec == 1].sort_values("sasrec_rank").index.tolist() == ranked
    np.testing.assert_allclose(by_item["sasrec_score"], scores[by_item.index], rtol=1e-6)
    np.testing.assert_allclose(by_item["sasrec_score_gap"], by_item["sasrec_score"] - by_item["sasrec_score"].max())
    only_sasrec = (frame.from_sasrec == 1) & (frame.from_two_tower + frame.from_trending + frame.from_covisit == 0)
    assert only_sasrec.any() and set(primary_source(frame)[only_sasrec.to_numpy()]) == {"sasrec"}


def test_bundle_sasrec_scorer_reads_its_shape_from_the_manifest():
    from dataclasses import asdict

    from core.bundle import Bundle, BundleError

    fields = dict.fromkeys(["two_tower_config", "user_tower_weights", "user_spec", "index", "item_embeddings",
                            "ranker", "ranker_spec", "item_ids", "user_ids", "categories", "item_available_from",
                            "covisitation", "trending_scores"])
    weights = random_model().state_arrays()
    assert Bundle(**fields).sasrec_scorer() is None
    scorer = Bundle(**fields, manifest={"sasrec": asdict(SHAPE)}, sasrec_weights=weights).sasrec_scorer()
    assert scorer.shape == SHAPE
    with pytest.raises(BundleError, match="does not fit its manifest"):
        Bundle(**fields, sasrec_weights=weights).sasrec_scorer()
    with pytest.raises(BundleError, match="does not fit its manifest"):
        Bundle(**fields, manifest={"sasrec": {**asdict(SHAPE), "dim": 8}}, sasrec_weights=weights).sasrec_scorer()
