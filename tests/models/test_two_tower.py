import dataclasses

import numpy as np
import pytest
import torch

from core.inference.two_tower import UserTower
from training.retrieval.two_tower import (
    Interactions,
    ItemFeatures,
    TwoTowerConfig,
    TwoTowerModel,
    UserFeatures,
    in_batch_softmax_loss,
    plot_training_curves,
    recall_at_k,
    train_two_tower,
)

HISTORY = 10
CONFIG = TwoTowerConfig(
    embedding_dim=16,
    id_dim=16,
    category_dim=4,
    hidden_dims=(32,),
    temperature=0.1,
    lr=3e-3,
    batch_size=256,
    epochs=15,
    patience=3,
    progress=False,
)


def point_in_time_histories(planted) -> np.ndarray:
    """Row r: the user's previous HISTORY items before interaction r, most recent first."""
    history = np.full((len(planted.user), HISTORY), planted.n_items)
    previous: dict[int, list[int]] = {}
    for row, (user, item) in enumerate(zip(planted.user, planted.item)):
        seen = previous.setdefault(int(user), [])
        recent = seen[::-1][:HISTORY]
        history[row, : len(recent)] = recent
        seen.append(int(item))
    return history


@pytest.fixture(scope="module")
def data(planted):
    history = point_in_time_histories(planted)
    rng = np.random.default_rng(0)
    items = ItemFeatures(category=planted.item_cluster, dense=rng.normal(size=(planted.n_items, 2)))

    def part(name: str) -> Interactions:
        mask = planted.split == name
        users = UserFeatures(planted.user[mask], history[mask])  # no dense user features
        return Interactions(users, planted.item[mask])

    return {"items": items, "train": part("train"), "val": part("val"), "test": part("test")}


@pytest.fixture(scope="module")
def trained(planted, data):
    return train_two_tower(data["train"], data["items"], planted.n_users, CONFIG, val=data["val"])


def test_two_tower_beats_popularity_on_held_out_interactions(
    planted, data, trained, popularity_test_recall
) -> None:
    # Query each test user once, with the history at the start of the test period.
    test = data["test"]
    first_rows = np.unique(test.users.user_idx, return_index=True)[1]
    queries = UserFeatures(test.users.user_idx[first_rows], test.users.history[first_rows])
    recommendations = trained.model.recommend(queries, data["items"], 10, planted.seen())
    two_tower_recall = planted.recall_at_10(recommendations, queries.user_idx.tolist())

    assert trained.history.train_loss[-1] < trained.history.train_loss[0]
    assert two_tower_recall > popularity_test_recall + 0.03, (two_tower_recall, popularity_test_recall)


def test_training_restores_best_validation_weights(data, trained) -> None:
    history = trained.history
    assert trained.best_val_recall == max(history.val_recall)
    assert history.val_recall[trained.best_epoch - 1] == trained.best_val_recall
    recall = recall_at_k(trained.model, data["val"], data["items"], CONFIG.eval_k)
    assert recall == pytest.approx(trained.best_val_recall)


def test_early_stopping_stops_when_validation_does_not_improve(planted, data) -> None:
    config = dataclasses.replace(CONFIG, lr=0.0, epochs=10, patience=2)

    result = train_two_tower(data["train"], data["items"], planted.n_users, config, val=data["val"])

    assert result.stopped_early
    assert len(result.history.train_loss) == len(result.history.val_recall) == 3
    assert result.best_epoch == 1


def test_save_load_round_trip_gives_identical_embeddings(tmp_path, data, trained) -> None:
    trained.model.save(tmp_path / "bundle")
    loaded = TwoTowerModel.load(tmp_path / "bundle")

    assert loaded.config == trained.model.config
    users = data["test"].users
    np.testing.assert_array_equal(loaded.user_embeddings(users), trained.model.user_embeddings(users))
    np.testing.assert_array_equal(
        loaded.item_embeddings(data["items"]), trained.model.item_embeddings(data["items"])
    )


def test_the_numpy_user_tower_serving_runs_gives_the_torch_models_embeddings(tmp_path, data, trained) -> None:
    trained.model.save(tmp_path / "bundle")
    tower = UserTower.load(tmp_path / "bundle")

    users = data["test"].users
    expected = trained.model.user_embeddings(users)
    np.testing.assert_allclose(tower.user_embeddings(users), expected, rtol=0, atol=2e-6)
    unknown = UserFeatures(user_idx=np.array([-1, 10**9]), history=np.full((2, HISTORY), -5))  # ids out of range
    np.testing.assert_allclose(tower.user_embeddings(unknown), trained.model.user_embeddings(unknown), atol=2e-6)


def test_hashed_user_ids_give_the_same_rows_in_numpy_and_torch(tmp_path, planted) -> None:
    config = dataclasses.replace(CONFIG, n_user_buckets=97)
    model = TwoTowerModel(config, planted.n_users, planted.n_items, 3)
    model.save(tmp_path / "hashed")
    users = UserFeatures(user_idx=np.array([0, 5, 96, 97, 10**12]), history=np.full((5, HISTORY), planted.n_items))
    np.testing.assert_allclose(UserTower.load(tmp_path / "hashed").user_embeddings(users),
                               model.user_embeddings(users), atol=2e-6)


def test_a_folder_without_the_numpy_user_tower_is_refused_with_the_reason(tmp_path, trained) -> None:
    trained.model.save(tmp_path / "old")
    (tmp_path / "old" / "user_tower.npz").unlink()
    with pytest.raises(FileNotFoundError, match="retrain"):
        UserTower.load(tmp_path / "old")


def test_embeddings_are_l2_normalised_and_batched_consistently(data, trained) -> None:
    items = trained.model.item_embeddings(data["items"], batch_size=7)

    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(items, trained.model.item_embeddings(data["items"]), atol=1e-6)


def test_hashed_and_unknown_user_ids_are_supported() -> None:
    items = ItemFeatures(category=np.array([0, 1, 5]))  # category 5 is out of range: unknown
    users = UserFeatures(
        user_idx=np.array([0, 10**12]), history=np.array([[1, 3], [3, 3]]), dense=np.ones((2, 3))
    )
    for buckets in (None, 16):
        config = dataclasses.replace(CONFIG, n_user_buckets=buckets)
        model = TwoTowerModel(config, n_users=5, n_items=3, n_categories=2, user_dense_dim=3)

        embeddings = model.user_embeddings(users)

        assert embeddings.shape == (2, CONFIG.embedding_dim) and np.isfinite(embeddings).all()
        assert np.isfinite(model.item_embeddings(items)).all()


def test_in_batch_loss_masks_duplicate_positives() -> None:
    user = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    item = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [1.0, 0.0]]), dim=1)
    item_idx = torch.tensor([4, 4, 9])  # rows 0 and 1 share the same positive item
    log_q = torch.log(torch.tensor([0.5, 0.5, 0.25]))

    loss = in_batch_softmax_loss(user, item, item_idx, temperature=0.5, log_q=log_q)

    logits = (user @ item.T / 0.5 - log_q).tolist()
    row0 = -logits[0][0] + np.log(np.exp(logits[0][0]) + np.exp(logits[0][2]))
    row1 = -logits[1][1] + np.log(np.exp(logits[1][1]) + np.exp(logits[1][2]))
    row2 = -logits[2][2] + np.log(np.sum(np.exp(logits[2])))
    assert loss.item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-5)


def test_plot_training_curves_writes_png(tmp_path, trained) -> None:
    path = plot_training_curves(trained.history, tmp_path / "plots" / "curves.png")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
