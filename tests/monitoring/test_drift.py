"""Drift detection on the synthetic generator's drift window: the shifted features are flagged
(device mix, category shares), and without drift none or almost none are."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from core.inference.frame import FeatureSpec
from monitoring.drift import DriftConfig, feature_columns, prepare, run_drift
from monitoring.errors import MonitoringInputError
from tests.monitoring.synthetic_rows import CATEGORICAL, NUMERIC

SHIFTED = {"device", "item_profile__item_category", "category_share_30d"}
UNAFFECTED = {"user_profile__gender", "user_profile__age", "user_daily__ctr_30d"}


def test_drift_window_flags_the_shifted_features(drifted):
    result = run_drift(drifted["reference"], drifted["current"], drifted["spec"], DriftConfig(summary_stats=False))
    flagged = set(result.drifted_features)
    assert SHIFTED <= flagged, result.summary["features"]
    assert not flagged & UNAFFECTED
    by_name = {f["feature"]: f for f in result.summary["features"]}
    assert by_name["device"]["method"] == "psi" and by_name["category_share_30d"]["method"] == "wasserstein"
    mobile = next(c for c in by_name["device"]["largest_share_changes"] if c["value"] == "mobile")
    assert mobile["current_share"] > mobile["reference_share"] + 0.15  # the injected mobile takeover
    summary = result.summary
    assert summary["n_features"] == len(NUMERIC) + len(CATEGORICAL)
    assert summary["share_of_drifted_features"] == pytest.approx(len(flagged) / summary["n_features"])
    json.dumps(summary)  # the JSON summary is plain JSON


def test_without_drift_none_or_almost_none_is_flagged(steady):
    result = run_drift(steady["reference"], steady["current"], steady["spec"], DriftConfig(summary_stats=False))
    assert len(result.drifted_features) <= 1, result.drifted_features
    assert not set(result.drifted_features) & (SHIFTED | UNAFFECTED)
    assert result.share_drifted <= 0.1


def test_methods_and_thresholds_are_configurable(drifted):
    config = DriftConfig(cat_method="chisquare", per_column_method={"item_profile__price": "kl_div"},
                         per_column_threshold={"device": 1e-300}, num_threshold=5.0, summary_stats=False)
    result = run_drift(drifted["reference"], drifted["current"], drifted["spec"], config)
    by_name = {f["feature"]: f for f in result.summary["features"]}
    assert by_name["item_profile__item_category"]["method"] == "chisquare"
    assert by_name["item_profile__item_category"]["score_kind"] == "p_value"
    assert by_name["item_profile__item_category"]["drifted"]  # p-value far below 0.05
    assert by_name["item_profile__price"]["method"] == "kl_div"
    assert by_name["device"]["threshold"] == 1e-300 and not by_name["device"]["drifted"]
    assert not any(by_name[c]["drifted"] for c in NUMERIC if c != "item_profile__price")  # threshold 5


def test_a_feature_missing_online_counts_as_drifted():
    spec = FeatureSpec(["a", "b"], ["c"], {"c": ["x", "y"]})
    reference = pd.DataFrame({"a": range(200), "b": [1.0] * 200, "c": ["x", "y"] * 100})
    current = reference.assign(b=None)
    result = run_drift(reference, current, spec, DriftConfig(summary_stats=False))
    assert result.drifted_features == ["b"]
    b = next(f for f in result.summary["features"] if f["feature"] == "b")
    assert b["method"] == "all_missing" and b["note"] == "no values in current data"


def test_schema_mismatch_is_a_clear_error():
    spec = FeatureSpec(["a", "category_share_30d"], ["c"], {"c": ["x"]})
    frame = pd.DataFrame({"a": [1.0, 2.0], "c": ["x", "x"]})
    with pytest.raises(MonitoringInputError, match=r"lacks feature columns \['category_share_30d'\].*derived from"):
        prepare(frame, *feature_columns(spec, DriftConfig()), side="current")
    with pytest.raises(MonitoringInputError, match="non-numeric values in numerical features: a"):
        prepare(pd.DataFrame({"a": ["high", "low"], "c": ["x", "y"]}), ["a"], ["c"], side="current")
    with pytest.raises(MonitoringInputError, match="unknown method 'nope'"):
        run_drift(frame, frame, FeatureSpec(["a"], ["c"], {"c": ["x"]}), DriftConfig(num_method="nope"))
    with pytest.raises(MonitoringInputError, match="does not apply to categorical"):
        run_drift(frame, frame, FeatureSpec(["a"], ["c"], {"c": ["x"]}), DriftConfig(cat_method="wasserstein"))
    with pytest.raises(MonitoringInputError, match="no rows"):
        prepare(frame.head(0), ["a"], ["c"], side="current")
