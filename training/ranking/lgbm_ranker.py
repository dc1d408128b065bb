"""LightGBM LambdaRank ranker over (request, candidate item) rows.

One group per `request_id`; labels are graded 0..4 (negative, view, click, add_to_cart,
purchase) with gains 2^label - 1, the same gains `core.metrics` uses. Models are
persisted as LightGBM text (never pickle), which also carries the pandas category lists.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from core.inference.frame import GROUP_COLUMN, LABEL_COLUMN, FeatureSpec, to_model_matrix
from core.inference.ranker import LIGHTGBM, LightGBMRanker
from training.plotting import new_figure, save_png

EvalsResult = dict[str, dict[str, list[float]]]
TRAIN_NAME = "train"
VALID_NAME = "val"


@dataclass
class RankerConfig:
    objective: str = "lambdarank"
    learning_rate: float = 0.05
    num_leaves: int = 63
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambdarank_truncation_level: int = 20
    num_boost_round: int = 500
    early_stopping_rounds: int = 30
    eval_at: tuple[int, ...] = (5, 10)
    stopping_metric: str = "ndcg@10"  # on the validation set; must be one of ndcg@<eval_at>
    label_gain: tuple[float, ...] = (0.0, 1.0, 3.0, 7.0, 15.0)  # 2^label - 1 for labels 0..4
    seed: int = 0
    num_threads: int = 2

    def params(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "metric": "ndcg",
            "eval_at": list(self.eval_at),
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambdarank_truncation_level": self.lambdarank_truncation_level,
            "label_gain": list(self.label_gain),
            "seed": self.seed,
            "num_threads": self.num_threads,
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
        }


@dataclass
class RankerResult:
    booster: lgb.Booster
    spec: FeatureSpec
    config: RankerConfig
    evals_result: EvalsResult  # {"train"|"val": {"ndcg@5": [...], ...}}, one value per round
    best_iteration: int  # 1-based
    best_score: float  # validation `config.stopping_metric` at best_iteration
    feature_importance: pd.DataFrame = field(repr=False)  # feature, gain, split; gain desc
    kind = LIGHTGBM

    @property
    def scorer(self) -> LightGBMRanker:
        """The booster behind the common `core.inference.ranker.Ranker` interface."""
        return LightGBMRanker(self.booster)


def sort_by_group(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of one request made contiguous (stable, so within-request order is kept)."""
    if GROUP_COLUMN not in df.columns:
        raise ValueError(f"ranking rows need a {GROUP_COLUMN!r} column")
    return df.sort_values(GROUP_COLUMN, kind="stable").reset_index(drop=True)


def group_sizes(sorted_df: pd.DataFrame) -> np.ndarray:
    return sorted_df.groupby(GROUP_COLUMN, sort=False).size().to_numpy()


def _dataset(
    df: pd.DataFrame, spec: FeatureSpec, config: RankerConfig, reference: lgb.Dataset | None = None
) -> lgb.Dataset:
    if len(df) == 0:
        raise ValueError("no ranking rows")
    df = sort_by_group(df)
    labels = graded_labels(df, len(config.label_gain))
    return lgb.Dataset(
        to_model_matrix(df, spec),
        label=labels,
        group=group_sizes(df),
        categorical_feature=list(spec.categorical) or "auto",
        reference=reference,
        free_raw_data=True,
    )


def graded_labels(df: pd.DataFrame, n_grades: int) -> np.ndarray:
    """The integer grades 0..n_grades-1 of `df`'s label column; refuses nulls, fractions and out-of-range values."""
    if LABEL_COLUMN not in df.columns:
        raise ValueError(f"ranking rows need a {LABEL_COLUMN!r} column")
    labels = df[LABEL_COLUMN].to_numpy()
    if pd.isna(labels).any() or not np.all(np.mod(labels, 1) == 0):
        raise ValueError(f"{LABEL_COLUMN!r} must hold integer grades without nulls")
    if labels.min() < 0 or labels.max() >= n_grades:
        raise ValueError(
            f"{LABEL_COLUMN!r} must lie in [0, {n_grades - 1}] (one label_gain per grade), "
            f"got [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int32)


class _StopOnMetric:
    """Early stopping on one (dataset, metric) pair: LightGBM's own callback can only watch the
    first metric, and with eval_at=[5, 10] that is ndcg@5."""

    order = 30  # after record_evaluation (20), like lgb.early_stopping

    def __init__(self, dataset: str, metric: str, rounds: int) -> None:
        self.dataset, self.metric, self.rounds = dataset, metric, rounds
        self.best_score: float = -np.inf
        self.best_iteration = 0
        self.best_list: list[Any] = []

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        results = list(env.evaluation_result_list or [])
        matching = [r for r in results if r[0] == self.dataset and r[1] == self.metric]
        if not matching:
            raise ValueError(f"metric {self.dataset}/{self.metric} is not evaluated")
        if matching[0][2] > self.best_score:
            self.best_score, self.best_iteration = matching[0][2], env.iteration
            self.best_list = results
        if (
            env.iteration - self.best_iteration >= self.rounds
            or env.iteration == env.end_iteration - 1
        ):
            raise lgb.callback.EarlyStopException(self.best_iteration, self.best_list)


def train_ranker(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    spec: FeatureSpec,
    config: RankerConfig | None = None,
) -> RankerResult:
    """Train with early stopping on the validation `config.stopping_metric`; the returned booster
    predicts (and saves) with its best iteration."""
    config = config or RankerConfig()
    if config.stopping_metric not in {f"ndcg@{k}" for k in config.eval_at}:
        raise ValueError(
            f"stopping_metric {config.stopping_metric!r} is not ndcg@ one of {config.eval_at}"
        )
    train_set = _dataset(train_df, spec, config)
    val_set = _dataset(val_df, spec, config, reference=train_set)
    evals_result: EvalsResult = {}
    stopper = _StopOnMetric(VALID_NAME, config.stopping_metric, config.early_stopping_rounds)
    booster = lgb.train(
        config.params(),
        train_set,
        num_boost_round=config.num_boost_round,
        valid_sets=[train_set, val_set],
        valid_names=[TRAIN_NAME, VALID_NAME],
        callbacks=[lgb.record_evaluation(evals_result), stopper],
    )
    return RankerResult(
        booster=booster,
        spec=spec,
        config=config,
        evals_result=evals_result,
        best_iteration=booster.best_iteration,
        best_score=float(stopper.best_score),
        feature_importance=feature_importance(booster),
    )


def select_ranker(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    spec: FeatureSpec,
    base: RankerConfig,
    grid: Mapping[str, Sequence[Any]] | None,
) -> tuple[RankerResult, list[dict[str, Any]]]:
    """`train_ranker` for `base` with each combination of `grid` values ({field: [values]}); the
    one with the best validation `stopping_metric` (at its early-stopped round) wins, the earlier
    combination on a tie. Returns it and the trace [{params, score, best_iteration}]. An empty or
    None grid trains `base` alone."""
    names = list(grid or {})
    best: RankerResult | None = None
    trace: list[dict[str, Any]] = []
    for values in itertools.product(*((grid or {})[name] for name in names)):
        params = dict(zip(names, values))
        result = train_ranker(train_df, val_df, spec, replace(base, **params))
        trace.append({"params": params, base.stopping_metric: round(result.best_score, 5),
                      "best_iteration": result.best_iteration})
        if best is None or result.best_score > best.best_score:
            best = result
    assert best is not None
    return best, trace


def refit_ranker(rows: pd.DataFrame, validated: RankerResult, rounds: int | None = None) -> RankerResult:
    """`validated`'s configuration trained again on `rows` (typically its training and validation
    rows together) for `rounds` (default: the validated best iteration), no early stopping: the
    refit ranker has seen the most recent requests. Its `best_score` stays the validated one."""
    rounds = max(1, rounds or validated.best_iteration)
    train_set = _dataset(rows, validated.spec, validated.config)
    evals_result: EvalsResult = {}
    booster = lgb.train(validated.config.params(), train_set, num_boost_round=rounds, valid_sets=[train_set],
                        valid_names=[TRAIN_NAME], callbacks=[lgb.record_evaluation(evals_result)])
    booster.best_iteration = rounds
    return RankerResult(booster=booster, spec=validated.spec, config=validated.config, evals_result=evals_result,
                        best_iteration=rounds, best_score=validated.best_score,
                        feature_importance=feature_importance(booster))


def feature_importance(booster: lgb.Booster) -> pd.DataFrame:
    """Total gain and split count per feature at the best iteration, by gain descending."""
    iteration = booster.best_iteration or None
    importance = pd.DataFrame(
        {
            "feature": booster.feature_name(),
            "gain": booster.feature_importance("gain", iteration=iteration),
            "split": booster.feature_importance("split", iteration=iteration),
        }
    )
    total = importance["gain"].sum()
    importance["gain_share"] = importance["gain"] / total if total > 0 else 0.0
    return importance.sort_values(["gain", "feature"], ascending=[False, True], ignore_index=True)


def plot_feature_importance(importance: pd.DataFrame, path: str | Path, top: int = 25) -> Path:
    """Horizontal bars of the `top` features by gain."""
    shown = importance.nlargest(top, "gain").iloc[::-1]
    figure = new_figure((8, max(3.0, 0.3 * len(shown) + 1)))
    ax = figure.subplots()
    ax.barh(shown["feature"], shown["gain"])
    ax.set(title=f"ranker feature importance (gain, top {len(shown)})", xlabel="total gain")
    figure.tight_layout()
    return save_png(figure, path)


def plot_ranker_curves(
    evals_result: Mapping[str, Mapping[str, list[float]]], path: str | Path
) -> Path:
    """One panel per metric, one line per dataset, against the boosting round."""
    metrics = sorted({metric for series in evals_result.values() for metric in series})
    figure = new_figure((5 * max(1, len(metrics)), 4))
    axes = np.atleast_1d(figure.subplots(1, max(1, len(metrics))))
    for ax, metric in zip(axes, metrics):
        for dataset, series in evals_result.items():
            if metric in series:
                ax.plot(range(1, len(series[metric]) + 1), series[metric], label=dataset)
        ax.set(title=metric, xlabel="boosting round", ylabel=metric)
        ax.legend()
    figure.tight_layout()
    return save_png(figure, path)

