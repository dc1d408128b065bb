"""Turn Feast feature rows into two-tower inputs; shared by training and serving.

The user tower reads the `retrieval` feature service (full feature names): behaviour counts
(log1p), rates, recency, tenure, age, and the recent item history. The item tower reads static
catalog attributes. Standardisation statistics are fitted on training rows and saved with the
model, so serving applies exactly the training transform.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.inference.two_tower import ItemFeatures, UserFeatures

HISTORY_COLUMN = "user_recent_history__recent_item_ids"
EXCLUDED_USER_COLUMNS = (HISTORY_COLUMN, "user_recent_history__last_event_timestamp",
                         "user_profile__gender", "user_profile__occupation")


@dataclass
class IdMap:
    """Raw ids <-> contiguous indices. Unknown ids map to -1."""

    ids: np.ndarray

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self._index = pd.Index(self.ids)
        # Strictly increasing ids (the usual case) are looked up by binary search: a few
        # microseconds for the handful of ids a request looks up, where a hash lookup through
        # pandas costs tens.
        self._sorted = bool(len(self.ids) == 0 or np.all(self.ids[1:] > self.ids[:-1]))

    def __len__(self) -> int:
        return len(self.ids)

    def to_idx(self, raw: np.ndarray | pd.Series | list[int]) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.int64)
        if not self._sorted:
            return self._index.get_indexer(raw)
        if len(self.ids) == 0:
            return np.full(raw.shape, -1, dtype=np.intp)
        position = np.minimum(np.searchsorted(self.ids, raw), len(self.ids) - 1)
        return np.where(self.ids[position] == raw, position, -1).astype(np.intp, copy=False)

    def to_ids(self, idx: np.ndarray) -> np.ndarray:
        return self.ids[np.asarray(idx, dtype=np.int64)]


@dataclass
class UserInputSpec:
    """Which numeric user columns feed the user tower, and their standardisation."""

    columns: list[str]
    log_columns: list[str]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    history_length: int = 20

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> UserInputSpec:
        return cls(**json.loads(text))


def _is_count(column: str) -> bool:
    return any(token in column for token in ("count", "events", "active_days", "tenure", "days_since"))


def fit_user_input_spec(frame: pd.DataFrame, history_length: int) -> UserInputSpec:
    columns = [c for c in frame.columns if c.startswith(("user_daily__", "user_profile__"))
               and c not in EXCLUDED_USER_COLUMNS]
    spec = UserInputSpec(columns, [c for c in columns if _is_count(c)], history_length=history_length)
    raw = _raw_dense(frame, spec)
    spec.mean = np.nanmean(raw, axis=0).tolist() if len(raw) else [0.0] * len(columns)
    spec.std = [s if s > 1e-9 else 1.0 for s in np.nan_to_num(np.nanstd(raw, axis=0), nan=1.0)]
    return spec


def _raw_dense(frame: pd.DataFrame | Mapping[str, Sequence[Any]], spec: UserInputSpec) -> np.ndarray:
    if isinstance(frame, pd.DataFrame):
        values = frame.reindex(columns=spec.columns).to_numpy(dtype=np.float64, na_value=np.nan)
    else:  # columns of Python values (serving's online reads), None = missing
        n = len(frame["user_id"])
        values = np.array([[np.nan if v is None else v for v in frame.get(c, [None] * n)] for c in spec.columns],
                          dtype=np.float64).reshape(len(spec.columns), n).T.copy()
    logged = [spec.columns.index(c) for c in spec.log_columns]
    values[:, logged] = np.log1p(np.clip(values[:, logged], 0, None))
    return values


def user_dense(frame: pd.DataFrame | Mapping[str, Sequence[Any]], spec: UserInputSpec) -> np.ndarray:
    """Standardised dense user features; missing values (no Feast row yet) become 0 = the mean."""
    standardised = (_raw_dense(frame, spec) - np.asarray(spec.mean)) / np.asarray(spec.std)
    return np.nan_to_num(standardised, nan=0.0).astype(np.float32)


def history_matrix(histories: pd.Series | Sequence[Any], items: IdMap, length: int) -> np.ndarray:
    """Recent item ids (most recent first) -> item indices padded with `len(items)`."""
    out = np.full((len(histories), length), len(items), dtype=np.int64)
    for row, ids in enumerate(histories):
        if ids is None or len(ids) == 0:
            continue
        idx = items.to_idx(np.asarray(ids)[:length])
        idx = idx[idx >= 0]
        out[row, : len(idx)] = idx
    return out


def user_features(frame: pd.DataFrame | Mapping[str, Sequence[Any]], users: IdMap, items: IdMap,
                  spec: UserInputSpec) -> UserFeatures:
    """Two-tower user inputs for rows that hold `user_id` and the retrieval service features (a
    DataFrame, or a mapping of equally long columns)."""
    user_idx = users.to_idx(frame["user_id"])
    user_idx = np.where(user_idx < 0, len(users), user_idx)  # unknown users share the OOV row
    # (not `frame.get(column, default)`: the default would be built on every call, and a mapping's
    # len() counts its columns, not its rows)
    histories = frame[HISTORY_COLUMN] if HISTORY_COLUMN in frame else [None] * len(user_idx)
    history = history_matrix(histories, items, spec.history_length)
    return UserFeatures(user_idx=user_idx, history=history, dense=user_dense(frame, spec))


def item_features(catalog: pd.DataFrame, categories: list[str]) -> ItemFeatures:
    """Item tower inputs from the catalog (rows in item index order): category, log price."""
    category_idx = pd.Index(categories).get_indexer(catalog["category"])
    category_idx = np.where(category_idx < 0, len(categories), category_idx)
    log_price = np.log1p(catalog["price"].fillna(0).to_numpy(dtype=np.float64))
    dense = ((log_price - log_price.mean()) / (log_price.std() or 1.0)).reshape(-1, 1).astype(np.float32)
    return ItemFeatures(category=category_idx, dense=dense)
