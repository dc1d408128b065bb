"""Feature drift between what the ranker was trained on and what the service fed it.

reference = the bundle's ranker training rows (offline, point-in-time features from Feast);
current   = the ranker input rows the service logged over a window (online features from Redis).

Both go through `core.inference.frame.add_derived_features`, so derived inputs
(`category_share_30d` ...) are compared too, and are restricted to the ranker's input columns
(`ranker_spec.json`) minus `DriftConfig.exclude`. Each column gets one Evidently drift test:

* numerical: normed Wasserstein distance (default; drifted when >= 0.1) - a distance, so it does
  not flag tiny shifts just because there are many rows (p-value tests do, and our rows are not
  independent: one request contributes ~100 candidate rows with the same user features);
* categorical: PSI (default; drifted when >= 0.1); `chisquare` (p-value < 0.05), `kl_div`,
  `jensenshannon` ... can be chosen per type or per column, thresholds too.

A column that is entirely missing on one side only is reported as drifted (method `all_missing`:
e.g. a feature the online store stopped returning); missing on both sides, it is skipped.
`DriftResult.summary` is the JSON summary: share of drifted features and, per feature, type,
method, threshold, score, drifted flag and simple statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.inference.frame import DERIVED_INPUTS, FeatureSpec, add_derived_features
from monitoring.errors import MonitoringInputError

DEFAULT_EXCLUDE: tuple[str, ...] = (
    "item_idx",     # an index, not a feature
    "hour_of_day",  # the request time's hour / weekday: in a 24 h or 7 d window their distribution is
    "day_of_week",  # set by the window itself (and training requests sit at midnight), not by users
)
# p-value tests: drifted when the score is BELOW the threshold (distances: at or above it).
P_VALUE_METHODS = frozenset({"chisquare", "ks", "z", "mannw", "fisher_exact", "g_test", "anderson",
                             "cramer_von_mises", "epps_singleton", "t_test", "empirical_mmd", "ed"})
MISSING_METHOD = "all_missing"


@dataclass
class DriftConfig:
    num_method: str = "wasserstein"
    cat_method: str = "psi"
    num_threshold: float | None = None  # None: the method's default (wasserstein/psi/kl_div 0.1, p-values 0.05)
    cat_threshold: float | None = None
    per_column_method: dict[str, str] = field(default_factory=dict)
    per_column_threshold: dict[str, float] = field(default_factory=dict)
    drift_share: float = 0.5  # share of drifted features that counts as "the dataset drifted"
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    include: tuple[str, ...] | None = None  # only these columns (after exclude), when given
    summary_stats: bool = True  # Evidently's DataSummaryPreset (statistics per column) in the HTML

    def method_for(self, column: str, kind: str) -> str:
        return self.per_column_method.get(column) or (self.num_method if kind == "numerical" else self.cat_method)

    def threshold_for(self, column: str, kind: str) -> float | None:
        if column in self.per_column_threshold:
            return self.per_column_threshold[column]
        return self.num_threshold if kind == "numerical" else self.cat_threshold


@dataclass
class DriftResult:
    summary: dict[str, Any]
    snapshot: Any  # evidently Snapshot (None when nothing was left for Evidently to test)

    @property
    def share_drifted(self) -> float:
        return self.summary["share_of_drifted_features"]

    @property
    def drifted_features(self) -> list[str]:
        return [f["feature"] for f in self.summary["features"] if f["drifted"]]

    def evidently_html(self) -> str | None:
        return None if self.snapshot is None else self.snapshot.get_html_str(as_iframe=False)


# --------------------------------------------------------------------------- columns and schema


def feature_columns(spec: FeatureSpec, config: DriftConfig) -> tuple[list[str], list[str]]:
    """(numerical, categorical) ranker inputs to test, in spec order."""
    excluded = set(config.exclude)
    keep = (lambda c: c not in excluded and (config.include is None or c in config.include))
    numerical, categorical = [c for c in spec.numeric if keep(c)], [c for c in spec.categorical if keep(c)]
    if config.include is not None:
        unknown = sorted(set(config.include) - set(spec.columns))
        if unknown:
            raise MonitoringInputError(f"--include names columns the ranker does not use: {unknown}")
    if not numerical and not categorical:
        raise MonitoringInputError("no feature left to test after --exclude/--include")
    return numerical, categorical


def source_columns(columns: list[str]) -> list[str]:
    """The raw columns needed to build `columns` (derived features need their inputs)."""
    needed: list[str] = []
    for column in columns:
        for source in DERIVED_INPUTS.get(column, (column,)):
            if source not in needed:
                needed.append(source)
    return needed


def prepare(frame: pd.DataFrame, numerical: list[str], categorical: list[str], side: str) -> pd.DataFrame:
    """Derived features added; numericals as float64, categoricals as text (missing stays missing).
    Raises MonitoringInputError naming the columns that are missing or not of the expected type."""
    if frame.empty:
        raise MonitoringInputError(f"{side} data has no rows")
    derived = add_derived_features(frame)
    missing = [c for c in (*numerical, *categorical) if c not in derived.columns]
    if missing:
        hint = "; ".join(f"{c} is derived from {list(DERIVED_INPUTS[c])}" for c in missing if c in DERIVED_INPUTS)
        raise MonitoringInputError(
            f"schema mismatch: {side} data lacks feature columns {missing}" + (f" ({hint})" if hint else "")
            + " - was it produced by a different feature service or bundle version?")
    out = {}
    bad = []
    for column in numerical:
        values = derived[column]
        if pd.api.types.is_bool_dtype(values):
            values = values.astype("float64")
        try:
            out[column] = pd.to_numeric(values).astype("float64")
        except (TypeError, ValueError):
            example = values.dropna().astype(str).head(3).tolist()
            bad.append(f"{column} (expected numbers, got e.g. {example})")
    if bad:
        raise MonitoringInputError(f"schema mismatch in {side} data: non-numeric values in numerical "
                                   f"features: {'; '.join(bad)}")
    for column in categorical:
        values = derived[column]
        text = values.astype(object).where(values.notna(), None)
        out[column] = text.map(lambda v: v if v is None else str(v)).astype(object)
    return pd.DataFrame(out, index=derived.index).reset_index(drop=True)


# --------------------------------------------------------------------------- the report


def run_drift(reference: pd.DataFrame, current: pd.DataFrame, spec: FeatureSpec,
              config: DriftConfig | None = None) -> DriftResult:
    """Evidently drift (+ summary statistics) report and its JSON summary. `reference` / `current`
    are raw ranking rows (training rows / logged rows); derived features are added here."""
    config = config or DriftConfig()
    numerical, categorical = feature_columns(spec, config)
    _validate_methods(numerical, categorical, config)
    ref = prepare(reference, numerical, categorical, "reference")
    cur = prepare(current, numerical, categorical, "current")

    features: list[dict[str, Any]] = []
    tested_num, tested_cat = [], []
    for kind, columns, tested in (("numerical", numerical, tested_num), ("categorical", categorical, tested_cat)):
        for column in columns:
            ref_missing, cur_missing = ref[column].isna().all(), cur[column].isna().all()
            if ref_missing and cur_missing:
                features.append(_entry(column, kind, "skipped", None, None, None, ref[column], cur[column],
                                       note="no values in reference nor current"))
            elif ref_missing or cur_missing:
                side = "current" if cur_missing else "reference"
                features.append(_entry(column, kind, MISSING_METHOD, None, None, True, ref[column], cur[column],
                                       note=f"no values in {side} data"))
            else:
                tested.append(column)

    snapshot = None
    if tested_num or tested_cat:
        snapshot = _evidently_report(ref, cur, tested_num, tested_cat, config)
        by_column = _drift_values(snapshot)
        for kind, columns in (("numerical", tested_num), ("categorical", tested_cat)):
            for column in columns:
                found = by_column.get(column)
                if found is None:
                    raise RuntimeError(f"Evidently returned no drift result for {column}")
                method, threshold, score, drifted = found
                features.append(_entry(column, kind, method, threshold, score, drifted, ref[column], cur[column]))

    order = {c: i for i, c in enumerate((*numerical, *categorical))}
    features.sort(key=lambda f: order[f["feature"]])
    counted = [f for f in features if f["drifted"] is not None]
    n_drifted = sum(bool(f["drifted"]) for f in counted)
    share = n_drifted / len(counted) if counted else 0.0
    summary = {
        "n_features": len(counted),
        "n_drifted": n_drifted,
        "share_of_drifted_features": share,
        "drift_share_threshold": config.drift_share,
        "dataset_drift": share > config.drift_share,
        "drifted_features": [f["feature"] for f in counted if f["drifted"]],
        "skipped_features": [f["feature"] for f in features if f["drifted"] is None],
        "excluded_features": [c for c in spec.columns if c not in order],
        "reference_rows": len(ref),
        "current_rows": len(cur),
        "methods": {"numerical": config.num_method, "categorical": config.cat_method,
                    "per_column": dict(config.per_column_method)},
        "features": features,
    }
    return DriftResult(summary, snapshot)


def _validate_methods(numerical: list[str], categorical: list[str], config: DriftConfig) -> None:
    try:
        from evidently.legacy.calculations.stattests.registry import _registered_stat_tests
        from evidently.legacy.core import ColumnType
    except ImportError:  # pragma: no cover - registry moved: let Evidently complain itself
        return
    kinds = {"numerical": ColumnType.Numerical, "categorical": ColumnType.Categorical}
    unknown_columns = sorted((set(config.per_column_method) | set(config.per_column_threshold))
                             - set(numerical) - set(categorical))
    if unknown_columns:
        raise MonitoringInputError(f"per-column drift settings for columns that are not tested: {unknown_columns}")
    problems = []
    for kind, columns in (("numerical", numerical), ("categorical", categorical)):
        for column in columns:
            method = config.method_for(column, kind)
            allowed = _registered_stat_tests.get(method)
            if allowed is None:
                problems.append(f"unknown method {method!r} (available: {sorted(_registered_stat_tests)})")
            elif kinds[kind] not in allowed:
                problems.append(f"method {method!r} does not apply to {kind} column {column}")
    if problems:
        raise MonitoringInputError("drift method: " + "; ".join(sorted(set(problems))[:5]))


def _evidently_report(ref: pd.DataFrame, cur: pd.DataFrame, numerical: list[str], categorical: list[str],
                      config: DriftConfig):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    columns = [*numerical, *categorical]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    per_method = {c: config.method_for(c, "numerical") for c in numerical}
    per_method |= {c: config.method_for(c, "categorical") for c in categorical}
    per_threshold = {c: t for c in numerical if (t := config.threshold_for(c, "numerical")) is not None}
    per_threshold |= {c: t for c in categorical if (t := config.threshold_for(c, "categorical")) is not None}
    metrics: list = [DataDriftPreset(columns=columns, drift_share=config.drift_share, per_column_method=per_method,
                                     per_column_threshold=per_threshold or None)]
    if config.summary_stats:
        metrics.append(DataSummaryPreset(columns=columns))
    report = Report(metrics, include_tests=True)
    return report.run(Dataset.from_pandas(cur[columns], data_definition=definition),
                      Dataset.from_pandas(ref[columns], data_definition=definition))


def _drift_values(snapshot) -> dict[str, tuple[str, float, float, bool]]:
    """column -> (method, threshold, score, drifted) from the snapshot's ValueDrift metrics and their tests."""
    data = snapshot.dict()
    status: dict[str, str] = {}
    for test in data.get("tests", []):
        params = (test.get("metric_config") or {}).get("params") or {}
        if params.get("type", "").endswith(":ValueDrift") and "column" in params:
            status[params["column"]] = test.get("status")
    out = {}
    for metric in data.get("metrics", []):
        config = metric.get("config") or {}
        if not config.get("type", "").endswith(":ValueDrift"):
            continue
        column, method, threshold = config["column"], config.get("method"), config.get("threshold")
        score = float(metric["value"])
        if column in status:
            drifted = status[column] == "FAIL"
        else:  # no tests in the snapshot: the direction of the method decides
            drifted = score < threshold if method in P_VALUE_METHODS else score >= threshold
        out[column] = (method, threshold, score, drifted)
    return out


def _entry(column: str, kind: str, method: str, threshold, score, drifted, ref: pd.Series, cur: pd.Series,
           note: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "feature": column, "type": kind, "method": method, "threshold": threshold, "score": score,
        "drifted": None if drifted is None else bool(drifted),
        "score_kind": "p_value" if method in P_VALUE_METHODS else "distance",
        "reference_missing_share": float(ref.isna().mean()), "current_missing_share": float(cur.isna().mean()),
    }
    if kind == "numerical":
        entry["reference_mean"] = _mean(ref)
        entry["current_mean"] = _mean(cur)
    else:
        ref_share = ref.value_counts(normalize=True)
        cur_share = cur.value_counts(normalize=True)
        both = pd.concat([ref_share.rename("reference"), cur_share.rename("current")], axis=1).fillna(0.0)
        both["change"] = both["current"] - both["reference"]
        top = both.reindex(both["change"].abs().sort_values(ascending=False).index).head(5)
        entry["largest_share_changes"] = [
            {"value": str(v), "reference_share": float(r.reference), "current_share": float(r.current)}
            for v, r in top.iterrows()]
    if note:
        entry["note"] = note
    return entry


def _mean(values: pd.Series) -> float | None:
    finite = values[np.isfinite(values)] if len(values) else values
    return float(finite.mean()) if len(finite.dropna()) else None


# --------------------------------------------------------------------------- presentation


def features_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for f in summary["features"]:
        detail = ""
        if f["type"] == "numerical" and f.get("reference_mean") is not None and f.get("current_mean") is not None:
            detail = f"mean {f['reference_mean']:.4g} -> {f['current_mean']:.4g}"
        elif f.get("largest_share_changes"):
            change = f["largest_share_changes"][0]
            detail = f"{change['value']}: {change['reference_share']:.1%} -> {change['current_share']:.1%}"
        rows.append({"feature": f["feature"], "type": f["type"], "method": f["method"],
                     "threshold": f["threshold"], "score": f["score"],
                     "drifted": {True: "DRIFT", False: "ok", None: "skipped"}[f["drifted"]],
                     "largest change": detail, "note": f.get("note", "")})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    rank = frame["drifted"].map({"DRIFT": 0, "ok": 1, "skipped": 2})
    return frame.assign(_rank=rank).sort_values(["_rank", "feature"]).drop(columns="_rank")
