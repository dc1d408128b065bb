"""Candidate generation: sources merged and de-duplicated, never an excluded or future item."""

from __future__ import annotations

import numpy as np
import pytest

from training.retrieval.ann_index import build_index
from training.retrieval.baselines import CoVisitationRecommender, TrendingRecommender
from training.retrieval.candidates import CandidateConfig, CandidateGenerator
from training.retrieval.two_tower import (
    Interactions, ItemFeatures, TwoTowerConfig, UserFeatures, train_two_tower,
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


def test_trending_as_of_uses_only_earlier_events():
    trending = TrendingRecommender(3).fit(np.zeros(3), np.array([0, 1, 2]), np.array([0, DAY, 2 * DAY]))
    scores = trending.scores_as_of(DAY)
    assert scores[0] > 0 and scores[1] == 0 and scores[2] == 0
