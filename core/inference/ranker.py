"""The LightGBM ranker at inference: load its text file, score rows. Training fits and saves it
(`training.ranking.lgbm_ranker`); serving and offline evaluation score with these functions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from core.atomic import atomic_path
from core.inference.frame import FeatureSpec, model_array


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


def score(booster: lgb.Booster, df: pd.DataFrame | Mapping[str, Any], spec: FeatureSpec) -> np.ndarray:
    """Scores in the row order of `df` (no grouping needed at prediction time). `df` may also be a
    mapping of columns (serving builds those); the matrix comes from `model_array` either way."""
    if booster.feature_name() != spec.columns:
        raise ValueError(
            f"model features {booster.feature_name()} differ from the spec's {spec.columns}"
        )
    return predict_matrix(booster, model_array(df, spec))


def predict_matrix(booster: lgb.Booster, matrix: np.ndarray, num_threads: int | None = None) -> np.ndarray:
    """Scores of a `model_array` matrix (columns in the booster's feature order). `num_threads`
    caps LightGBM's OpenMP threads (None: LightGBM's default, all cores); a server scoring small
    matrices from several threads at once wants 1, or the threads spin-wait on each other."""
    if len(matrix) == 0:
        return np.zeros(0, dtype=np.float64)
    options = {} if num_threads is None else {"num_threads": num_threads}
    return np.asarray(booster.predict(matrix, **options), dtype=np.float64)
