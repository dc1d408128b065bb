"""Implicit-feedback matrix factorisation trained with the BPR pairwise loss (PyTorch).

score(u, i) = <p_u, q_i> + b_i. Every epoch visits each distinct (user, item) pair once, paired
with a uniformly sampled negative item that the user has not interacted with (one resampling
round, so a rare collision can remain for very active users).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from core.inference.baselines import top_k_items


@dataclass
class BPRConfig:
    dim: int = 64
    lr: float = 0.01
    # L2 penalty on the embeddings used in each batch rather than Adam's weight_decay: Adam would
    # decay every row on every step, including users/items absent from the batch.
    weight_decay: float = 1e-4
    batch_size: int = 1024
    epochs: int = 20
    init_std: float = 0.1
    seed: int = 0
    progress: bool = True


class BPRModel(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.normal_(self.user.weight, std=init_std, generator=generator)
        nn.init.normal_(self.item.weight, std=init_std, generator=generator)
        nn.init.zeros_(self.item_bias.weight)

    def pairwise_loss(
        self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, l2: float
    ) -> torch.Tensor:
        user, pos, neg = self.user(users), self.item(positives), self.item(negatives)
        bias_diff = (self.item_bias(positives) - self.item_bias(negatives)).squeeze(-1)
        margin = (user * (pos - neg)).sum(-1) + bias_diff
        penalty = (user.pow(2) + pos.pow(2) + neg.pow(2)).sum(-1).mean()
        return -F.logsigmoid(margin).mean() + l2 * penalty


class BPRRecommender:
    def __init__(self, n_users: int, n_items: int, config: BPRConfig | None = None) -> None:
        self.n_users = n_users
        self.n_items = n_items
        self.config = config or BPRConfig()
        self.model = BPRModel(
            n_users, n_items, self.config.dim, self.config.init_std, self.config.seed
        )
        self.loss_history: list[float] = []

    def fit(self, user_idx: np.ndarray, item_idx: np.ndarray) -> BPRRecommender:
        config = self.config
        users, items = self._unique_pairs(user_idx, item_idx)
        positive_keys = users * self.n_items + items  # sorted by construction
        rng = np.random.default_rng(config.seed)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.model.train()
        epochs = tqdm(range(config.epochs), desc="BPR", disable=not config.progress)
        for _ in epochs:
            losses = []
            for batch in np.array_split(rng.permutation(len(users)), self._n_batches(len(users))):
                negatives = self._sample_negatives(users[batch], positive_keys, rng)
                loss = self.model.pairwise_loss(
                    torch.from_numpy(users[batch]),
                    torch.from_numpy(items[batch]),
                    torch.from_numpy(negatives),
                    config.weight_decay,
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            self.loss_history.append(float(np.mean(losses)))
            epochs.set_postfix(loss=f"{self.loss_history[-1]:.4f}")
        return self

    def _unique_pairs(
        self, user_idx: np.ndarray, item_idx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        user_idx = np.asarray(user_idx, dtype=np.int64)
        item_idx = np.asarray(item_idx, dtype=np.int64)
        if len(user_idx) != len(item_idx) or len(user_idx) == 0:
            raise ValueError("user_idx and item_idx must be non-empty and of equal length")
        if user_idx.min() < 0 or user_idx.max() >= self.n_users:
            raise ValueError(f"user_idx must lie in [0, {self.n_users})")
        if item_idx.min() < 0 or item_idx.max() >= self.n_items:
            raise ValueError(f"item_idx must lie in [0, {self.n_items})")
        keys = np.unique(user_idx * self.n_items + item_idx)
        return keys // self.n_items, keys % self.n_items

    def _n_batches(self, n_pairs: int) -> int:
        return max(1, -(-n_pairs // self.config.batch_size))

    def _sample_negatives(
        self, users: np.ndarray, positive_keys: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        negatives = rng.integers(0, self.n_items, size=len(users))
        collided = np.isin(users * self.n_items + negatives, positive_keys)
        negatives[collided] = rng.integers(0, self.n_items, size=int(collided.sum()))
        return negatives

    def user_embeddings(self, with_bias: bool = False) -> np.ndarray:
        """(n_users, dim); with_bias appends a constant 1 to match `item_embeddings(True)`."""
        users = self.model.user.weight.detach().numpy().copy()
        if with_bias:
            users = np.hstack([users, np.ones((len(users), 1), dtype=users.dtype)])
        return users

    def item_embeddings(self, with_bias: bool = False) -> np.ndarray:
        """(n_items, dim); with_bias appends b_i so an inner product equals the full score."""
        items = self.model.item.weight.detach().numpy().copy()
        if with_bias:
            items = np.hstack([items, self.model.item_bias.weight.detach().numpy()])
        return items

    def score(self, user_idxs: Sequence[int]) -> np.ndarray:
        """(len(user_idxs), n_items) score matrix."""
        users = self.user_embeddings(with_bias=True)[np.asarray(user_idxs, dtype=np.int64)]
        return users @ self.item_embeddings(with_bias=True).T

    def recommend(
        self,
        user_idxs: Sequence[int],
        k: int,
        exclude: Mapping[int, set[int]] | None = None,
        batch_size: int = 1024,
    ) -> list[list[int]]:
        exclude = exclude or {}
        user_idxs = [int(u) for u in user_idxs]
        recommendations: list[list[int]] = []
        for start in range(0, len(user_idxs), batch_size):
            batch = user_idxs[start : start + batch_size]
            for user, scores in zip(batch, self.score(batch)):
                recommendations.append(top_k_items(scores, k, exclude.get(user)))
        return recommendations
