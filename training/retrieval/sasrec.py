"""SASRec (self-attentive sequential recommendation) trained with PyTorch on the CPU.

The model learns, from each user's items in time order, to score the next item: a causal
transformer over the last `max_len` items (`core.inference.sasrec` documents the layout; its numpy
forward pass is what candidate generation and serving run). Training examples are windows of a
user's sequence, `max_len` items in and the same items shifted by one as targets, the loss a
softmax cross-entropy over the whole catalog at every position (over the targets plus
`sampled_negatives` uniformly drawn items when the catalog is larger than `full_softmax_max_items`).

`fit_sasrec` takes the events before a time (as the other candidate sources) and returns a
`SASRecScorer`; `warm_start` continues from an earlier fit's weights (the weekly refits of the
ranker's requests need a few epochs, not a new model).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from core.inference.sasrec import LAYER_NORM_EPS, SASRecScorer, SASRecShape


@dataclass
class SASRecConfig:
    dim: int = 64
    n_blocks: int = 2
    n_heads: int = 2
    max_len: int = 20  # the online recent history's length (Settings.recent_history_length)
    dropout: float = 0.2
    epochs: int = 30
    warm_epochs: int = 5  # epochs of a refit that starts from an earlier fit's weights
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    full_softmax_max_items: int = 50_000
    sampled_negatives: int = 4_096
    seed: int = 7
    num_threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attention_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.query, self.key, self.value, self.output = (nn.Linear(dim, dim) for _ in range(4))
        self.ffn_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ffn_in, self.ffn_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        head_dim = dim // self.n_heads
        h = self.attention_norm(x)
        split = lambda t: t.view(n, length, self.n_heads, head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        logits = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        logits = logits.masked_fill(~allowed[:, None], -1e9)
        attention = self.dropout(torch.softmax(logits, dim=-1))
        mixed = (attention @ v).transpose(1, 2).reshape(n, length, dim)
        x = x + self.dropout(self.output(mixed))
        h = self.ffn_norm(x)
        x = x + self.dropout(self.ffn_out(self.dropout(torch.relu(self.ffn_in(h)))))
        return x * valid[..., None]


class SASRecModel(nn.Module):
    """The torch twin of `core.inference.sasrec.SASRecScorer` (same weight names)."""

    def __init__(self, shape: SASRecShape, dropout: float) -> None:
        super().__init__()
        self.shape = shape
        self.item_embedding = nn.Embedding(shape.n_items + 1, shape.dim, padding_idx=shape.n_items)
        self.position_embedding = nn.Embedding(shape.max_len, shape.dim)
        self.blocks = nn.ModuleList(_Block(shape.dim, shape.n_heads, dropout) for _ in range(shape.n_blocks))
        self.final_norm = nn.LayerNorm(shape.dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.item_embedding.weight, std=shape.dim ** -0.5)
        with torch.no_grad():
            self.item_embedding.weight[shape.n_items].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(n, max_len) left-padded item indices -> (n, max_len, dim) outputs at every position."""
        valid = seq < self.shape.n_items
        length = seq.shape[1]
        x = self.item_embedding(seq) * math.sqrt(self.shape.dim) + self.position_embedding.weight[None, :length]
        x = self.dropout(x) * valid[..., None]
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
        allowed = causal[None] & (valid[:, None, :] | torch.eye(length, dtype=torch.bool)[None])
        for block in self.blocks:
            x = block(x, allowed, valid)
        return self.final_norm(x)

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {name: value.detach().cpu().numpy().copy() for name, value in self.state_dict().items()}


def user_sequences(user_idx: np.ndarray, item_idx: np.ndarray, ts: np.ndarray) -> list[np.ndarray]:
    """Each user's items ordered by (time, item index), repeats kept: the recent-history feature's
    order (`training.features.user_features.build_user_recent_history`)."""
    order = np.lexsort((item_idx, ts, user_idx))
    users, items = np.asarray(user_idx)[order], np.asarray(item_idx)[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    return [part for part in np.split(items, bounds) if len(part) >= 2]


def training_windows(sequences: list[np.ndarray], max_len: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each (n_windows, max_len), left-padded with `pad`: windows of max_len + 1
    items ending at a sequence's end, then every max_len items before it."""
    inputs, targets = [], []
    for seq in sequences:
        for end in range(len(seq), 1, -max_len):
            window = seq[max(0, end - max_len - 1): end]
            row_in = np.full(max_len, pad, dtype=np.int64)
            row_out = np.full(max_len, pad, dtype=np.int64)
            row_in[max_len - len(window) + 1:] = window[:-1]
            row_out[max_len - len(window) + 1:] = window[1:]
            inputs.append(row_in)
            targets.append(row_out)
    if not inputs:
        return np.zeros((0, max_len), dtype=np.int64), np.zeros((0, max_len), dtype=np.int64)
    return np.stack(inputs), np.stack(targets)


def fit_sasrec(user_idx: np.ndarray, item_idx: np.ndarray, ts: np.ndarray, n_items: int,
               config: SASRecConfig | None = None, warm_start: SASRecScorer | None = None) -> SASRecScorer:
    """Train on the events given (all of them: the caller passes the events before a time)."""
    config = config or SASRecConfig()
    shape = SASRecShape(n_items, config.dim, config.n_blocks, config.n_heads, config.max_len)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = SASRecModel(shape, config.dropout)
    epochs = config.epochs
    if warm_start is not None and warm_start.shape == shape:
        model.load_state_dict({name: torch.from_numpy(value.copy()) for name, value in warm_start.weights.items()})
        epochs = config.warm_epochs
    inputs, targets = training_windows(user_sequences(user_idx, item_idx, ts), config.max_len, n_items)
    if len(inputs) and epochs > 0:
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(config.num_threads)
        try:
            _train(model, inputs, targets, config, epochs, rng)
        finally:
            torch.set_num_threads(previous_threads)
    model.eval()
    return SASRecScorer(shape, model.state_arrays())


def _train(model: SASRecModel, inputs: np.ndarray, targets: np.ndarray, config: SASRecConfig, epochs: int,
           rng: np.random.Generator) -> None:
    n_items = model.shape.n_items
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    sampled = n_items > config.full_softmax_max_items
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(inputs))
        for start in range(0, len(order), config.batch_size):
            rows = order[start: start + config.batch_size]
            seq, target = torch.from_numpy(inputs[rows]), torch.from_numpy(targets[rows])
            keep = target < n_items
            hidden = model(seq)[keep]  # (m, dim) outputs at positions with a next item
            wanted = target[keep]
            embeddings = model.item_embedding.weight[:n_items]
            if sampled:
                negatives = torch.from_numpy(rng.integers(0, n_items, config.sampled_negatives))
                candidates = torch.cat([wanted, negatives])
                logits = hidden @ embeddings[candidates].T
                labels = torch.arange(len(wanted))
            else:
                logits, labels = hidden @ embeddings.T, wanted
            loss = nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        model.item_embedding.weight[n_items].zero_()


class SASRecFitter:
    """SASRec fits for requests at increasing times, as the ranker's weekly source refits ask for
    them: a fit on the events before `before` is reused until `refit_days` have passed since it
    (it never saw an event at or after its own time, so it is never from a request's future), then
    the next fit starts from its weights (`warm_epochs`)."""

    def __init__(self, config: SASRecConfig, refit_days: int | None = 28) -> None:
        self.config = config
        self.refit_days = refit_days
        self._last: tuple[int, SASRecScorer] | None = None
        self.fits = 0

    def at(self, events, before: int, n_items: int) -> SASRecScorer:
        """The model for requests at or after `before` (epoch s), from `events` (user_idx,
        item_idx, ts columns) strictly before it."""
        if self._last is not None:
            fitted_at, scorer = self._last
            if fitted_at <= before and (self.refit_days is None or before - fitted_at < self.refit_days * 86_400):
                return scorer
        past = events[events.ts < before]
        warm = self._last[1] if self._last is not None and self._last[0] <= before else None
        scorer = fit_sasrec(past.user_idx.to_numpy(), past.item_idx.to_numpy(), past.ts.to_numpy(), n_items,
                            self.config, warm_start=warm)
        self._last = (before, scorer)
        self.fits += 1
        return scorer

    def final(self, events, before: int, n_items: int) -> SASRecScorer:
        """A fit on every event before `before`, whatever the refit period (what a bundle ships)."""
        if self._last is not None and self._last[0] == before:
            return self._last[1]
        refit_days, self.refit_days = self.refit_days, 0
        try:
            return self.at(events, before, n_items)
        finally:
            self.refit_days = refit_days
