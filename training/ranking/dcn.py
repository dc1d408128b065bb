"""DCN-v2 ranker over (request, candidate item) rows, trained with PyTorch on the CPU.

The alternative to the LightGBM ranker (`lgbm_ranker`), over the same `model_array` matrix: the
network and its inputs are described in `core.inference.dcn`, whose numpy forward pass is what
serving and offline evaluation score with (the torch module here only trains). The loss is
listwise: per request, the softmax cross-entropy between the scores and the labels' gains
(2^label - 1, LightGBM's label_gain) as a target distribution. Training stops early on the
validation NDCG@k per request (`core.metrics.grouped_ndcg`, LightGBM's definition), keeping the
best epoch's weights; `refit_dcn` trains again on more rows for the validated number of epochs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from core.inference.dcn import DCN_KIND, DCNScorer, DCNSpec, fit_dcn_spec, weight_shapes
from core.inference.frame import FeatureSpec, model_array
from core.metrics import grouped_ndcg
from training.plotting import new_figure, save_png
from training.ranking.lgbm_ranker import graded_labels, group_sizes, sort_by_group

EVAL_BATCH_ROWS = 65_536


@dataclass
class DCNConfig:
    cross_layers: int = 3
    deep_layers: tuple[int, ...] = (64, 32)
    structure: str = "parallel"  # the MLP beside the cross stack ("parallel") or on top of it ("stacked")
    embedding_dim: int = 4  # per categorical column
    clip: float = 5.0  # standardized numeric inputs are clipped to +-clip
    dropout: float = 0.0  # on the MLP's hidden layers, training only
    epochs: int = 30
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    groups_per_batch: int = 64  # requests per optimizer step
    patience: int = 5  # epochs without a better validation NDCG before stopping
    eval_k: int = 10  # early stopping on validation NDCG@eval_k
    label_gain: tuple[float, ...] = (0.0, 1.0, 3.0, 7.0, 15.0)  # 2^label - 1 for labels 0..4
    seed: int = 0
    num_threads: int = 1

    @property
    def stopping_metric(self) -> str:
        return f"ndcg@{self.eval_k}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DCNResult:
    scorer: DCNScorer  # the numpy model (`core.inference.ranker.Ranker`), best epoch's weights
    spec: FeatureSpec
    config: DCNConfig
    history: dict[str, list[float]] = field(repr=False)  # "train_loss" and "val_ndcg@k", one per epoch
    best_epoch: int  # 1-based
    best_score: float  # validation NDCG@eval_k at best_epoch
    kind = DCN_KIND


@dataclass
class RankingSet:
    """Rows of `model_array` grouped by request (contiguous), with their grades."""

    matrix: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, spec: FeatureSpec, n_grades: int) -> RankingSet:
        if len(rows) == 0:
            raise ValueError("no ranking rows")
        rows = sort_by_group(rows)
        return cls(model_array(rows, spec), graded_labels(rows, n_grades), group_sizes(rows))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)


class DCNNetwork(nn.Module):
    """The torch twin of `core.inference.dcn.DCNScorer` (same layers, same state_dict names)."""

    def __init__(self, spec: DCNSpec, dropout: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        self.embeddings = nn.ModuleList(nn.Embedding(size + 1, spec.embedding_dim) for size in spec.vocab_sizes)
        self.cross = nn.ModuleList(nn.Linear(spec.input_dim, spec.input_dim) for _ in range(spec.cross_layers))
        widths = [spec.input_dim, *spec.deep_layers]
        self.deep = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(spec.head_input_dim, 1)
        for layer in self.cross:  # near the identity at the start: x_{l+1} ~ x_l
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, dense: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([dense, *(table(codes[:, i]) for i, table in enumerate(self.embeddings))], dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        h = x if self.spec.structure == "stacked" else x0
        for layer in self.deep:
            h = self.dropout(torch.relu(layer(h)))
        if self.spec.structure == "stacked":
            top = h
        else:
            top = torch.cat([x, h], dim=1) if len(self.deep) else x
        return self.head(top).squeeze(1)

    def state_arrays(self) -> dict[str, np.ndarray]:
        state = {name: value.detach().cpu().numpy().copy() for name, value in self.state_dict().items()}
        assert set(state) == set(weight_shapes(self.spec)), "the torch module and the numpy model disagree"
        return state


def train_dcn(train_rows: pd.DataFrame, val_rows: pd.DataFrame, spec: FeatureSpec,
              config: DCNConfig | None = None) -> DCNResult:
    """Train with early stopping on the validation NDCG@eval_k; the result holds the best epoch."""
    config = config or DCNConfig()
    train = RankingSet.from_rows(train_rows, spec, len(config.label_gain))
    val = RankingSet.from_rows(val_rows, spec, len(config.label_gain))
    return _fit(train, spec, config, config.epochs, val)


def refit_dcn(rows: pd.DataFrame, validated: DCNResult, epochs: int | None = None) -> DCNResult:
    """`validated`'s configuration trained again from scratch on `rows` (typically its training and
    validation rows together), input statistics included, for `epochs` (default: the validated
    best epoch), no early stopping. Its `best_score` stays the validated one."""
    config = validated.config
    epochs = max(1, epochs or validated.best_epoch)
    result = _fit(RankingSet.from_rows(rows, validated.spec, len(config.label_gain)), validated.spec, config, epochs)
    result.best_score = validated.best_score
    return result


def _fit(train: RankingSet, spec: FeatureSpec, config: DCNConfig, epochs: int, val: RankingSet | None = None
         ) -> DCNResult:
    dcn_spec = fit_dcn_spec(train.matrix, spec.columns, len(spec.numeric),
                            [len(spec.vocabularies[c]) for c in spec.categorical], config.clip, config.embedding_dim,
                            config.cross_layers, config.deep_layers, config.structure)
    gains = np.asarray(config.label_gain, dtype=np.float32)[train.labels]
    dense, codes = _tensors(dcn_spec, train.matrix)
    history: dict[str, list[float]] = {"train_loss": []}
    metric = f"val_{config.stopping_metric}"
    best_state, best_epoch, best_score = None, 0, -np.inf
    with _torch_threads(config.num_threads):
        torch.manual_seed(config.seed)
        model = DCNNetwork(dcn_spec, config.dropout)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        rng = np.random.default_rng(config.seed)
        for epoch in range(1, epochs + 1):
            history["train_loss"].append(_train_epoch(model, optimizer, dense, codes, gains, train.offsets, config,
                                                      rng))
            if val is None:
                continue
            score = grouped_ndcg(_predict(model, *_tensors(dcn_spec, val.matrix)), val.labels, val.sizes,
                                 config.eval_k)
            history.setdefault(metric, []).append(score)
            if score > best_score:
                best_state, best_epoch, best_score = copy.deepcopy(model.state_dict()), epoch, score
            elif epoch - best_epoch >= config.patience:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
    if val is None:
        best_epoch, best_score = epochs, float("nan")
    return DCNResult(DCNScorer(dcn_spec, model.state_arrays()), spec, config, history, best_epoch, float(best_score))


def _tensors(dcn_spec: DCNSpec, matrix: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(dcn_spec.dense_inputs(matrix)), torch.from_numpy(dcn_spec.category_codes(matrix))


def _train_epoch(model: DCNNetwork, optimizer: torch.optim.Optimizer, dense: torch.Tensor, codes: torch.Tensor,
                 gains: np.ndarray, offsets: np.ndarray, config: DCNConfig, rng: np.random.Generator) -> float:
    """One pass over the requests in a random order, `groups_per_batch` requests a step; the mean loss."""
    model.train()
    order = rng.permutation(len(offsets) - 1)
    losses = []
    for start in range(0, len(order), config.groups_per_batch):
        rows, slots = _batch_layout(order[start:start + config.groups_per_batch], offsets)
        loss = listwise_loss(model(dense[rows], codes[rows]), torch.from_numpy(gains[rows]), slots)
        if loss is None:  # no request of the batch has a positive
            continue
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


def _batch_layout(groups: np.ndarray, offsets: np.ndarray) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The rows of `groups` (concatenated) and each row's (group, position) slot in a padded matrix."""
    starts, sizes = offsets[groups], offsets[groups + 1] - offsets[groups]
    group_of = np.repeat(np.arange(len(groups)), sizes)
    position = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    rows = np.repeat(starts, sizes) + position
    return torch.from_numpy(rows), (torch.from_numpy(group_of), torch.from_numpy(position))


def listwise_loss(scores: torch.Tensor, gains: torch.Tensor, slots: tuple[torch.Tensor, torch.Tensor]
                  ) -> torch.Tensor | None:
    """Mean over groups with a positive of -sum_i t_i log softmax(scores)_i, t = gains / sum(gains)
    within the group; None when no group has a positive."""
    group_of, position = slots
    n_groups, width = int(group_of.max()) + 1, int(position.max()) + 1
    padded = torch.full((n_groups, width), float("-inf"), dtype=scores.dtype).index_put((group_of, position), scores)
    log_p = torch.log_softmax(padded, dim=1)[group_of, position]
    totals = torch.zeros(n_groups, dtype=gains.dtype).index_add(0, group_of, gains)
    target = gains / totals[group_of].clamp_min(1e-12)
    per_group = torch.zeros(n_groups, dtype=scores.dtype).index_add(0, group_of, -target * log_p)
    informative = totals > 0
    return per_group[informative].mean() if bool(informative.any()) else None


def _predict(model: DCNNetwork, dense: torch.Tensor, codes: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        parts = [model(dense[i:i + EVAL_BATCH_ROWS], codes[i:i + EVAL_BATCH_ROWS]).numpy()
                 for i in range(0, len(dense), EVAL_BATCH_ROWS)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def plot_dcn_curves(history: dict[str, list[float]], path: str | Path) -> Path:
    """Training loss and validation NDCG against the epoch, one panel each."""
    series = {name: values for name, values in history.items() if values}
    figure = new_figure((5 * max(1, len(series)), 4))
    axes = np.atleast_1d(figure.subplots(1, max(1, len(series))))
    for ax, (name, values) in zip(axes, series.items()):
        ax.plot(range(1, len(values) + 1), values, marker="o")
        ax.set(title=f"DCN {name}", xlabel="epoch", ylabel=name)
    figure.tight_layout()
    return save_png(figure, path)
