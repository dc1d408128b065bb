"""Candidate generation: sources merged and de-duplicated, never an excluded or future item."""

from __future__ import annotations

import numpy as np
import pytest

from core.inference.ann_index import build_index
from core.inference.baselines import CoVisitationRecommender, TrendingRecommender
from core.inference.candidates import CandidateConfig, CandidateGenerator
from training.retrieval.two_tower import (
    Interactions,
    ItemFeatures,
    TwoTowerConfig,
    UserFeatures,
    train_two_tower,
)

N_USERS, N_ITEMS, DAY = 40, 30, 86_400


@pytest.fixture(scope="module")
def generator() -> CandidateGenerator:
    rng = np.random.default_rng(0)
    users = rng.integers(0, N_USERS, 600)
    items = (users % 3) * 10 + rng.integers(0, 10, 600)  # three clusters of ten items
    times = np.sort(rng.integers(0, 10 * DAY, 600))
    history = np.full((600, 3), N_ITEMS)
    item_features = ItemFeatures(category=np.arange(N_ITEMS) // 10)
    train = Interactions(UserFeatures(users, history), items)
    model = train_two_tower(train, item_features, N_USERS,
                            TwoTowerConfig(epochs=2, batch_size=64, embedding_dim=8, id_dim=8, progress=False)).model
    embeddings = model.item_embeddings(item_features)
    available_from = np.zeros(N_ITEMS, dtype=np.int64)
    available_from[29] = 20 * DAY  # item 29 does not exist before day 20
    trending = TrendingRecommender(N_ITEMS).fit(users, items, times, as_of=10 * DAY)
    covisit = CoVisitationRecommender(N_ITEMS).fit(users, items, times)
    return CandidateGenerator(model, embeddings, build_index(embeddings), available_from, trending, covisit,
                              CandidateConfig(n_ann=8, n_trending=5, n_covisit=5))


def test_candidates_are_unique_allowed_and_flagged(generator):
    users = UserFeatures(np.array([1, 2]), np.array([[0, 1, N_ITEMS], [N_ITEMS] * 3]))
    rows = generator.generate(users, np.array([10 * DAY, 10 * DAY]), exclude=[{2, 3}, set()])
    first = rows[rows.position == 0]
    assert not first.item_idx.duplicated().any()
    assert not set(first.item_idx) & {0, 1, 2, 3}  # history seeds and excluded items never come back
    assert 29 not in set(rows.item_idx)  # not created yet at the request time
    assert first.from_two_tower.sum() <= 8 and first.from_trending.sum() <= 5
    assert ((first.from_two_tower + first.from_trending + first.from_covisit) >= 1).all()
    assert first.retrieval_score.is_monotonic_decreasing
    ann = first[first.from_two_tower == 1].sort_values("retrieval_rank")
    assert ann.retrieval_rank.tolist() == list(range(1, len(ann) + 1))
    assert (first.loc[first.from_two_tower == 0, "retrieval_rank"] == 9).all()
    lists = generator.source_lists(users, np.array([10 * DAY, 10 * DAY]), [{2, 3}, set()],
                                   {"two_tower": 8, "trending": 5, "covisit": 5})
    for source, column, n in (("trending", "trending_rank", 5), ("covisit", "covisit_rank", 5)):
        ranks = first.set_index("item_idx")[column]
        assert [ranks[i] for i in lists[0][source]] == list(range(1, len(lists[0][source]) + 1))
        assert (ranks.drop(lists[0][source]) == n + 1).all()


def test_future_item_appears_once_it_exists(generator):
    users = UserFeatures(np.array([5]), np.array([[N_ITEMS] * 3]))
    lists = generator.source_lists(users, np.array([21 * DAY]), None,
                                   {"two_tower": N_ITEMS, "trending": N_ITEMS, "covisit": N_ITEMS})
    assert 29 in lists[0]["two_tower"]
    assert len(lists[0]["two_tower"]) == N_ITEMS


def test_item_age_is_days_from_creation_to_each_requests_time(generator):
    from dataclasses import replace

    from core.inference.candidates import ITEM_AGE_FEATURES

    aged = replace(generator, config=replace(generator.config, item_age=True))
    assert aged.feature_columns[-1:] == ITEM_AGE_FEATURES and "item_age_days" not in generator.feature_columns
    users = UserFeatures(np.array([1, 5]), np.array([[0, 1, N_ITEMS], [N_ITEMS] * 3]))
    times = np.array([21 * DAY, 25 * DAY + DAY // 2])
    rows = aged.generate(users, times)
    plain = generator.generate(users, times)
    assert rows.drop(columns="item_age_days").equals(plain)  # nothing else changes
    expected = (times[rows.position] - generator.item_available_from[rows.item_idx]) / DAY
    np.testing.assert_allclose(rows.item_age_days, expected)
    assert (rows.position == 1).any() and rows.item_age_days.min() >= 0  # never before creation


def test_trending_as_of_uses_only_earlier_events():
    trending = TrendingRecommender(3).fit(np.zeros(3), np.array([0, 1, 2]), np.array([0, DAY, 2 * DAY]))
    scores = trending.scores_as_of(DAY)
    assert scores[0] > 0 and scores[1] == 0 and scores[2] == 0


# ------------------------------------------------- the fast path gives exactly the old output ------

def _random_world(seed: int, n_items: int, hnsw: bool):
    """A catalog with every tie the ranking code must break the old way: duplicated embeddings,
    integer trending / co-visitation scores, explicit zeros and negative weights in the CSR."""
    import scipy.sparse as sp
    import torch

    from serving.model import BundleCovisitation, BundleTrending
    from training.retrieval.two_tower import ItemFeatures, TwoTowerModel

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    n_users = 50
    model = TwoTowerModel(TwoTowerConfig(embedding_dim=8, id_dim=8, hidden_dims=(16,), epochs=0, progress=False),
                          n_users, n_items, 5).eval()
    embeddings = model.item_embeddings(ItemFeatures(category=rng.integers(0, 5, n_items)))
    copies = rng.choice(n_items, n_items // 10)
    embeddings[copies] = embeddings[rng.choice(n_items, len(copies))]  # tied two-tower scores
    index = build_index(embeddings, exact_threshold=0 if hnsw else n_items, hnsw_m=8, ef_construction=20,
                        ef_search=16)
    available_from = rng.integers(0, 12 * DAY, n_items)
    available_from[rng.random(n_items) < 0.7] = 0

    n_events = 8 * n_items
    users = rng.integers(0, n_users, n_events)
    items = np.minimum(rng.zipf(1.5, n_events), n_items) - 1  # a few popular items, a long tail
    times = rng.integers(0, 40, n_events) * (DAY // 4)  # coarse: many equal timestamps
    weights = rng.integers(1, 4, n_events).astype(float)
    trending = TrendingRecommender(n_items).fit(users, items, times, weights, as_of=10 * DAY)
    covisit = CoVisitationRecommender(n_items).fit(users, items, times, weights)

    decimals = seed % 3  # trending scores from heavily tied (integers) to mostly distinct
    bundle_scores = np.where(rng.random(n_items) < 0.3, np.round(rng.exponential(5, n_items), decimals), 0.0)
    bundle_scores[rng.random(n_items) < 0.05] = -1.0
    nnz = 40 * n_items
    values = rng.integers(-1, 5, nnz).astype(float)  # zeros stay stored: explicit zeros, and negatives
    matrix = sp.csr_matrix((values, (rng.integers(0, n_items, nnz), rng.integers(0, n_items, nnz))),
                           shape=(n_items, n_items))
    matrix.sum_duplicates()
    return {"model": model, "embeddings": embeddings, "index": index, "available_from": available_from,
            "training": (trending, covisit),
            "serving": (BundleTrending(bundle_scores), BundleCovisitation(matrix))}


def _random_requests(rng, n_items: int, n: int, wide: bool):
    """Histories with padding (`n_items`, or anything past the catalog when no user tower reads them)."""
    from training.retrieval.two_tower import UserFeatures

    history = np.minimum(rng.zipf(1.5, (n, 8)), n_items) - 1
    padding = n_items + rng.integers(0, 5, (n, 8)) if wide else np.full((n, 8), n_items)
    history = np.where(rng.random((n, 8)) < 0.3, padding, history)
    history[rng.random(n) < 0.1] = n_items  # no history at all
    exclude = [set(rng.choice(n_items + 10, rng.integers(0, 40)).tolist()) | set(h[:2].tolist()) for h in history]
    times = rng.integers(0, 14 * DAY, n)
    return UserFeatures(rng.integers(0, 51, n), history), times, exclude


@pytest.mark.parametrize("seed, n_items, hnsw", [(1, 2_000, False), (2, 3_000, True), (3, 800, False)])
def test_fast_path_gives_exactly_the_reference_output(seed, n_items, hnsw, monkeypatch):
    import pandas as pd

    from tests.models.candidates_reference import ReferenceCandidateGenerator

    world = _random_world(seed, n_items, hnsw)
    rng = np.random.default_rng(seed + 100)
    configs = [CandidateConfig(), CandidateConfig(n_ann=30, n_trending=5, n_covisit=5, covisit_seeds=3),
               CandidateConfig(n_ann=5, n_trending=1, n_covisit=1, covisit_seeds=8),
               CandidateConfig(n_ann=100, n_trending=0, n_covisit=200, covisit_seeds=1)]
    dense_calls = []
    dense_list = CandidateGenerator._dense_list
    monkeypatch.setattr(CandidateGenerator, "_dense_list",
                        lambda self, *args: dense_calls.append(type(self.trending).__name__) or dense_list(self, *args))
    # A request whose first FAISS search (`ann_search_k`) leaves too few allowed items searches again.
    wide_calls, wide_ann = [], CandidateGenerator._wide_ann
    monkeypatch.setattr(CandidateGenerator, "_wide_ann",
                        lambda self, *args: wide_calls.append(1) or wide_ann(self, *args))
    for side in ("training", "serving"):
        for config in configs:
            parts = (world["model"], world["embeddings"], world["index"], world["available_from"], *world[side], config)
            new, old = CandidateGenerator(*parts), ReferenceCandidateGenerator(*parts)
            for batch in (1, 1, 7, 16):
                users, times, exclude = _random_requests(rng, n_items, batch, wide=False)
                pd.testing.assert_frame_equal(new.generate(users, times, exclude), old.generate(users, times, exclude),
                                              check_exact=True)
                users, times, exclude = _random_requests(rng, n_items, batch, wide=True)
                user_emb = world["model"].user_embeddings(UserFeatures(users.user_idx, np.minimum(users.history, n_items)))
                limits = dict(zip(("two_tower", "trending", "covisit"), rng.integers(0, 60, 3).tolist()))
                expected = old.source_lists(users, times, exclude, limits, user_emb)
                got = new.source_lists(users, times, exclude, limits, user_emb)
                assert [{k: v for k, v in lists.items() if k != "_scores"} for lists in expected] == got
                assert all(type(i) is int for lists in got for items in lists.values() for i in items)
    # Only a trending source without a precomputed ranking (training's) ranks the whole catalog;
    # co-visitation and the bundle's trending never do, tie groups at the cut-off included.
    assert dense_calls and set(dense_calls) == {"TrendingRecommender"}
    assert wide_calls  # the wider search ran, for the requests that needed it, with the same lists

