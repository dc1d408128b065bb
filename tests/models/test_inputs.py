"""Two-tower user inputs from Feast rows: standardisation and the log of counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.inference.inputs import HISTORY_COLUMN, IdMap, fit_user_input_spec, user_dense, user_features


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [1, 2, 3],
        "user_daily__view_count_7d": [0.0, 3.0, None],  # a count: log1p, missing -> mean
        "user_daily__ctr_30d": pd.Series([0.5, None, 0.1], dtype=object),  # a rate, as Feast returns it
        "user_profile__age": pd.array([30, 40, pd.NA], dtype="Int64"),
        HISTORY_COLUMN: [[10, 11], None, [99, 10]],
        "user_profile__gender": ["F", "M", None],  # excluded: not numeric
    })


def test_counts_are_logged_standardised_and_missing_values_become_the_mean():
    spec = fit_user_input_spec(frame(), history_length=3)
    assert spec.columns == ["user_daily__view_count_7d", "user_daily__ctr_30d", "user_profile__age"]
    assert spec.log_columns == ["user_daily__view_count_7d"]
    assert spec.mean == pytest.approx([np.log1p(3.0) / 2, 0.3, 35.0])
    dense = user_dense(frame(), spec)
    assert dense.dtype == np.float32 and dense.shape == (3, 3)
    assert dense[2, 0] == 0.0 and dense[1, 1] == 0.0 and dense[2, 2] == 0.0  # missing -> the mean
    assert dense[1, 0] == pytest.approx((np.log1p(3.0) - spec.mean[0]) / spec.std[0])
    negative = frame().assign(**{"user_daily__view_count_7d": [-5.0, 3.0, None]})
    assert user_dense(negative, spec)[0, 0] == pytest.approx(dense[0, 0])  # counts clipped at 0


def test_history_maps_known_items_and_pads():
    items = IdMap(np.array([10, 11, 12]))
    features = user_features(frame(), IdMap(np.array([1, 2])), items, fit_user_input_spec(frame(), 3))
    assert features.user_idx.tolist() == [0, 1, 2]  # unknown user 3 -> the shared OOV row (2)
    assert features.history.tolist() == [[0, 1, 3], [3, 3, 3], [0, 3, 3]]  # unknown item 99 dropped


def test_columns_of_python_values_without_a_history_give_one_padded_row_per_user():
    """Serving passes a mapping of columns; without the history column every user gets an empty
    (padded) history, one row per user whatever the number of columns."""
    from core.inference.inputs import UserInputSpec

    users, items = IdMap(np.arange(100)), IdMap(np.arange(1000))
    spec = UserInputSpec(["user_daily__a", "user_daily__b", "user_daily__c"], [], [0.0] * 3, [1.0] * 3, 4)
    columns = {"user_id": [3, 7], "user_daily__a": [1.0, None], "user_daily__b": [2.0, 3.0], "user_daily__c": [0, 1]}
    features = user_features(columns, users, items, spec)
    assert features.history.tolist() == [[1000] * 4, [1000] * 4]
    assert features.dense.shape == (2, 3) and features.user_idx.tolist() == [3, 7]
    with_history = user_features({**columns, HISTORY_COLUMN: [[5, 999_999, 7], None]}, users, items, spec)
    assert with_history.history.tolist() == [[5, 7, 1000, 1000], [1000] * 4]
