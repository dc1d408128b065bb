"""The two-tower model's data types, its saved files, and its user tower in numpy.

Training (`training.retrieval.two_tower`) defines and fits the model in PyTorch and saves, beside
the torch `state_dict`, the user side's weights as numpy arrays (`USER_TOWER_FILE`). Serving encodes
users with `UserTower`, the same arithmetic in numpy: no torch in the serving process (its import
alone costs ~1 s and ~150 MB), and a few matmuls per request instead of a torch call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS_FILE = "two_tower.pt"
CONFIG_FILE = "two_tower_config.json"
USER_TOWER_FILE = "user_tower.npz"
USER_TOWER_PREFIXES = ("item_id.", "user_id.", "user_mlp.")  # state_dict keys the user side uses
HASH_MULTIPLIER = 2_654_435_761  # Knuth's multiplicative hash constant
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's


@dataclass
class TwoTowerConfig:
    embedding_dim: int = 64
    id_dim: int = 64
    category_dim: int = 16
    hidden_dims: tuple[int, ...] = (128,)
    n_user_buckets: int | None = None
    temperature: float = 0.05
    logq_correction: bool = True
    lr: float = 1e-3
    weight_decay: float = 1e-6
    batch_size: int = 512
    epochs: int = 20
    patience: int = 3
    eval_k: int = 10
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TwoTowerConfig:
        values = dict(values)
        values["hidden_dims"] = tuple(values.get("hidden_dims", ()))
        return cls(**values)


def _no_dense() -> np.ndarray:
    return np.zeros((0, 0), dtype=np.float32)


def _as_dense(dense: np.ndarray | None, n_rows: int) -> np.ndarray:
    """Dense features as float32 (n_rows, d); None or an empty array means d = 0."""
    if dense is None or np.size(dense) == 0:
        return np.zeros((n_rows, 0), dtype=np.float32)
    dense = np.asarray(dense, dtype=np.float32)
    if dense.ndim != 2 or len(dense) != n_rows:
        raise ValueError(f"dense features must have shape ({n_rows}, d), got {dense.shape}")
    return dense


@dataclass
class UserFeatures:
    """One row per query: user id, recent item history padded with `n_items`, dense features."""

    user_idx: np.ndarray
    history: np.ndarray
    dense: np.ndarray = field(default_factory=_no_dense)

    def __post_init__(self) -> None:
        self.user_idx = np.asarray(self.user_idx, dtype=np.int64)
        self.history = np.asarray(self.history, dtype=np.int64).reshape(len(self.user_idx), -1)
        self.dense = _as_dense(self.dense, len(self.user_idx))

    def __len__(self) -> int:
        return len(self.user_idx)


@dataclass
class ItemFeatures:
    """Catalog-wide item features indexed by item_idx (row i describes item i)."""

    category: np.ndarray
    dense: np.ndarray = field(default_factory=_no_dense)

    def __post_init__(self) -> None:
        self.category = np.asarray(self.category, dtype=np.int64)
        self.dense = _as_dense(self.dense, len(self.category))

    def __len__(self) -> int:
        return len(self.category)


def read_metadata(directory: Path) -> tuple[TwoTowerConfig, dict[str, int]]:
    """The model's config and sizes (n_users, n_items, ...) from CONFIG_FILE."""
    metadata = json.loads((Path(directory) / CONFIG_FILE).read_text())
    return TwoTowerConfig.from_dict(metadata.pop("config")), metadata


class UserTower:
    """`TwoTowerModel.encode_users` in numpy: id embedding, mean of the history's item embeddings,
    dense features, the MLP (ReLU between layers), L2 normalisation. float32 like the torch model;
    tests/models/test_two_tower.py checks both give the same embeddings."""

    def __init__(self, weights: Mapping[str, np.ndarray], config: TwoTowerConfig, sizes: Mapping[str, int]) -> None:
        self.config = config
        self.sizes = dict(sizes)
        self.item_id = np.ascontiguousarray(weights["item_id.weight"], dtype=np.float32)
        self.user_id = np.ascontiguousarray(weights["user_id.weight"], dtype=np.float32)
        n_layers = len({key.split(".")[1] for key in weights if key.startswith("user_mlp.")})
        indices = sorted({int(key.split(".")[1]) for key in weights if key.startswith("user_mlp.")})
        if len(indices) != n_layers or not indices:
            raise ValueError("user tower weights have no MLP layers")
        self.layers = [(np.ascontiguousarray(weights[f"user_mlp.{i}.weight"].T, dtype=np.float32),
                        np.asarray(weights[f"user_mlp.{i}.bias"], dtype=np.float32)) for i in indices]

    @property
    def n_items(self) -> int:
        return self.sizes["n_items"]

    def _user_rows(self, user_idx: np.ndarray) -> np.ndarray:
        if self.config.n_user_buckets:
            return (user_idx * HASH_MULTIPLIER) % self.config.n_user_buckets
        n_users = self.sizes["n_users"]
        return np.where((user_idx >= 0) & (user_idx < n_users), user_idx, n_users)

    def encode(self, user_idx: np.ndarray, history: np.ndarray, dense: np.ndarray) -> np.ndarray:
        valid = (history >= 0) & (history < self.n_items)
        history_emb = self.item_id[np.where(valid, history, self.n_items)]  # the padding row is zeros
        counts = np.maximum(valid.sum(axis=1, keepdims=True), 1).astype(np.float32)
        history_mean = history_emb.sum(axis=1) / counts
        hidden = np.concatenate([self.user_id[self._user_rows(user_idx)], history_mean, dense], axis=1)
        for i, (weight, bias) in enumerate(self.layers):
            hidden = hidden @ weight + bias
            if i < len(self.layers) - 1:
                np.maximum(hidden, 0.0, out=hidden)
        norms = np.maximum(np.linalg.norm(hidden, axis=1, keepdims=True), _NORM_EPS)
        return (hidden / norms).astype(np.float32, copy=False)

    def user_embeddings(self, users: UserFeatures) -> np.ndarray:
        if len(users) == 0:
            return np.zeros((0, self.config.embedding_dim), dtype=np.float32)
        return self.encode(users.user_idx, users.history, users.dense)

    @classmethod
    def load(cls, directory: str | Path) -> UserTower:
        directory = Path(directory)
        path = directory / USER_TOWER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {USER_TOWER_FILE} in the two-tower folder (a bundle written before the "
                                    "numpy user tower: retrain to serve it)")
        config, sizes = read_metadata(directory)
        with np.load(path, allow_pickle=False) as weights:
            return cls(dict(weights), config, sizes)
