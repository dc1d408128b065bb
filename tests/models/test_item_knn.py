"""Item-kNN: cosine similarity of items over their users, as a candidate source and ranker features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from core.inference.ann_index import build_index
from core.inference.baselines import (
    CoVisitationRecommender,
    ItemKNNRecommender,
    TrendingRecommender,
    cosine_item_similarity,
    keep_top_per_row,
)
from core.inference.candidates import (
    ITEM_KNN_FEATURES,
    ITEM_KNN_RELATIVE_FEATURES,
    CandidateConfig,
    CandidateGenerator,
    primary_source,
)
from core.inference.two_tower import UserFeatures

N_ITEMS = 12


def test_similarity_is_the_cosine_of_item_columns_over_users():
    # Users 0 and 1 took items 0 and 1; user 2 took items 1 and 2.
    model = ItemKNNRecommender(3, neighbours=5).fit(np.array([0, 0, 1, 1, 2, 2, 2]), np.array([0, 1, 0, 1, 1, 2, 2]))
    dense = model.matrix.toarray()
    # item 0: users {0, 1}; item 1: users {0, 1, 2}; item 2: user {2} (a repeated event counts once)
    np.testing.assert_allclose(dense, [[0, 2 / np.sqrt(6), 0], [2 / np.sqrt(6), 0, 1 / np.sqrt(3)],
                                       [0, 1 / np.sqrt(3), 0]])
    assert model.recommend_from_items([0], 5) == [1]
    assert model.recommend_from_items([0, 2], 5) == [1]  # the seeds themselves never come back


def test_each_item_keeps_its_nearest_neighbours_only_ties_by_lower_index():
    matrix = sp.csr_matrix(np.array([[0, 3, 1, 3, 2], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [5, 5, 5, 0, 5],
                                     [0, 1, 2, 3, 0]], dtype=float))
    kept = keep_top_per_row(matrix, 2).toarray()
    np.testing.assert_array_equal(kept, [[0, 3, 0, 3, 0], [1, 0, 0, 0, 0], [0] * 5, [5, 5, 0, 0, 0],
                                         [0, 0, 2, 3, 0]])
    full = cosine_item_similarity(sp.random(30, 8, density=0.3, random_state=2, format="csr"))
    pruned = cosine_item_similarity(sp.random(30, 8, density=0.3, random_state=2, format="csr"), neighbours=3)
    assert pruned.getnnz(axis=1).max() <= 3
    for row in range(8):  # the kept entries are each row's largest
        kept_values = np.sort(pruned.getrow(row).data)[::-1]
        np.testing.assert_allclose(kept_values, np.sort(full.getrow(row).data)[::-1][: len(kept_values)])


class _Encoder:
    def user_embeddings(self, users):
        return np.ones((len(users), 4), dtype=np.float32)


@pytest.fixture(scope="module")
def knn_generator() -> tuple[CandidateGenerator, ItemKNNRecommender]:
    rng = np.random.default_rng(1)
    users = rng.integers(0, 30, 300)
    items = (users % 3) * 4 + rng.integers(0, 4, 300)  # three clusters of four items
    knn = ItemKNNRecommender(N_ITEMS, neighbours=4).fit(users, items)
    emb = np.eye(N_ITEMS, 4, dtype=np.float32) + 0.01
    available = np.zeros(N_ITEMS, dtype=np.int64)
    available[11] = 1_000  # item 11 does not exist before t=1000
    trending = TrendingRecommender(N_ITEMS).fit(np.zeros(1), np.array([0]), np.array([0]))
    config = CandidateConfig(n_ann=1, n_trending=1, n_covisit=1, n_item_knn=6, item_knn_seeds=2, relative_scores=True)
    generator = CandidateGenerator(_Encoder(), emb, build_index(emb), available, trending,
                                   CoVisitationRecommender(N_ITEMS), config, item_knn=knn)
    return generator, knn


def test_generator_adds_the_item_knn_source_and_its_features(knn_generator):
    generator, knn = knn_generator
    assert generator.sources[-1] == "item_knn"
    assert generator.feature_columns[-4:] == [*ITEM_KNN_FEATURES, *ITEM_KNN_RELATIVE_FEATURES]
    history = np.array([[4, 8, 1, N_ITEMS]])  # most recent first; item_knn_seeds=2 -> seeds 4, 8
    frame = generator.generate(UserFeatures(np.array([0]), history, np.zeros((1, 0), np.float32)), np.array([100]),
                               exclude=[{10}])
    by_item = frame.set_index("item_idx")
    expected = [i for i in knn.recommend_from_items([4, 8], N_ITEMS) if i not in (10, 11)][:6]
    assert expected and by_item[by_item.from_item_knn == 1].sort_values("item_knn_rank").index.tolist() == expected
    assert not {4, 8, 10, 11} & set(frame.item_idx)  # seeds, excluded and not-yet-created items
    summed = np.asarray(knn.matrix[[4, 8]].sum(axis=0)).ravel()
    np.testing.assert_allclose(by_item["item_knn_score"], summed[by_item.index])
    np.testing.assert_allclose(by_item["item_knn_score_share"], by_item["item_knn_score"] / summed[expected].max())
    assert (by_item.loc[by_item.from_item_knn == 0, "item_knn_rank"] == 7).all()
    only_knn = (frame.from_item_knn == 1) & (frame.from_two_tower + frame.from_trending + frame.from_covisit == 0)
    assert only_knn.any() and set(primary_source(frame)[only_knn.to_numpy()]) == {"item_knn"}


def test_item_knn_without_a_history_proposes_nothing(knn_generator):
    generator, _ = knn_generator
    lists = generator.source_lists(UserFeatures(np.array([0]), np.full((1, 4), N_ITEMS),
                                                np.zeros((1, 0), np.float32)), np.array([100]), None,
                                   {"two_tower": 1, "trending": 1, "covisit": 1, "item_knn": 6})
    assert lists[0]["item_knn"] == []


def test_bundle_round_trip_keeps_the_item_knn_matrix(tmp_path):
    from core.bundle import ITEM_KNN, Bundle
    from serving.model import BundleCovisitation

    fields = dict.fromkeys(["two_tower_config", "user_tower_weights", "user_spec", "index", "item_embeddings",
                            "ranker", "ranker_spec", "item_ids", "user_ids", "categories", "item_available_from",
                            "covisitation", "trending_scores"])
    assert Bundle(**fields).item_knn is None
    matrix = keep_top_per_row(sp.random(N_ITEMS, N_ITEMS, density=0.5, random_state=3, format="csr"), 3)
    sp.save_npz(tmp_path / ITEM_KNN, matrix)
    loaded = sp.load_npz(tmp_path / ITEM_KNN).tocsr()
    assert (loaded != matrix).nnz == 0
    adapter = BundleCovisitation(loaded)
    assert adapter.n_items == N_ITEMS
    broken = loaded.copy()
    broken.indices[0] = N_ITEMS + 5  # a column outside the catalog: refused at load, not at a request
    with pytest.raises(ValueError):
        BundleCovisitation(broken)
