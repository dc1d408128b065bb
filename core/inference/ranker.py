"""The ranker at inference: one interface over its kinds, LightGBM (a text model) and DCN-v2 (a
numpy forward pass, `core.inference.dcn`). Training fits and saves them (`training.ranking`);
serving and offline evaluation score with these functions and do not care which kind it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightgbm as lgb
import numpy as np
import pandas as pd

from core.atomic import atomic_path
from core.inference.dcn import DCN_KIND
from core.inference.frame import FeatureSpec, model_array

LIGHTGBM = "lightgbm"
DCN = DCN_KIND
RANKER_KINDS: tuple[str, ...] = (LIGHTGBM, DCN)


@runtime_checkable
class Ranker(Protocol):
    """Scores `model_array` matrices whose columns are `feature_names`."""

    kind: str

    @property
    def feature_names(self) -> list[str]: ...

    def predict(self, matrix: np.ndarray, num_threads: int | None = None) -> np.ndarray: ...


class LightGBMRanker:
    """A LightGBM booster behind the `Ranker` interface."""

    kind = LIGHTGBM

    def __init__(self, booster: lgb.Booster) -> None:
        self.booster = booster

    @property
    def feature_names(self) -> list[str]:
        return list(self.booster.feature_name())

    def predict(self, matrix: np.ndarray, num_threads: int | None = None) -> np.ndarray:
        return predict_matrix(self.booster, matrix, num_threads)


RankerModel = lgb.Booster | Ranker  # what a bundle holds: a bare booster is a LightGBM ranker


def as_ranker(model: RankerModel) -> Ranker:
    if isinstance(model, lgb.Booster):
        return LightGBMRanker(model)
    if isinstance(model, Ranker):
        return model
    raise TypeError(f"not a ranker: {type(model).__name__}")


def ranker_kind(model: RankerModel) -> str:
    return as_ranker(model).kind


def lightgbm_booster(model: RankerModel) -> lgb.Booster | None:
    """The booster of a LightGBM ranker (for what only LightGBM has: feature importance, text
    files), None for another kind."""
    if isinstance(model, lgb.Booster):
        return model
    return model.booster if isinstance(model, LightGBMRanker) else None


def save_ranker(booster: lgb.Booster, path: str | Path) -> Path:
    """Write the model as LightGBM text (best iteration only) atomically."""
    with atomic_path(path) as tmp:
        booster.save_model(tmp, num_iteration=booster.best_iteration or None)
    return Path(path)


def load_ranker(path: str | Path) -> lgb.Booster:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ranker model at {path}")
    return lgb.Booster(model_file=str(path))


def score(model: RankerModel, df: pd.DataFrame | Mapping[str, Any], spec: FeatureSpec) -> np.ndarray:
    """Scores in the row order of `df` (no grouping needed at prediction time). `df` may also be a
    mapping of columns (serving builds those); the matrix comes from `model_array` either way."""
    ranker = as_ranker(model)
    if ranker.feature_names != spec.columns:
        raise ValueError(f"model features {ranker.feature_names} differ from the spec's {spec.columns}")
    return ranker.predict(model_array(df, spec))


def predict_matrix(model: RankerModel, matrix: np.ndarray, num_threads: int | None = None) -> np.ndarray:
    """Scores of a `model_array` matrix (columns in the model's feature order). `num_threads`
    caps LightGBM's OpenMP threads (None: LightGBM's default, all cores); a server scoring small
    matrices from several threads at once wants 1, or the threads spin-wait on each other."""
    if not isinstance(model, lgb.Booster):
        return as_ranker(model).predict(matrix, num_threads)
    booster = model
    if len(matrix) == 0:
        return np.zeros(0, dtype=np.float64)
    options = {} if num_threads is None else {"num_threads": num_threads}
    return np.asarray(booster.predict(matrix, **options), dtype=np.float64)
