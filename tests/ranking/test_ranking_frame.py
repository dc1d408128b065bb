import numpy as np
import pandas as pd
import pytest

from core.inference.frame import (
    CATEGORY_SHARE,
    DAY_OF_WEEK,
    HOUR_OF_DAY,
    FeatureSpec,
    add_derived_features,
    fit_feature_spec,
    to_model_matrix,
)


def joined_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": ["a", "a", "b"],
            "user_id": [1, 1, 2],
            "item_id": [10, 11, 12],
            "event_timestamp": pd.to_datetime(
                ["2026-11-22 03:15:00Z", "2026-11-22 03:15:00Z", "2026-11-23 23:30:00Z"]
            ),
            "device": ["mobile", "mobile", "web"],
            "retrieval_score": [0.9, 0.5, 0.7],
            "retrieval_rank": [0, 1, 0],
            "user_daily__view_count_7d": [3.0, 3.0, np.nan],
            "user_daily__weighted_events_30d": [10.0, 10.0, 0.0],
            "user_daily__ctr_30d": [0.2, 0.2, np.nan],
            "user_profile__age": [30.0, 30.0, np.nan],
            "user_profile__gender": ["F", "F", None],
            "item_daily__popularity_7d": [np.nan, 4.0, 2.0],
            "item_profile__item_category": ["books", "toys", "books"],
            "user_category__category_weighted_events_30d": [4.0, np.nan, 5.0],
            "user_category__category_events_30d": [2.0, np.nan, 1.0],
            "label": [4, 0, 1],
        }
    )


def test_derived_features_and_fills():
    out = add_derived_features(joined_rows())
    # 4/10; missing affinity row -> 0; zero denominator -> 0 (not inf/NaN)
    np.testing.assert_allclose(out[CATEGORY_SHARE], [0.4, 0.0, 0.0])
    assert out[HOUR_OF_DAY].tolist() == [3.0, 3.0, 23.0]
    assert out[DAY_OF_WEEK].tolist() == [6.0, 6.0, 0.0]  # 2026-11-22 is a Sunday
    assert out["user_daily__view_count_7d"].tolist() == [3.0, 3.0, 0.0]
    assert out["item_daily__popularity_7d"].tolist() == [0.0, 4.0, 2.0]
    assert out["user_category__category_events_30d"].tolist() == [2.0, 0.0, 1.0]
    # non count-like nulls stay missing for LightGBM
    assert np.isnan(out["user_daily__ctr_30d"].iloc[2])
    assert np.isnan(out["user_profile__age"].iloc[2])
    assert add_derived_features(out).equals(out)  # idempotent


def test_hour_is_taken_in_utc():
    rows = pd.DataFrame({"event_timestamp": pd.to_datetime(["2026-11-22 01:30:00+02:00"])})
    assert add_derived_features(rows)[HOUR_OF_DAY].tolist() == [23.0]


def test_fit_feature_spec_excludes_ids_labels_timestamps():
    spec = fit_feature_spec(joined_rows())
    for column in ("request_id", "user_id", "item_id", "event_timestamp", "label"):
        assert column not in spec.columns
    assert spec.categorical == ["device", "item_profile__item_category", "user_profile__gender"]
    assert {CATEGORY_SHARE, HOUR_OF_DAY, DAY_OF_WEEK, "retrieval_rank"} <= set(spec.numeric)
    assert spec.vocabularies["device"] == ["mobile", "web"]
    assert spec.vocabularies["user_profile__gender"] == ["F"]


def test_unknown_category_becomes_missing_with_stable_codes():
    rows = joined_rows()
    spec = fit_feature_spec(rows)
    serving = rows.iloc[[0]].assign(device="smart-tv", item_profile__item_category="toys")
    matrix = to_model_matrix(serving, spec)
    assert list(matrix["device"].cat.categories) == ["mobile", "web"]
    assert matrix["device"].cat.codes.tolist() == [-1]
    assert matrix["item_profile__item_category"].cat.codes.tolist() == [1]  # sorted vocabulary


def test_column_order_and_dtypes_are_stable():
    rows = joined_rows()
    shuffled = rows[rows.columns[::-1]]
    spec = fit_feature_spec(rows)
    assert fit_feature_spec(shuffled) == spec
    matrix = to_model_matrix(shuffled, spec)
    assert list(matrix.columns) == spec.columns == spec.numeric + spec.categorical
    assert all(matrix[c].dtype == np.float64 for c in spec.numeric)
    assert all(isinstance(matrix[c].dtype, pd.CategoricalDtype) for c in spec.categorical)
    pd.testing.assert_frame_equal(matrix, to_model_matrix(rows, spec))


def test_missing_column_is_named():
    rows = joined_rows()
    spec = fit_feature_spec(rows)
    with pytest.raises(ValueError, match="item_daily__popularity_7d"):
        to_model_matrix(rows.drop(columns=["item_daily__popularity_7d"]), spec)
    with pytest.raises(ValueError, match=CATEGORY_SHARE):
        to_model_matrix(rows.drop(columns=["user_daily__weighted_events_30d"]), spec)


def test_spec_json_round_trip():
    spec = fit_feature_spec(joined_rows())
    assert FeatureSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="vocabularies"):
        FeatureSpec(numeric=["x"], categorical=["device"], vocabularies={})
