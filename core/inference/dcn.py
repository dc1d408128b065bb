"""The DCN-v2 ranker at inference: its inputs and forward pass in numpy.

Training (`training.ranking.dcn`, PyTorch) fits the network on `model_array` matrices and hands
over its weights as named arrays; serving and offline evaluation score with `DCNScorer`, so the
serving process never imports torch. Weights are an `.npz` (read without pickle), the rest (layer
shapes, the input standardization fitted on the training rows) a JSON file.

Inputs (`DCNSpec.dense_inputs`, shared by training and serving): each numeric column, log1p'd
when its training values are non-negative and span orders of magnitude, standardized with training
statistics, clipped to +-`clip`, missing values 0; a 0/1 missing indicator for each numeric column
that had missing values in training; each categorical column as a learned embedding of its
vocabulary code (missing or unseen values share one extra row).

Network (Wang et al. 2021, full-rank cross layers): x0 = [dense inputs, embeddings];
x_{l+1} = x0 * (W_l x_l + b_l) + x_l for `cross_layers` layers; a ReLU MLP of `deep_layers`
either beside the cross stack on x0 ("parallel", outputs concatenated) or on top of it
("stacked"); one linear unit gives the score.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.atomic import atomic_path, write_text_atomic

DCN_KIND = "dcn"  # the ranker kind's name (`core.inference.ranker.RANKER_KINDS`)
STRUCTURES = ("parallel", "stacked")
FORMAT_VERSION = 1
LOG_MIN_P99 = 10.0  # a non-negative column whose 99th percentile reaches this is log1p'd


@dataclass(frozen=True)
class DCNSpec:
    """Everything but the weights: column layout, input statistics and layer sizes."""

    feature_names: tuple[str, ...]  # the `model_array` columns: numerics then categoricals
    n_numeric: int
    vocab_sizes: tuple[int, ...]  # one per categorical column (its code n is "missing or unseen")
    log_columns: tuple[int, ...]  # numeric positions log1p'd before standardization
    mean: tuple[float, ...]  # per numeric column, after the log
    std: tuple[float, ...]
    indicator_columns: tuple[int, ...]  # numeric positions with a missing indicator
    clip: float = 5.0
    embedding_dim: int = 4
    cross_layers: int = 3
    deep_layers: tuple[int, ...] = (64, 32)
    structure: str = "parallel"

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"DCN structure must be one of {STRUCTURES}, got {self.structure!r}")
        n_categorical = len(self.feature_names) - self.n_numeric
        if n_categorical < 0 or len(self.vocab_sizes) != n_categorical:
            raise ValueError(f"{len(self.vocab_sizes)} vocabularies for {n_categorical} categorical columns")
        if len(self.mean) != self.n_numeric or len(self.std) != self.n_numeric:
            raise ValueError(f"standardization statistics do not cover the {self.n_numeric} numeric columns")
        if not all(0 <= j < self.n_numeric for j in (*self.log_columns, *self.indicator_columns)):
            raise ValueError("log or indicator column outside the numeric columns")

    @property
    def n_dense(self) -> int:
        return self.n_numeric + len(self.indicator_columns)

    @property
    def input_dim(self) -> int:
        return self.n_dense + len(self.vocab_sizes) * self.embedding_dim

    @property
    def deep_output_dim(self) -> int:
        return self.deep_layers[-1] if self.deep_layers else 0

    @property
    def head_input_dim(self) -> int:
        if self.structure == "stacked":
            return self.deep_output_dim or self.input_dim
        return self.input_dim + self.deep_output_dim

    def dense_inputs(self, matrix: np.ndarray) -> np.ndarray:
        """(n, n_dense) float32 from a `model_array` matrix's numeric columns."""
        values = np.asarray(matrix, dtype=np.float64)[:, : self.n_numeric].copy()
        logged = list(self.log_columns)
        values[:, logged] = signed_log1p(values[:, logged])
        missing = ~np.isfinite(values)
        z = np.clip((values - np.asarray(self.mean)) / np.asarray(self.std), -self.clip, self.clip)
        z[missing] = 0.0
        indicators = missing[:, list(self.indicator_columns)].astype(np.float64)
        return np.concatenate([z, indicators], axis=1).astype(np.float32)

    def category_codes(self, matrix: np.ndarray) -> np.ndarray:
        """(n, n_categorical) int64 embedding rows: the vocabulary code, or the vocabulary's size for
        a missing or unseen value (`model_array` gives NaN)."""
        codes = np.asarray(matrix, dtype=np.float64)[:, self.n_numeric:]
        sizes = np.asarray(self.vocab_sizes, dtype=np.float64)
        valid = np.isfinite(codes) & (codes >= 0) & (codes < sizes)
        return np.where(valid, codes, sizes).astype(np.int64)

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> DCNSpec:
        values = json.loads(text)
        if values.pop("format_version", None) != FORMAT_VERSION:
            raise ValueError(f"DCN ranker config is not format version {FORMAT_VERSION}")
        tuples = {"feature_names", "vocab_sizes", "log_columns", "mean", "std", "indicator_columns", "deep_layers"}
        return cls(**{key: tuple(value) if key in tuples else value for key, value in values.items()})


def signed_log1p(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def fit_dcn_spec(matrix: np.ndarray, feature_names: Sequence[str], n_numeric: int, vocab_sizes: Sequence[int],
                 clip: float = 5.0, embedding_dim: int = 4, cross_layers: int = 3,
                 deep_layers: Sequence[int] = (64, 32), structure: str = "parallel") -> DCNSpec:
    """Input statistics from the training rows' `model_array` matrix, and the layer sizes."""
    numeric = np.asarray(matrix, dtype=np.float64)[:, :n_numeric]
    finite = np.isfinite(numeric)
    log_columns = tuple(j for j in range(n_numeric) if _wants_log(numeric[finite[:, j], j]))
    transformed = numeric.copy()
    transformed[:, list(log_columns)] = signed_log1p(transformed[:, list(log_columns)])
    transformed[~finite] = np.nan
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column: mean 0, std 1
        mean = np.nan_to_num(np.nanmean(transformed, axis=0), nan=0.0)
        std = np.nanstd(transformed, axis=0)
    std = np.where(np.isfinite(std) & (std > 1e-9), std, 1.0)
    indicators = tuple(j for j in range(n_numeric) if not finite[:, j].all())
    return DCNSpec(tuple(feature_names), n_numeric, tuple(int(v) for v in vocab_sizes), log_columns,
                   tuple(float(v) for v in mean), tuple(float(v) for v in std), indicators, float(clip),
                   int(embedding_dim), int(cross_layers), tuple(int(v) for v in deep_layers), structure)


def _wants_log(values: np.ndarray) -> bool:
    return bool(values.size and values.min() >= 0 and np.quantile(values, 0.99) >= LOG_MIN_P99)


def weight_shapes(spec: DCNSpec) -> dict[str, tuple[int, ...]]:
    """The arrays a model consists of and their shapes (the torch module's state_dict names)."""
    shapes: dict[str, tuple[int, ...]] = {
        f"embeddings.{i}.weight": (size + 1, spec.embedding_dim) for i, size in enumerate(spec.vocab_sizes)}
    for layer in range(spec.cross_layers):
        shapes[f"cross.{layer}.weight"] = (spec.input_dim, spec.input_dim)
        shapes[f"cross.{layer}.bias"] = (spec.input_dim,)
    width = spec.input_dim
    for layer, out in enumerate(spec.deep_layers):
        shapes[f"deep.{layer}.weight"] = (out, width)
        shapes[f"deep.{layer}.bias"] = (out,)
        width = out
    shapes["head.weight"] = (1, spec.head_input_dim)
    shapes["head.bias"] = (1,)
    return shapes


class DCNScorer:
    """The forward pass from named float32 weights; implements `core.inference.ranker.Ranker`."""

    kind = DCN_KIND

    def __init__(self, spec: DCNSpec, weights: Mapping[str, np.ndarray]) -> None:
        expected = weight_shapes(spec)
        wrong = {name: tuple(np.shape(weights[name])) if name in weights else None for name, shape in expected.items()
                 if name not in weights or tuple(np.shape(weights[name])) != shape}
        if wrong:
            name = next(iter(wrong))
            raise ValueError(f"DCN weights do not fit the config: {name} is {wrong[name]}, expected {expected[name]}")
        self.spec = spec
        self.weights = {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in expected}
        # Linear maps as (in, out) matrices, transposed once.
        self._t = {name: np.ascontiguousarray(value.T) for name, value in self.weights.items()
                   if value.ndim == 2 and not name.startswith("embeddings.")}

    @property
    def feature_names(self) -> list[str]:
        return list(self.spec.feature_names)

    def predict(self, matrix: np.ndarray, num_threads: int | None = None) -> np.ndarray:
        """Scores (float64) of a `model_array` matrix. `num_threads` is accepted for the `Ranker`
        interface; numpy's BLAS threads are the process's setting."""
        matrix = np.asarray(matrix, dtype=np.float64)
        if len(matrix) == 0:
            return np.zeros(0, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.spec.feature_names):
            raise ValueError(f"DCN ranker expects {len(self.spec.feature_names)} columns, got {matrix.shape}")
        return self.forward(self.spec.dense_inputs(matrix), self.spec.category_codes(matrix)).astype(np.float64)

    def forward(self, dense: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(n,) float32 scores from the prepared inputs (`DCNSpec.dense_inputs`, `category_codes`)."""
        w, t = self.weights, self._t
        embedded = [w[f"embeddings.{i}.weight"][codes[:, i]] for i in range(len(self.spec.vocab_sizes))]
        x0 = np.concatenate([np.asarray(dense, dtype=np.float32), *embedded], axis=1)
        x = x0
        for layer in range(self.spec.cross_layers):
            x = x0 * (x @ t[f"cross.{layer}.weight"] + w[f"cross.{layer}.bias"]) + x
        h = x if self.spec.structure == "stacked" else x0
        for layer in range(len(self.spec.deep_layers)):
            h = np.maximum(h @ t[f"deep.{layer}.weight"] + w[f"deep.{layer}.bias"], 0)
        if self.spec.structure == "stacked":
            top = h
        else:
            top = np.concatenate([x, h], axis=1) if self.spec.deep_layers else x
        return (top @ t["head.weight"] + w["head.bias"])[:, 0]


def save_dcn(scorer: DCNScorer, weights_path: str | Path, config_path: str | Path) -> None:
    """The weights as `.npz` and the spec as JSON, each written to a temp file and renamed."""
    save_dcn_weights(scorer, weights_path)
    write_text_atomic(scorer.spec.to_json(), config_path)


def save_dcn_weights(scorer: DCNScorer, path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # np.savez appends ".npz" to a bare name
        np.savez(handle, **scorer.weights)


def load_dcn(weights_path: str | Path, config_path: str | Path) -> DCNScorer:
    spec = DCNSpec.from_json(Path(config_path).read_text())
    with np.load(weights_path, allow_pickle=False) as arrays:
        return DCNScorer(spec, dict(arrays))
