"""Joined ranking rows -> model input matrix, shared by training and serving.

Rows come from Feast's `ranking` feature service with `full_feature_names=True`
(`<view>__<feature>` columns) plus the request/retrieval columns. Training and serving both call
`to_model_matrix`, which applies `add_derived_features` itself, so the two cannot diverge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

CATEGORY_SHARE = "category_share_30d"
HOUR_OF_DAY = "hour_of_day"
DAY_OF_WEEK = "day_of_week"
TIMESTAMP_COLUMN = "event_timestamp"
GROUP_COLUMN = "request_id"
LABEL_COLUMN = "label"
CATEGORY_NUMERATOR = "user_category__category_weighted_events_30d"
CATEGORY_DENOMINATOR = "user_daily__weighted_events_30d"
DERIVED_INPUTS: dict[str, tuple[str, ...]] = {
    CATEGORY_SHARE: (CATEGORY_NUMERATOR, CATEGORY_DENOMINATOR),
    HOUR_OF_DAY: (TIMESTAMP_COLUMN,),
    DAY_OF_WEEK: (TIMESTAMP_COLUMN,),
}
# Never model inputs: identifiers, the group, the target and the raw event type it comes from.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "user_id", "item_id", "category", GROUP_COLUMN, LABEL_COLUMN, "event_type", TIMESTAMP_COLUMN,
)
SMALL_LOOKUP = 64  # up to this many values, categorical codes come from a dict
# A missing Feast row for these means "no activity", i.e. 0, not "unknown".
_COUNT_LIKE = re.compile(r"count|popularity|events|active_days")


@dataclass
class FeatureSpec:
    numeric: list[str]
    categorical: list[str]
    vocabularies: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        overlap = set(self.numeric) & set(self.categorical)
        if overlap:
            raise ValueError(f"columns both numeric and categorical: {sorted(overlap)}")
        if set(self.vocabularies) != set(self.categorical):
            raise ValueError(
                f"vocabularies {sorted(self.vocabularies)} do not match categorical "
                f"columns {sorted(self.categorical)}"
            )

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureSpec:
        return cls(
            numeric=list(values["numeric"]),
            categorical=list(values["categorical"]),
            vocabularies={k: [str(v) for v in vs] for k, vs in values["vocabularies"].items()},
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls.from_dict(json.loads(text))


@lru_cache(maxsize=4096)
def is_count_like(column: str) -> bool:
    return bool(_COUNT_LIKE.search(column.split("__")[-1]))


def add_derived_features(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with count-like nulls filled with 0 and the derived columns added.

    Idempotent (derived columns are recomputed from their inputs), so calling it on a frame that
    already went through it is harmless. A derived column is only added when its inputs exist.
    """
    out = df.copy()
    for column in out.columns:
        if is_count_like(column) and pd.api.types.is_numeric_dtype(out[column]):
            out[column] = out[column].fillna(0)
        elif is_count_like(column) and out[column].dtype == object:  # e.g. all-None from JSON
            out[column] = pd.to_numeric(out[column]).fillna(0)
    if CATEGORY_NUMERATOR in out and CATEGORY_DENOMINATOR in out:
        out[CATEGORY_SHARE] = _safe_ratio(out[CATEGORY_NUMERATOR], out[CATEGORY_DENOMINATOR])
    if TIMESTAMP_COLUMN in out:
        when = pd.to_datetime(out[TIMESTAMP_COLUMN], utc=True)  # naive timestamps are UTC
        out[HOUR_OF_DAY] = when.dt.hour.astype("float64")
        out[DAY_OF_WEEK] = when.dt.dayofweek.astype("float64")
    return out


def _safe_ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    num = pd.to_numeric(numerator).astype("float64").to_numpy()
    den = pd.to_numeric(denominator).astype("float64").to_numpy()
    valid = np.isfinite(num) & np.isfinite(den) & (den != 0)
    ratio = np.divide(num, den, out=np.zeros_like(num), where=valid)
    return pd.Series(ratio, index=numerator.index)


def fit_feature_spec(df: pd.DataFrame, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> FeatureSpec:
    """Infer the model's columns from a training frame (after `add_derived_features`).

    Numeric and boolean columns become numeric features, string/object/categorical columns
    categorical ones; datetime columns and `exclude` are dropped. Both lists are sorted by name so
    the column order does not depend on the order Feast returned them in.
    """
    df = add_derived_features(df)
    excluded = set(exclude)
    numeric, categorical = [], []
    for column in df.columns:
        dtype = df[column].dtype
        if column in excluded or pd.api.types.is_datetime64_any_dtype(dtype):
            continue
        if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            numeric.append(column)
        elif _is_categorical_like(dtype):
            categorical.append(column)
    vocabularies = {
        column: sorted({str(v) for v in df[column].dropna().unique()}) for column in categorical
    }
    return FeatureSpec(sorted(numeric), sorted(categorical), vocabularies)


def _is_categorical_like(dtype: Any) -> bool:
    return (
        dtype == object
        or pd.api.types.is_string_dtype(dtype)
        or isinstance(dtype, pd.CategoricalDtype)
    )


def to_model_matrix(df: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Exactly `spec.columns`, in order: numerics as float64, categoricals as pandas Categorical
    over the spec's vocabulary (unseen values become NaN, i.e. code -1)."""
    df = add_derived_features(df)
    missing = [column for column in spec.columns if column not in df.columns]
    if missing:
        raise ValueError(_missing_message(missing))
    matrix = {column: _numeric(df[column]) for column in spec.numeric}
    for column in spec.categorical:
        matrix[column] = _categorical(df[column], spec.vocabularies[column])
    return pd.DataFrame(matrix, index=df.index, columns=spec.columns)


def model_array(rows: pd.DataFrame | Mapping[str, Any], spec: FeatureSpec) -> np.ndarray:
    """`to_model_matrix` as a float64 array, categoricals as their vocabulary codes (NaN when
    missing or unseen): what LightGBM sees for a pandas Categorical, without building a frame.
    `rows` is a DataFrame or a mapping of equally long columns. Scoring uses this (one path for
    training and serving); a test keeps it equal to `to_model_matrix`."""
    missing = [c for c in spec.columns if c not in rows and not _derivable(c, rows)]
    if missing:
        raise ValueError(_missing_message(missing))
    n = len(rows) if isinstance(rows, pd.DataFrame) else len(next(iter(rows.values()), ()))
    out = np.empty((n, len(spec.columns)), dtype=np.float64)
    plain = [(j, c) for j, c in enumerate(spec.numeric) if not (c in DERIVED_INPUTS and _derivable(c, rows))]
    if plain:  # one conversion for all plain numeric columns: the per-column cost dominates small batches
        positions = [j for j, _ in plain]
        out[:, positions] = _float_columns(rows, [c for _, c in plain])
        counts = [j for j, c in plain if is_count_like(c)]
        block = out[:, counts]
        block[np.isnan(block)] = 0.0  # a missing count is no activity
        out[:, counts] = block
    for j, column in enumerate(spec.numeric):
        if column in DERIVED_INPUTS and _derivable(column, rows):
            out[:, j] = _numeric_array(rows, column)
    for j, column in enumerate(spec.categorical, start=len(spec.numeric)):
        out[:, j] = _category_codes(rows[column], spec.vocabularies[column])
    return out


def _float_columns(rows: pd.DataFrame | Mapping[str, Any], columns: list[str]) -> np.ndarray:
    """(n, len(columns)) float64 of numeric columns (None -> NaN); a clear error names a column
    that is not numeric."""
    try:
        if isinstance(rows, pd.DataFrame):
            return rows[columns].to_numpy(dtype=np.float64, na_value=np.nan)
        return np.array([np.asarray(rows[c], dtype=np.float64) for c in columns]).T
    except (TypeError, ValueError):
        return np.column_stack([_as_float(rows[c], c) for c in columns])


def _derivable(column: str, rows: pd.DataFrame | Mapping[str, Any]) -> bool:
    return column in DERIVED_INPUTS and all(c in rows for c in DERIVED_INPUTS[column])


def _as_float(values: Any, column: str) -> np.ndarray:
    try:
        if isinstance(values, pd.Series):
            return values.to_numpy(dtype=np.float64, na_value=np.nan)
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"column {column!r} is not numeric: {error}") from error


def _numeric_array(rows: pd.DataFrame | Mapping[str, Any], column: str) -> np.ndarray:
    if column == CATEGORY_SHARE and _derivable(column, rows):
        num = np.nan_to_num(_as_float(rows[CATEGORY_NUMERATOR], CATEGORY_NUMERATOR), nan=0.0)
        den = np.nan_to_num(_as_float(rows[CATEGORY_DENOMINATOR], CATEGORY_DENOMINATOR), nan=0.0)
        valid = np.isfinite(num) & np.isfinite(den) & (den != 0)
        return np.divide(num, den, out=np.zeros_like(num), where=valid)
    if column in (HOUR_OF_DAY, DAY_OF_WEEK) and _derivable(column, rows):
        values = rows[TIMESTAMP_COLUMN]
        if isinstance(values, pd.DatetimeIndex) and not values.hasnans:  # serving's request times
            return _hour_or_weekday(values, column)
        when = _utc_index(values)
        return (when.hour if column == HOUR_OF_DAY else when.dayofweek).to_numpy(dtype=np.float64)
    values = _as_float(rows[column], column)
    return np.nan_to_num(values, nan=0.0, posinf=np.inf, neginf=-np.inf) if is_count_like(column) else values


_TICKS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def _hour_or_weekday(index: pd.DatetimeIndex, column: str) -> np.ndarray:
    """`_utc_index(index).hour` / `.dayofweek` from the epoch with integer arithmetic (a naive
    index is UTC, and `asi8` of an aware one is UTC): pandas' field accessors cost ~30 us a call."""
    seconds = index.asi8 // _TICKS_PER_SECOND[index.unit]  # floor, also before 1970
    if column == HOUR_OF_DAY:
        return (seconds // 3600 % 24).astype(np.float64)
    return ((seconds // 86400 + 3) % 7).astype(np.float64)  # 1970-01-01 was a Thursday (Monday = 0)


def _utc_index(values: Any) -> pd.DatetimeIndex:
    """Timestamps as a UTC DatetimeIndex (naive ones are UTC), without `to_datetime`'s parsing
    machinery when they already are datetimes."""
    try:
        index = values if isinstance(values, pd.DatetimeIndex) else pd.DatetimeIndex(values)
    except (TypeError, ValueError):
        index = pd.DatetimeIndex(pd.to_datetime(values, utc=True))
    return index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")


def _category_codes(values: Any, vocabulary: list[str]) -> np.ndarray:
    array = values.to_numpy(dtype=object) if isinstance(values, pd.Series) else np.asarray(values, dtype=object)
    if len(array) <= SMALL_LOOKUP:  # a request's rows: a dict lookup per value beats pandas' set-up
        codes = _vocabulary_codes(tuple(vocabulary))
        return np.array([codes.get(_as_text(v), np.nan) for v in array], dtype=np.float64)
    if pd.api.types.infer_dtype(array, skipna=True) not in ("string", "empty"):
        array = np.array([_as_text(v) for v in array], dtype=object)
    codes = _vocabulary_index(tuple(vocabulary)).get_indexer(array).astype(np.float64)
    codes[codes < 0] = np.nan
    return codes


def _as_text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


@lru_cache(maxsize=256)
def _vocabulary_codes(vocabulary: tuple[str, ...]) -> dict[str, float]:
    return {value: float(code) for code, value in enumerate(vocabulary)}


@lru_cache(maxsize=256)
def _vocabulary_index(vocabulary: tuple[str, ...]) -> pd.Index:
    index = pd.Index(list(vocabulary), dtype=object)
    index.get_indexer(index[:1])  # build the hash table now (pandas' lazy build is not thread-safe)
    return index


def _numeric(values: pd.Series) -> pd.Series:
    try:
        return pd.to_numeric(values).astype("float64")
    except (TypeError, ValueError) as error:
        raise ValueError(f"column {values.name!r} is not numeric: {error}") from error


def _categorical(values: pd.Series, vocabulary: list[str]) -> pd.Categorical:
    as_text = values.astype(object).where(values.notna(), None)
    as_text = as_text.map(lambda v: v if v is None else str(v))
    return pd.Categorical(as_text, categories=vocabulary)


def _missing_message(missing: list[str]) -> str:
    message = f"model input is missing columns: {missing}"
    hints = [
        f"{column} is derived from {list(DERIVED_INPUTS[column])}"
        for column in missing
        if column in DERIVED_INPUTS
    ]
    return message + (f" ({'; '.join(hints)})" if hints else "")
