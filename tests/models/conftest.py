"""Shared fixtures for the model tests: a small dataset with planted cluster structure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from core.inference.baselines import PopularityRecommender
from core.metrics import ranking_metrics


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> None:
    torch.set_num_threads(1)


@dataclass
class PlantedData:
    """Users and items each belong to one of two clusters; a user mostly consumes popular items
    of their own cluster. Per user the first 14 interactions train, the next 2 validate and the
    last 4 are held out for testing."""

    n_users: int
    n_items: int
    item_cluster: np.ndarray
    user: np.ndarray  # all interactions, time-ordered per user
    item: np.ndarray
    timestamp: np.ndarray
    split: np.ndarray  # "train" | "val" | "test" per interaction

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.split == name
        return self.user[mask], self.item[mask]

    def relevant(self, name: str) -> dict[int, dict[int, float]]:
        relevant: dict[int, dict[int, float]] = {}
        for user, item in zip(*self.part(name)):
            relevant.setdefault(int(user), {})[int(item)] = 1.0
        return relevant

    def seen(self) -> dict[int, set[int]]:
        """Items each user interacted with before the test period (excluded at test time)."""
        seen: dict[int, set[int]] = {}
        for user, item, split in zip(self.user, self.item, self.split):
            if split != "test":
                seen.setdefault(int(user), set()).add(int(item))
        return seen

    def recall_at_10(self, recommendations: list[list[int]], users: list[int]) -> float:
        metrics = ranking_metrics(dict(zip(users, recommendations)), self.relevant("test"), ks=(10,))
        return metrics["recall@10"]


def make_planted_data(
    n_users: int = 300, n_items: int = 200, per_user: int = 20, noise: float = 0.1, seed: int = 0
) -> PlantedData:
    rng = np.random.default_rng(seed)
    item_cluster = rng.permutation(np.arange(n_items) % 2)
    user_cluster = rng.integers(0, 2, n_users)
    popularity = 1.0 / (rng.permutation(n_items) + 5.0)
    items = []
    for user in range(n_users):
        weight = np.where(item_cluster == user_cluster[user], popularity, noise * popularity)
        items.append(rng.choice(n_items, size=per_user, replace=False, p=weight / weight.sum()))
    position = np.tile(np.arange(per_user), n_users)
    split = np.where(position < per_user - 6, "train", np.where(position < per_user - 4, "val", "test"))
    user = np.repeat(np.arange(n_users), per_user)
    return PlantedData(
        n_users=n_users,
        n_items=n_items,
        item_cluster=item_cluster,
        user=user,
        item=np.concatenate(items),
        timestamp=1_700_000_000 + 3_600 * position + user,
        split=split,
    )


@pytest.fixture(scope="session")
def planted() -> PlantedData:
    return make_planted_data()


@pytest.fixture(scope="session")
def popularity_test_recall(planted: PlantedData) -> float:
    """Recall@10 on the test interactions of popularity fitted on train + val."""
    users = sorted(planted.relevant("test"))
    mask = planted.split != "test"
    model = PopularityRecommender(planted.n_items).fit(planted.user[mask], planted.item[mask])
    return planted.recall_at_10(model.recommend(users, 10, planted.seen()), users)
