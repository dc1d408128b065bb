import numpy as np
import pytest

from training.retrieval.mf import BPRConfig, BPRRecommender

CONFIG = BPRConfig(dim=8, lr=0.02, weight_decay=3e-2, batch_size=256, epochs=30, progress=False)


@pytest.fixture(scope="module")
def fitted(planted) -> BPRRecommender:
    mask = planted.split != "test"
    model = BPRRecommender(planted.n_users, planted.n_items, CONFIG)
    return model.fit(planted.user[mask], planted.item[mask])


def test_bpr_beats_popularity_on_held_out_interactions(
    planted, fitted: BPRRecommender, popularity_test_recall: float
) -> None:
    users = sorted(planted.relevant("test"))
    bpr_recall = planted.recall_at_10(fitted.recommend(users, 10, planted.seen()), users)

    assert fitted.loss_history[-1] < fitted.loss_history[0]
    assert bpr_recall > popularity_test_recall + 0.03, (bpr_recall, popularity_test_recall)


def test_bpr_recommend_respects_exclusions_and_matches_embeddings(
    planted, fitted: BPRRecommender
) -> None:
    seen = planted.seen()
    recommendations = fitted.recommend([0, 1], 10, seen)

    for user, items in zip([0, 1], recommendations):
        assert len(items) == 10 and not set(items) & seen[user]
    users, items = fitted.user_embeddings(with_bias=True), fitted.item_embeddings(with_bias=True)
    assert users.shape == (planted.n_users, CONFIG.dim + 1)
    assert items.shape == (planted.n_items, CONFIG.dim + 1)
    np.testing.assert_allclose(fitted.score([3]), users[[3]] @ items.T, rtol=1e-6)
    assert fitted.recommend([3], 5) == [list(np.argsort(-(users[3] @ items.T), kind="stable")[:5])]


def test_bpr_is_deterministic_given_a_seed(planted) -> None:
    user, item = planted.part("train")
    config = BPRConfig(dim=4, epochs=2, batch_size=512, progress=False, seed=7)
    first = BPRRecommender(planted.n_users, planted.n_items, config).fit(user, item)
    second = BPRRecommender(planted.n_users, planted.n_items, config).fit(user, item)

    np.testing.assert_array_equal(first.item_embeddings(), second.item_embeddings())
    np.testing.assert_array_equal(first.user_embeddings(), second.user_embeddings())
