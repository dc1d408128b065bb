"""Training/serving skew: the feature values the service used (online, logged) against the values
the training pipeline would have used for the same entities at the same time (offline, Feast's
point-in-time join).

`compare_features` is the pure part: two frames aligned on key columns -> exact mismatch rate per
feature (beyond a float tolerance; null vs value counts as a mismatch, null vs null does not) and
example rows. `offline_features` is the Feast-backed part: the logged (entity, request time) rows go
to `get_historical_features` with the feature service and `full_feature_names=True`, so the
columns have the same `<view>__<feature>` names as the logged rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from monitoring.errors import MonitoringInputError

DEFAULT_KEYS: tuple[str, ...] = ("request_id", "item_id")
ENTITY_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category", "event_timestamp")


@dataclass
class SkewResult:
    # feature, compared, mismatches, mismatch_rate, online_missing, offline_missing, max_abs_diff
    per_feature: pd.DataFrame
    examples: dict[str, pd.DataFrame]  # feature -> a few mismatching rows (keys, online, offline)
    n_rows: int  # logged rows compared
    n_unmatched: int  # logged rows without an offline row
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def mismatch_rates(self) -> dict[str, float]:
        return dict(zip(self.per_feature["feature"], self.per_feature["mismatch_rate"]))

    @property
    def skewed_features(self) -> list[str]:
        return self.per_feature.loc[self.per_feature["mismatches"] > 0, "feature"].tolist()

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_rows": self.n_rows, "n_unmatched": self.n_unmatched, "skewed_features": self.skewed_features,
            "per_feature": self.per_feature.to_dict(orient="records"),
            "examples": {f: e.to_dict(orient="records") for f, e in self.examples.items()},
            **self.info,
        }


def compare_features(online: pd.DataFrame, offline: pd.DataFrame, features: list[str] | None = None,
                     keys: tuple[str, ...] | list[str] = DEFAULT_KEYS, rtol: float = 1e-6, atol: float = 1e-9,
                     max_examples: int = 5) -> SkewResult:
    """Per-feature mismatch between `online` (logged) and `offline` rows with the same `keys`.

    Numbers (ints, floats, bools) match when `|a - b| <= atol + rtol * |b|`; anything else must be
    equal (lists element-wise, after converting to plain lists). Missing on both sides matches;
    missing on one side is a mismatch (counted separately as online_missing / offline_missing)."""
    keys = list(keys)
    for side, frame in (("online", online), ("offline", offline)):
        lacking = [k for k in keys if k not in frame]
        if lacking:
            raise MonitoringInputError(f"{side} rows lack the key columns {lacking}")
    if features is None:
        features = [c for c in online.columns if "__" in c and c in offline.columns]
    missing_online = [f for f in features if f not in online]
    missing_offline = [f for f in features if f not in offline]
    if missing_online or missing_offline:
        raise MonitoringInputError(f"schema mismatch: features missing online {missing_online}, "
                                   f"offline {missing_offline}")
    if online.empty:
        raise MonitoringInputError("no logged rows to compare")
    offline = offline.drop_duplicates(keys)
    joined = online[keys + features].merge(offline[keys + features], on=keys, how="left",
                                           suffixes=("__online", "__offline"), indicator=True)
    matched = joined["_merge"] == "both"
    n_unmatched = int((~matched).sum())
    joined = joined[matched].reset_index(drop=True)

    rows, examples = [], {}
    for feature in features:
        a, b = joined[f"{feature}__online"], joined[f"{feature}__offline"]
        equal, diff = values_match(a, b, rtol, atol)
        a_missing, b_missing = _missing(a), _missing(b)
        mismatch = ~equal
        n = len(joined)
        rows.append({
            "feature": feature, "compared": n, "mismatches": int(mismatch.sum()),
            "mismatch_rate": float(mismatch.mean()) if n else 0.0,
            "online_missing": int((a_missing & ~b_missing).sum()),
            "offline_missing": int((b_missing & ~a_missing).sum()),
            "max_abs_diff": float(np.nanmax(diff)) if diff is not None and np.isfinite(diff).any() else None,
        })
        if mismatch.any():
            example = joined.loc[mismatch, keys].head(max_examples).copy()
            example["online"] = a[mismatch].head(max_examples).to_numpy()
            example["offline"] = b[mismatch].head(max_examples).to_numpy()
            examples[feature] = example.reset_index(drop=True)
    per_feature = pd.DataFrame(rows).sort_values(["mismatch_rate", "feature"], ascending=[False, True],
                                                 kind="stable").reset_index(drop=True)
    info = {"rtol": rtol, "atol": atol, "keys": keys,
            "rows_with_any_mismatch": int(_any_mismatch(joined, features, rtol, atol).sum())}
    return SkewResult(per_feature, examples, len(online), n_unmatched, info)


def values_match(a: pd.Series, b: pd.Series, rtol: float, atol: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(equal per row, |a - b| per row for numeric pairs or None)."""
    a_missing, b_missing = _missing(a), _missing(b)
    both_missing, one_missing = a_missing & b_missing, a_missing ^ b_missing
    a_num, b_num = _as_numbers(a), _as_numbers(b)
    if a_num is not None and b_num is not None:
        diff = np.abs(a_num - b_num)
        close = np.isclose(a_num, b_num, rtol=rtol, atol=atol, equal_nan=False)
        return np.where(both_missing, True, np.where(one_missing, False, close)), np.where(one_missing, np.nan, diff)
    equal = np.array([_same_value(x, y) for x, y in zip(a, b)], dtype=bool)
    return np.where(both_missing, True, np.where(one_missing, False, equal)), None


def _missing(values: pd.Series) -> np.ndarray:
    return np.array([_is_missing(v) for v in values], dtype=bool)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (list, tuple, np.ndarray, dict)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _as_numbers(values: pd.Series) -> np.ndarray | None:
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return values.astype("float64").to_numpy()
    if values.dtype == object:
        present = [v for v in values if not _is_missing(v)]
        if present and all(isinstance(v, (bool, int, float, np.number, np.bool_)) for v in present):
            return np.array([np.nan if _is_missing(v) else float(v) for v in values], dtype=float)
        if not present:
            return np.full(len(values), np.nan)
    return None


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, (list, tuple, np.ndarray)) or isinstance(y, (list, tuple, np.ndarray)):
        try:
            return list(np.asarray(x).tolist()) == list(np.asarray(y).tolist())
        except (TypeError, ValueError):
            return False
    if isinstance(x, (pd.Timestamp, np.datetime64)) or isinstance(y, (pd.Timestamp, np.datetime64)):
        return pd.Timestamp(x) == pd.Timestamp(y)
    try:
        return bool(x == y)
    except (TypeError, ValueError):
        return False


def _any_mismatch(joined: pd.DataFrame, features: list[str], rtol: float, atol: float) -> np.ndarray:
    out = np.zeros(len(joined), dtype=bool)
    for feature in features:
        equal, _ = values_match(joined[f"{feature}__online"], joined[f"{feature}__offline"], rtol, atol)
        out |= ~equal
    return out


# ------------------------------------------------------------------------------------ Feast


def entity_rows(logged: pd.DataFrame, entity_columns: tuple[str, ...] = ENTITY_COLUMNS,
                keys: tuple[str, ...] = DEFAULT_KEYS) -> pd.DataFrame:
    """The logged rows' entity keys and request times (UTC), one row per `keys`."""
    needed = list(dict.fromkeys([*keys, *entity_columns]))
    lacking = [c for c in needed if c not in logged]
    if lacking:
        raise MonitoringInputError(f"logged rows lack {lacking}: cannot ask Feast for the same entities")
    entity = logged[needed].drop_duplicates(list(keys)).reset_index(drop=True)
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)
    return entity


def offline_features(store, logged: pd.DataFrame, service: str = "ranking",
                     entity_columns: tuple[str, ...] = ENTITY_COLUMNS,
                     keys: tuple[str, ...] = DEFAULT_KEYS) -> pd.DataFrame:
    """Feast's offline point-in-time values of the feature service for the logged rows."""
    entity = entity_rows(logged, entity_columns, keys)
    feature_service = store.get_feature_service(service)
    return store.get_historical_features(entity_df=entity, features=feature_service,
                                         full_feature_names=True).to_df()


def service_columns(store, service: str = "ranking") -> list[str]:
    """`<view>__<feature>` names of the service's features (the logged rows' column names)."""
    feature_service = store.get_feature_service(service)
    return [f"{p.name_to_use()}__{f.name}" for p in feature_service.feature_view_projections for f in p.features]


def sample_requests(logged: pd.DataFrame, max_requests: int | None, seed: int = 0) -> pd.DataFrame:
    """All rows of at most `max_requests` logged requests (the offline join is the slow part)."""
    if max_requests is None:
        return logged
    ids = pd.Series(logged["request_id"].unique())
    if len(ids) <= max_requests:
        return logged
    chosen = set(ids.sample(n=max_requests, random_state=seed))
    return logged[logged["request_id"].isin(chosen)].reset_index(drop=True)


def skew_section(result: SkewResult) -> str:
    from monitoring import html

    skewed = result.skewed_features
    parts = [html.verdict(not skewed, f"{len(skewed)} of {len(result.per_feature)} features differ between "
                                      f"online and offline" + (f": {', '.join(skewed)}" if skewed else "")),
             html.paragraph(f"{result.n_rows} logged rows, {result.n_unmatched} without an offline row, "
                            f"{result.info.get('rows_with_any_mismatch')} with at least one mismatch; "
                            f"tolerance rtol={result.info.get('rtol')}, atol={result.info.get('atol')}", "note"),
             html.table(result.per_feature)]
    for feature, example in result.examples.items():
        parts += [html.heading(f"Examples: {feature}", 3), html.table(example)]
    return html.section(*parts)
