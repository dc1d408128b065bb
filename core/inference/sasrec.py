"""SASRec at request time: self-attention over a user's recent history, in numpy.

Training (`training.retrieval.sasrec`, PyTorch) fits the model on users' time-ordered items and
hands over its weights as named arrays; this module is the only forward pass the platform runs
outside training's own loss, so the ranker's training features and the served ones come from
the same code. The serving process never imports torch.

The model (Kang & McAuley 2018, pre-LayerNorm blocks): the history in time order, left-padded to
`max_len`, so the newest item always sits at the last position; item embedding x sqrt(d) plus a
learned position embedding; `n_blocks` x [LayerNorm -> causal multi-head self-attention ->
residual, LayerNorm -> ReLU feed-forward -> residual, padding rows zeroed]; a final LayerNorm. The
last position's output, dotted with the (shared) item embeddings, gives every item's logit as the
next one; `scores` turns them into probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class SASRecShape:
    n_items: int
    dim: int
    n_blocks: int
    n_heads: int
    max_len: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_mapping(cls, values: Mapping) -> SASRecShape:
        return cls(**{k: int(values[k]) for k in ("n_items", "dim", "n_blocks", "n_heads", "max_len")})


def weight_names(shape: SASRecShape) -> list[str]:
    """The arrays a model consists of (the same names as the torch module's state_dict)."""
    names = ["item_embedding.weight", "position_embedding.weight"]
    for b in range(shape.n_blocks):
        names += [f"blocks.{b}.{part}" for part in (
            "attention_norm.weight", "attention_norm.bias", "query.weight", "query.bias", "key.weight", "key.bias",
            "value.weight", "value.bias", "output.weight", "output.bias", "ffn_norm.weight", "ffn_norm.bias",
            "ffn_in.weight", "ffn_in.bias", "ffn_out.weight", "ffn_out.bias")]
    return [*names, "final_norm.weight", "final_norm.bias"]


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * weight + bias


class SASRecScorer:
    """The forward pass from named weights (float32). Item index `n_items` is the padding."""

    def __init__(self, shape: SASRecShape, weights: Mapping[str, np.ndarray]) -> None:
        missing = [name for name in weight_names(shape) if name not in weights]
        if missing:
            raise ValueError(f"SASRec weights lack {', '.join(missing[:3])}")
        self.shape = shape
        self.weights = {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in weight_names(shape)}
        embedding = self.weights["item_embedding.weight"]
        if embedding.shape != (shape.n_items + 1, shape.dim):
            raise ValueError(f"SASRec item embedding is {embedding.shape}, expected {(shape.n_items + 1, shape.dim)}")
        self.item_embeddings = embedding[: shape.n_items]
        # Every block's linear maps as (in, out) matrices, transposed once.
        self._t = {name: np.ascontiguousarray(value.T) for name, value in self.weights.items()
                   if name.endswith(".weight") and value.ndim == 2 and "embedding" not in name}

    @property
    def n_items(self) -> int:
        return self.shape.n_items

    def sequences(self, history: np.ndarray) -> np.ndarray:
        """(n, max_len) time-ordered, left-padded item indices from (n, L) histories given most
        recent first (the recent-history feature's order); entries outside [0, n_items) are padding."""
        history = np.asarray(history, dtype=np.int64)
        if history.ndim == 1:
            history = history[None, :]
        n, max_len, pad = len(history), self.shape.max_len, self.shape.n_items
        out = np.full((n, max_len), pad, dtype=np.int64)
        for row, items in enumerate(history):
            items = items[(items >= 0) & (items < pad)][:max_len]
            if items.size:
                out[row, max_len - items.size:] = items[::-1]
        return out

    def user_vectors(self, history: np.ndarray) -> np.ndarray:
        """(n, dim) float32: the last position's output for each history (zeros for an empty one)."""
        seq = self.sequences(history)
        shape, w = self.shape, self.weights
        valid = seq < shape.n_items
        x = w["item_embedding.weight"][seq] * np.float32(np.sqrt(shape.dim)) + w["position_embedding.weight"][None]
        x *= valid[..., None]
        length = shape.max_len
        causal = np.tril(np.ones((length, length), dtype=bool))
        allowed = causal[None] & (valid[:, None, :] | np.eye(length, dtype=bool)[None])  # (n, q, k)
        head_dim = shape.dim // shape.n_heads
        for b in range(shape.n_blocks):
            p = f"blocks.{b}."
            h = _layer_norm(x, w[p + "attention_norm.weight"], w[p + "attention_norm.bias"])
            q, k, v = (h @ self._t[p + f"{name}.weight"] + w[p + f"{name}.bias"] for name in ("query", "key", "value"))
            split = lambda t: t.reshape(len(seq), length, shape.n_heads, head_dim).transpose(0, 2, 1, 3)  # noqa: E731
            logits = split(q) @ split(k).transpose(0, 1, 3, 2) / np.float32(np.sqrt(head_dim))
            logits = np.where(allowed[:, None], logits, np.float32(-1e9))
            logits -= logits.max(axis=-1, keepdims=True)
            attention = np.exp(logits)
            attention /= attention.sum(axis=-1, keepdims=True)
            mixed = (attention @ split(v)).transpose(0, 2, 1, 3).reshape(len(seq), length, shape.dim)
            x = x + mixed @ self._t[p + "output.weight"] + w[p + "output.bias"]
            h = _layer_norm(x, w[p + "ffn_norm.weight"], w[p + "ffn_norm.bias"])
            inner = np.maximum(h @ self._t[p + "ffn_in.weight"] + w[p + "ffn_in.bias"], 0)
            x = x + inner @ self._t[p + "ffn_out.weight"] + w[p + "ffn_out.bias"]
            x *= valid[..., None]
        last = _layer_norm(x[:, -1], w["final_norm.weight"], w["final_norm.bias"])
        return np.where(valid[:, -1:], last, 0).astype(np.float32)

    def scores(self, user_vectors: np.ndarray) -> np.ndarray:
        """(n, n_items) float32 next-item probabilities: the softmax of the logits over the catalog
        (positive, as candidate lists keep only positive scores, and comparable between users); 0
        everywhere for an empty history."""
        vectors = np.asarray(user_vectors, dtype=np.float32)
        logits = vectors @ self.item_embeddings.T
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        probabilities[~vectors.any(axis=1)] = 0.0
        return probabilities
