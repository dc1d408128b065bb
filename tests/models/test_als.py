"""ALS source: the numpy user solve, the fit, and the ALS candidates and features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from core.inference.als import ALSUserSolver
from core.inference.ann_index import build_index
from training.retrieval.als import ALSConfig, fit_als


def test_user_solve_equals_implicit_recalculate_user():
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(0)
    n_users, n_items = 40, 30
    matrix = sp.random(n_users, n_items, density=0.2, random_state=1, format="csr", dtype=np.float32)
    matrix.data[:] = 1.0
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=8, regularization=0.5, alpha=3.0, iterations=5, random_state=0,
                                        num_threads=1)
        model.fit(matrix, show_progress=False)
    solver = ALSUserSolver(model.item_factors, regularization=0.5, alpha=3.0)
    history = rng.choice(n_items, size=6, replace=False)
    row = sp.csr_matrix((np.ones(6, dtype=np.float32), (np.zeros(6, dtype=int), history)), shape=(1, n_items))
    expected = model.recalculate_user(0, row)
    padded = np.concatenate([history, history[:2], [n_items, n_items]])  # repeats and padding ignored
    np.testing.assert_allclose(solver.user_factors(padded[None, :])[0], expected, rtol=1e-3, atol=1e-4)


def test_empty_history_scores_zero_and_one_event_changes_the_list():
    factors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    solver = ALSUserSolver(factors, regularization=0.1, alpha=2.0)
    empty = solver.user_factors(np.array([[4, 4]]))
    assert np.all(solver.scores(empty) == 0)
    likes_first = solver.scores(solver.user_factors(np.array([[0, 4]])))[0]
    likes_third = solver.scores(solver.user_factors(np.array([[2, 4]])))[0]
    assert likes_first[1] > likes_first[3] and likes_third[3] > likes_third[1]


def test_fit_als_puts_co_consumed_items_together():
    # Two disjoint taste groups: users 0-9 take items 0-4, users 10-19 items 5-9; item 10 unseen.
    users = np.repeat(np.arange(20), 5)
    items = np.concatenate([np.tile(np.arange(5), 10), np.tile(np.arange(5, 10), 10)])
    solver = fit_als(users, items, 20, 11, ALSConfig(factors=4, regularization=0.1, iterations=10))
    assert solver.item_factors.shape == (11, 4) and np.all(solver.item_factors[10] == 0)
    scores = solver.scores(solver.user_factors(np.array([[0, 1, 11]])))[0]
    assert scores[2:5].min() > scores[5:10].max()


N_ITEMS = 8


def als_generator(trending, covisit, config):
    """A candidate generator over 8 items whose ALS factors put items 0-3 on one axis and 4-7 (in
    falling strength) on the other; every user embedding is the same."""
    from core.inference.ann_index import build_index
    from core.inference.candidates import CandidateGenerator

    emb = np.eye(N_ITEMS, 4, dtype=np.float32) + 0.01
    factors = np.zeros((N_ITEMS, 2))
    factors[:4, 0] = 1.0
    factors[4:, 1] = [1.0, 0.8, 0.6, 0.4]

    class Encoder:
        def user_embeddings(self, users):
            return np.ones((len(users), 4), dtype=np.float32)

    return CandidateGenerator(Encoder(), emb, build_index(emb), np.zeros(N_ITEMS, dtype=np.int64), trending,
                              covisit, config, als=ALSUserSolver(factors, 0.1, 2.0))


@pytest.mark.parametrize("n_als", [3, 0])
def test_generator_adds_als_source_and_features(n_als):
    from core.inference.baselines import CoVisitationRecommender, TrendingRecommender
    from core.inference.candidates import ALS_FEATURES, RETRIEVAL_FEATURES, CandidateConfig
    from core.inference.two_tower import UserFeatures

    n_items = N_ITEMS
    trending = TrendingRecommender(n_items).fit(np.zeros(1), np.array([0]), np.array([0]))
    covisit = CoVisitationRecommender(n_items)
    config = CandidateConfig(n_ann=1, n_trending=1, n_covisit=1, n_als=n_als)
    generator = als_generator(trending, covisit, config)
    users = UserFeatures(user_idx=np.array([0]), history=np.array([[4, n_items]]),
                         dense=np.zeros((1, 0), dtype=np.float32))
    frame = generator.generate(users, np.array([100]), [{4}])
    assert list(frame.columns) == ["position", "item_idx", *RETRIEVAL_FEATURES, *ALS_FEATURES]
    by_item = frame.set_index("item_idx")
    proposed = by_item[by_item.from_als == 1].sort_values("als_rank")
    assert proposed.index.tolist() == [5, 6, 7][:n_als]  # the history item 4 never comes back
    assert (by_item.loc[by_item.from_als == 0, "als_rank"] == n_als + 1).all()
    user = generator.als.user_factors(np.array([[4]]))
    np.testing.assert_allclose(by_item["als_score"], generator.als.scores(user)[0][by_item.index], rtol=1e-6)


def test_bundle_als_solver_reads_its_parameters_from_the_manifest():
    from core.bundle import Bundle, BundleError

    fields = dict.fromkeys(["two_tower_config", "user_tower_weights", "user_spec", "index", "item_embeddings",
                            "ranker", "ranker_spec", "item_ids", "user_ids", "categories", "item_available_from",
                            "covisitation", "trending_scores"])
    factors = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert Bundle(**fields).als_solver() is None
    solver = Bundle(**fields, manifest={"als": {"regularization": 2.0, "alpha": 4.0}},
                    als_item_factors=factors).als_solver()
    assert (solver.regularization, solver.alpha) == (2.0, 4.0)
    np.testing.assert_array_equal(solver.item_factors, factors)
    with pytest.raises(BundleError, match="regularization and alpha"):
        Bundle(**fields, als_item_factors=factors).als_solver()
    # the shipped index (als.faiss) must hold exactly those factors
    manifest = {"als": {"regularization": 2.0, "alpha": 4.0}}
    assert Bundle(**fields, manifest=manifest, als_item_factors=factors,
                  als_index=build_index(factors)).als_solver().index.ntotal == 3
    with pytest.raises(BundleError, match="als.faiss does not fit"):
        Bundle(**fields, manifest=manifest, als_item_factors=factors, als_index=build_index(factors[:2])).als_solver()


def test_select_als_keeps_the_grid_point_with_the_best_validation_ndcg():
    from training.retrieval.als import select_als

    users = np.repeat(np.arange(20), 5)
    items = np.concatenate([np.tile(np.arange(5), 10), np.tile(np.arange(5, 10), 10)])
    history = np.array([[0, 1, 11], [5, 6, 11]])  # 11 = padding (10 items + an unseen one)
    relevant = {0: {2: 1.0}, 1: {7: 1.0}}
    allowed = np.ones(11, dtype=bool)
    allowed[3] = False  # not yet created
    chosen, trace = select_als(users, items, 20, 11, history, relevant, [{4}, set()], allowed,
                               ALSConfig(iterations=5), {"factors": [2, 4], "regularization": [0.1, 1e4]})
    assert [t["params"] for t in trace] == [{"factors": f, "regularization": r} for f in (2, 4) for r in (0.1, 1e4)]
    best = max(trace, key=lambda t: t["ndcg@10"])
    assert (chosen.factors, chosen.regularization) == (best["params"]["factors"], best["params"]["regularization"])
    assert best["ndcg@10"] > 0.5 and chosen.iterations == 5


def test_relative_scores_are_each_score_against_the_requests_best():
    from core.inference.baselines import CoVisitationRecommender, TrendingRecommender
    from core.inference.candidates import (
        ALS_FEATURES,
        ALS_RELATIVE_FEATURES,
        RELATIVE_FEATURES,
        RETRIEVAL_FEATURES,
        CandidateConfig,
        relative_scores,
    )
    from core.inference.two_tower import UserFeatures

    n_items = N_ITEMS
    users_ = np.array([0, 0, 1, 1, 2])
    items_ = np.array([5, 6, 5, 7, 6])
    trending = TrendingRecommender(n_items).fit(users_, items_, np.arange(5))
    covisit = CoVisitationRecommender(n_items).fit(users_, items_, np.arange(5))
    config = CandidateConfig(n_ann=0, n_trending=3, n_covisit=3, n_als=3, relative_scores=True)
    generator = als_generator(trending, covisit, config)
    users = UserFeatures(user_idx=np.array([0, 1]), history=np.array([[5, n_items], [n_items, n_items]]),
                         dense=np.zeros((2, 0), dtype=np.float32))
    frame = generator.generate(users, np.array([100, 100]), [set(), set()])
    assert list(frame.columns) == ["position", "item_idx", *RETRIEVAL_FEATURES, *ALS_FEATURES, *RELATIVE_FEATURES,
                                   *ALS_RELATIVE_FEATURES]
    assert frame.from_two_tower.sum() == 0  # n_ann=0: the two-tower proposes nothing, still scores all
    for _, request in frame.groupby("position"):
        np.testing.assert_allclose(request.als_score_gap, request.als_score - request.als_score.max())
        np.testing.assert_allclose(request.retrieval_score_gap,
                                   request.retrieval_score - request.retrieval_score.max(), rtol=1e-6)
        assert request.trending_score_share.max() == 1.0
        assert request.trending_score_share.idxmax() == request.trending_score.idxmax()
        top = request.covisit_score.max()
        expected = request.covisit_score / top if top > 0 else 0.0 * request.covisit_score
        np.testing.assert_allclose(request.covisit_score_share, expected)
    # No history: no co-visitation anywhere, every share 0 (not NaN).
    assert (frame[frame.position == 1].covisit_score_share == 0).all()
    # Without the flag the columns are the old ones.
    generator.config = CandidateConfig(n_ann=0, n_trending=3, n_covisit=3, n_als=3)
    assert list(generator.generate(users, np.array([100, 100])).columns) == [
        "position", "item_idx", *RETRIEVAL_FEATURES, *ALS_FEATURES]
    out = relative_scores({"retrieval_score": np.array([0.5, 0.2]), "trending_score": np.array([2.0, 1.0]),
                           "covisit_score": np.array([0.0, 0.0])})
    assert set(out) == set(RELATIVE_FEATURES)
    np.testing.assert_allclose(out["retrieval_score_gap"], [0.0, -0.3])
    np.testing.assert_allclose(out["trending_score_share"], [1.0, 0.5])
    np.testing.assert_array_equal(out["covisit_score_share"], [0.0, 0.0])


def test_als_lists_from_the_index_are_those_of_scoring_the_whole_catalog():
    """A request's ALS list comes from the FAISS index over the item factors: the same items in the
    same order as the top of the full score vector, allowed items with a positive score only."""
    from core.inference.baselines import CoVisitationRecommender, TrendingRecommender
    from core.inference.candidates import ALS_SOURCE, CandidateConfig, CandidateGenerator, _top
    from core.inference.two_tower import UserFeatures

    rng = np.random.default_rng(5)
    n_items, n_users = 300, 12
    factors = rng.normal(0, 0.3, (n_items, 8)).astype(np.float32)
    emb = rng.normal(size=(n_items, 4)).astype(np.float32)
    available = np.where(rng.random(n_items) < 0.1, 10**9, 0)  # some items created after the requests

    class Encoder:
        def user_embeddings(self, users):
            return np.ones((len(users), 4), dtype=np.float32)

    trending = TrendingRecommender(n_items).fit(np.zeros(1), np.array([0]), np.array([0]))
    generator = CandidateGenerator(Encoder(), emb, build_index(emb), available, trending,
                                   CoVisitationRecommender(n_items),
                                   CandidateConfig(n_als=20), als=ALSUserSolver(factors, 1.0, 4.0))
    history = np.full((n_users, 10), n_items)
    for row in range(n_users):
        history[row, : row % 10 + 1] = rng.choice(n_items, row % 10 + 1, replace=False)
    users = UserFeatures(user_idx=np.zeros(n_users, dtype=np.int64), history=history,
                         dense=np.zeros((n_users, 0), dtype=np.float32))
    exclude = [set(rng.choice(n_items, 5).tolist()) for _ in range(n_users)]
    lists = generator.source_lists(users, np.full(n_users, 1000), exclude, {"two_tower": 5, "trending": 0,
                                                                            "covisit": 0, ALS_SOURCE: 20})
    scores = generator.als.scores(generator.als.user_factors(history))
    for row in range(n_users):
        seeds = history[row][history[row] < n_items][: generator.config.covisit_seeds]
        blocked = exclude[row] | set(seeds.tolist())  # what every source's list leaves out
        top = _top(scores[row], 20 * 3 + len(blocked))
        expected = [int(i) for i in top if i not in blocked and available[i] <= 1000 and scores[row, i] > 0][:20]
        assert lists[row][ALS_SOURCE] == expected, row
        assert len(expected) == 20
