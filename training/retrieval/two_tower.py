"""Two-tower retrieval model (PyTorch) trained with in-batch sampled softmax.

User tower: user-id embedding (optionally hashed into `n_user_buckets`), masked mean of the
item-id embeddings of the user's recent history, and dense user features.
Item tower: item-id embedding (the table shared with the history), category embedding and dense
item features. Both towers end in an MLP and an L2 normalisation, so scores are cosines.

Dense features are used as given: standardise them upstream.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from core.inference.baselines import top_k_items
from core.inference.two_tower import (
    CONFIG_FILE,
    HASH_MULTIPLIER,
    USER_TOWER_FILE,
    USER_TOWER_PREFIXES,
    WEIGHTS_FILE,
    ItemFeatures,
    TwoTowerConfig,
    UserFeatures,
    read_metadata,
)
from training.plotting import new_figure, save_png


@dataclass
class Interactions:
    """Positive (query, item) pairs; `users` holds the point-in-time features of each query."""

    users: UserFeatures
    item_idx: np.ndarray

    def __post_init__(self) -> None:
        self.item_idx = np.asarray(self.item_idx, dtype=np.int64)
        if len(self.item_idx) != len(self.users):
            raise ValueError("item_idx must have one entry per user row")

    def __len__(self) -> int:
        return len(self.item_idx)


def _mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


@contextmanager
def _inference(module: nn.Module) -> Iterator[None]:
    """Eval mode without autograd; a module already in eval mode (serving) is left alone, as
    switching every submodule back and forth costs more than one user's forward pass."""
    was_training = module.training
    if was_training:
        module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            module.train()


class TwoTowerModel(nn.Module):
    def __init__(
        self,
        config: TwoTowerConfig,
        n_users: int,
        n_items: int,
        n_categories: int,
        user_dense_dim: int = 0,
        item_dense_dim: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        self.sizes = {
            "n_users": n_users,
            "n_items": n_items,
            "n_categories": n_categories,
            "user_dense_dim": user_dense_dim,
            "item_dense_dim": item_dense_dim,
        }
        # Extra last rows: the history padding item, the out-of-range user and unknown category.
        self.item_id = nn.Embedding(n_items + 1, config.id_dim, padding_idx=n_items)
        self.user_id = nn.Embedding(config.n_user_buckets or n_users + 1, config.id_dim)
        self.category = nn.Embedding(n_categories + 1, config.category_dim)
        self.user_mlp = _mlp(
            2 * config.id_dim + user_dense_dim, config.hidden_dims, config.embedding_dim
        )
        self.item_mlp = _mlp(
            config.id_dim + config.category_dim + item_dense_dim,
            config.hidden_dims,
            config.embedding_dim,
        )

    @property
    def n_items(self) -> int:
        return self.sizes["n_items"]

    @property
    def device(self) -> torch.device:
        return self.item_id.weight.device

    def _user_rows(self, user_idx: torch.Tensor) -> torch.Tensor:
        if self.config.n_user_buckets:
            return (user_idx * HASH_MULTIPLIER) % self.config.n_user_buckets
        n_users = self.sizes["n_users"]
        return torch.where((user_idx >= 0) & (user_idx < n_users), user_idx, n_users)

    def encode_users(
        self, user_idx: torch.Tensor, history: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        valid = (history >= 0) & (history < self.n_items)
        history_emb = self.item_id(torch.where(valid, history, self.n_items))
        counts = valid.sum(dim=1, keepdim=True).clamp(min=1)
        history_mean = history_emb.sum(dim=1) / counts  # padding rows are zero vectors
        features = torch.cat([self.user_id(self._user_rows(user_idx)), history_mean, dense], dim=1)
        return F.normalize(self.user_mlp(features), dim=-1)

    def encode_items(
        self, item_idx: torch.Tensor, category: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        n_categories = self.sizes["n_categories"]
        category = torch.where((category >= 0) & (category < n_categories), category, n_categories)
        features = torch.cat([self.item_id(item_idx), self.category(category), dense], dim=1)
        return F.normalize(self.item_mlp(features), dim=-1)

    def user_embeddings(self, users: UserFeatures, batch_size: int = 4096) -> np.ndarray:
        chunks = []
        with _inference(self):
            for rows in _batches(len(users), batch_size):
                chunks.append(self.encode_users(*_user_tensors(users, rows, self.device)).cpu())
        return _stack(chunks, self.config.embedding_dim)

    def item_embeddings(self, items: ItemFeatures, batch_size: int = 4096) -> np.ndarray:
        """Embeddings of all catalog items; row i is item i."""
        chunks = []
        with _inference(self):
            for rows in _batches(len(items), batch_size):
                chunks.append(self.encode_items(*_item_tensors(items, rows, self.device)).cpu())
        return _stack(chunks, self.config.embedding_dim)

    def recommend(
        self,
        users: UserFeatures,
        items: ItemFeatures,
        k: int,
        exclude: Mapping[int, set[int]] | None = None,
    ) -> list[list[int]]:
        """Exact top-k per user row; `exclude` is keyed by user_idx."""
        exclude = exclude or {}
        scores = self.user_embeddings(users) @ self.item_embeddings(items).T
        return [
            top_k_items(row, k, exclude.get(int(user)))
            for user, row in zip(users.user_idx, scores)
        ]

    def metadata(self) -> dict[str, Any]:
        """The config and sizes (CONFIG_FILE's content): what `load` and `UserTower` rebuild from."""
        return {"config": asdict(self.config), **self.sizes}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The state_dict as numpy arrays (what a bundle saves)."""
        return {name: tensor.detach().cpu().numpy() for name, tensor in self.state_dict().items()}

    def save(self, directory: str | Path) -> Path:
        """The torch state_dict, the config and the user side as numpy (USER_TOWER_FILE) in `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / WEIGHTS_FILE)
        np.savez(directory / USER_TOWER_FILE, **{name: array for name, array in self.state_arrays().items()
                                                 if name.startswith(USER_TOWER_PREFIXES)})
        (directory / CONFIG_FILE).write_text(json.dumps(self.metadata(), indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> TwoTowerModel:
        directory = Path(directory)
        config, metadata = read_metadata(directory)
        if device is not None:
            config.device = device
        model = cls(config, **metadata)
        state = torch.load(directory / WEIGHTS_FILE, map_location=config.device, weights_only=True)
        model.load_state_dict(state)
        return model.to(config.device).eval()


def _batches(n_rows: int, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, n_rows, batch_size):
        yield np.arange(start, min(start + batch_size, n_rows))


def _stack(chunks: list[torch.Tensor], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), dtype=np.float32)
    return torch.cat(chunks).numpy()


def _user_tensors(
    users: UserFeatures, rows: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.as_tensor(users.user_idx[rows], device=device),
        torch.as_tensor(users.history[rows], device=device),
        torch.as_tensor(users.dense[rows], device=device),
    )


def _item_tensors(
    items: ItemFeatures, item_idx: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.as_tensor(item_idx, device=device),
        torch.as_tensor(items.category[item_idx], device=device),
        torch.as_tensor(items.dense[item_idx], device=device),
    )


def in_batch_softmax_loss(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    item_idx: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax where row i's positive is column i and the other columns are negatives.

    `log_q` (per column) is the log sampling probability of each in-batch item; subtracting it
    corrects the popularity bias of in-batch negatives (Yi et al., 2019). Columns holding the same
    item as row i's positive are masked so a duplicate is never treated as a negative.
    """
    logits = user_emb @ item_emb.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    duplicate = item_idx.unsqueeze(0) == item_idx.unsqueeze(1)
    duplicate.fill_diagonal_(False)
    logits = logits.masked_fill(duplicate, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


@dataclass
class TrainHistory:
    train_loss: list[float] = field(default_factory=list)
    val_recall: list[float] = field(default_factory=list)
    k: int = 10


@dataclass
class TrainResult:
    model: TwoTowerModel
    history: TrainHistory
    best_epoch: int  # 1-based; the last epoch when there is no validation set
    best_val_recall: float | None
    stopped_early: bool


def recall_at_k(
    model: TwoTowerModel,
    queries: Interactions,
    items: ItemFeatures,
    k: int,
    batch_size: int = 1024,
) -> float:
    """Share of (query, held-out item) pairs whose item is in the query's exact top-k over the
    whole catalog (nothing excluded)."""
    if len(queries) == 0:
        return 0.0
    item_emb = torch.from_numpy(model.item_embeddings(items))
    user_emb = torch.from_numpy(model.user_embeddings(queries.users))
    targets = torch.from_numpy(queries.item_idx)
    hits = 0
    for rows in _batches(len(queries), batch_size):
        top_k = (user_emb[rows] @ item_emb.T).topk(min(k, len(item_emb)), dim=1).indices
        hits += int((top_k == targets[rows].unsqueeze(1)).any(dim=1).sum())
    return hits / len(queries)


def _log_item_frequency(item_idx: np.ndarray, n_items: int) -> torch.Tensor:
    counts = np.bincount(item_idx, minlength=n_items).astype(np.float64)
    return torch.from_numpy(np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32))


def train_two_tower(
    train: Interactions,
    items: ItemFeatures,
    n_users: int,
    config: TwoTowerConfig | None = None,
    val: Interactions | None = None,
    n_categories: int | None = None,
) -> TrainResult:
    """Train with AdamW; with `val`, stop after `patience` epochs without a strictly better
    validation recall@`eval_k` and restore the best epoch's weights."""
    config = config or TwoTowerConfig()
    n_items = len(items)
    if len(train) == 0:
        raise ValueError("no training interactions")
    if train.item_idx.min() < 0 or train.item_idx.max() >= n_items:
        raise ValueError(f"train.item_idx must lie in [0, {n_items})")
    if n_categories is None:
        n_categories = int(items.category.max()) + 1 if n_items else 0
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without global effects
        torch.manual_seed(config.seed)
        model = TwoTowerModel(
            config, n_users, n_items, n_categories, train.users.dense.shape[1], items.dense.shape[1]
        ).to(config.device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    log_q = _log_item_frequency(train.item_idx, n_items).to(config.device)
    generator = torch.Generator().manual_seed(config.seed)

    history = TrainHistory(k=config.eval_k)
    best_recall, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    stopped_early = False
    for epoch in range(1, config.epochs + 1):
        history.train_loss.append(
            _train_epoch(model, optimizer, train, items, log_q, generator, epoch)
        )
        if val is None:
            continue
        history.val_recall.append(recall_at_k(model, val, items, config.eval_k))
        if history.val_recall[-1] > best_recall:
            best_recall, best_epoch = history.val_recall[-1], epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            stopped_early = epoch < config.epochs
            break

    if val is None:
        return TrainResult(model.eval(), history, len(history.train_loss), None, False)
    model.load_state_dict(best_state)
    return TrainResult(model.eval(), history, best_epoch, best_recall, stopped_early)


def _train_epoch(
    model: TwoTowerModel,
    optimizer: torch.optim.Optimizer,
    train: Interactions,
    items: ItemFeatures,
    log_q: torch.Tensor,
    generator: torch.Generator,
    epoch: int,
) -> float:
    config, device = model.config, model.device
    model.train()
    order = torch.randperm(len(train), generator=generator).numpy()
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    progress = tqdm(batches, desc=f"two-tower epoch {epoch}", disable=not config.progress)
    total = 0.0
    for rows in progress:
        user_emb = model.encode_users(*_user_tensors(train.users, rows, device))
        item_idx, category, dense = _item_tensors(items, train.item_idx[rows], device)
        item_emb = model.encode_items(item_idx, category, dense)
        batch_log_q = log_q[item_idx] if config.logq_correction else None
        loss = in_batch_softmax_loss(user_emb, item_emb, item_idx, config.temperature, batch_log_q)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(rows)
        progress.set_postfix(loss=f"{loss.item():.4f}")
    return total / len(train)


def plot_training_curves(history: TrainHistory, path: str | Path) -> Path:
    """Save a PNG with the training loss and (if any) validation recall per epoch."""
    figure = new_figure((10, 4))
    loss_ax, recall_ax = figure.subplots(1, 2)
    epochs = range(1, len(history.train_loss) + 1)
    loss_ax.plot(epochs, history.train_loss, marker="o")
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="sampled softmax loss")
    recall_ax.plot(range(1, len(history.val_recall) + 1), history.val_recall, marker="o")
    recall_ax.set(title=f"validation recall@{history.k}", xlabel="epoch", ylabel="recall")
    figure.tight_layout()
    return save_png(figure, path)
