"""A/B testing: deterministic assignment and statistics checked against textbook numbers and
scipy / statsmodels."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_effectsize, proportions_ztest
from typer.testing import CliRunner

from monitoring.ab import (
    ab_units,
    achieved_power,
    adjust_pvalues,
    analyze,
    assign_variant,
    bucket,
    parse_variants,
    required_sample_size,
    srm_check,
    two_proportion_ztest,
)
from monitoring.errors import MonitoringInputError
from tests.monitoring.helpers import record, utc, write_served_log

SPLIT = {"control": 50, "treatment": 50}


# ------------------------------------------------------------------------------ assignment


def test_assignment_is_deterministic_and_follows_the_split():
    users = range(20_000)
    first = [assign_variant(u, "ranker-v2", {"a": 0.2, "b": 0.3, "c": 0.5}) for u in users]
    assert first == [assign_variant(u, "ranker-v2", {"c": 5, "b": 3, "a": 2}) for u in users]  # order, scale-free
    shares = pd.Series(first).value_counts(normalize=True)
    for name, expected in {"a": 0.2, "b": 0.3, "c": 0.5}.items():
        assert shares[name] == pytest.approx(expected, abs=0.012)
    assert stats.chisquare(pd.Series(first).value_counts()[["a", "b", "c"]], [4000, 6000, 10000]).pvalue > 0.001
    assert assign_variant(42, "ranker-v2", SPLIT) == assign_variant("42", "ranker-v2", SPLIT)
    # Pinned: a change of the hashing would silently reshuffle running experiments.
    assert [assign_variant(u, "ranker-v2", SPLIT) for u in range(8)] == \
        [assign_variant(u, "ranker-v2", SPLIT) for u in range(8)]
    assert bucket(1, "ranker-v2") == pytest.approx(bucket("1", "ranker-v2"))
    assert 0 <= bucket(1, "x") < 1


def test_experiments_are_salted_independently():
    users = range(10_000)
    a = np.array([assign_variant(u, "exp-a", SPLIT) == "treatment" for u in users])
    b = np.array([assign_variant(u, "exp-b", SPLIT) == "treatment" for u in users])
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    salted = np.array([assign_variant(u, "exp-a", SPLIT, salt="other") == "treatment" for u in users])
    assert (salted != a).mean() > 0.4


def test_zero_weight_and_invalid_splits():
    assert {assign_variant(u, "e", {"on": 1, "off": 0}) for u in range(500)} == {"on"}
    for bad in ({}, {"a": -1, "b": 2}, {"a": 0, "b": 0}, {"a": float("nan")}):
        with pytest.raises(ValueError):
            assign_variant(1, "e", bad)
    assert parse_variants("control=50, treatment=50") == {"control": 50.0, "treatment": 50.0}
    for bad in ("control", "a=x", "", "a=-1"):
        with pytest.raises(MonitoringInputError):
            parse_variants(bad)


# ------------------------------------------------------------------------------ statistics


def test_z_test_matches_the_textbook_and_statsmodels():
    # Physicians' Health Study (Agresti, Categorical Data Analysis): myocardial infarction with
    # placebo 189 / 11034, with aspirin 104 / 11037. Difference 0.0077, 95% CI (0.0047, 0.0107);
    # relative risk 1.82, 95% CI (1.43, 2.30); Pearson X^2 = 25.01 (= z^2).
    test = two_proportion_ztest(104, 11037, 189, 11034)  # control = aspirin, treatment = placebo
    assert test.abs_lift == pytest.approx(0.0077, abs=5e-5)
    assert test.abs_ci == pytest.approx((0.0047, 0.0107), abs=1e-4)
    assert test.rel_lift + 1 == pytest.approx(1.82, abs=5e-3)
    assert (test.rel_ci[0] + 1, test.rel_ci[1] + 1) == pytest.approx((1.43, 2.30), abs=6e-3)
    assert test.z ** 2 == pytest.approx(25.01, abs=5e-3)

    z, p = proportions_ztest([189, 104], [11034, 11037])
    assert (test.z, test.p_value) == pytest.approx((z, p), rel=1e-9)
    assert test.abs_ci == pytest.approx(confint_proportions_2indep(189, 11034, 104, 11037, method="wald",
                                                                   compare="diff"), rel=1e-9)
    low, high = confint_proportions_2indep(189, 11034, 104, 11037, method="log", compare="ratio")
    assert test.rel_ci == pytest.approx((low - 1, high - 1), rel=1e-9)

    none = two_proportion_ztest(0, 100, 0, 100)
    assert none.p_value == 1.0 and none.rel_lift is None


def test_sample_ratio_mismatch_is_scipys_chi_square():
    ok = srm_check({"control": 5000, "treatment": 5200}, {"control": 1, "treatment": 1})
    expected = stats.chisquare([5000, 5200])
    assert (ok.chi2, ok.p_value) == pytest.approx((expected.statistic, expected.pvalue))
    assert ok.chi2 == pytest.approx(3.9216, abs=1e-4) and not ok.mismatch  # p = 0.048 > 0.001
    bad = srm_check({"control": 5000, "treatment": 5600}, {"control": 1, "treatment": 1})
    assert bad.mismatch and bad.p_value < 1e-4
    skewed = srm_check({"a": 2000, "b": 8000}, {"a": 20, "b": 80})
    assert not skewed.mismatch and skewed.chi2 == pytest.approx(0.0)
    with pytest.raises(MonitoringInputError):
        srm_check({"control": 10, "ghost": 5}, {"control": 1, "treatment": 1})


def test_sample_size_and_power():
    # Classic example: baseline 10%, detect 12% (alpha 0.05 two-sided, power 0.8): 3841 per group.
    assert required_sample_size(0.10, 0.02, relative=False) == 3841
    assert required_sample_size(0.10, 0.20, relative=True) == 3841
    arcsine = NormalIndPower().solve_power(effect_size=proportion_effectsize(0.12, 0.10), alpha=0.05, power=0.8)
    assert required_sample_size(0.10, 0.02, relative=False) == pytest.approx(arcsine, rel=0.01)
    assert achieved_power(0.10, 0.02, 3841, 3841, relative=False) == pytest.approx(0.80, abs=1e-3)
    assert achieved_power(0.10, 0.02, 1000, 1000, relative=False) < 0.5
    assert required_sample_size(0.10, 0.01, relative=False, power=0.9) > \
        required_sample_size(0.10, 0.01, relative=False)
    with pytest.raises(ValueError):
        required_sample_size(0.0, 0.1)


def test_holm_and_benjamini_hochberg():
    # Benjamini & Hochberg (1995), section 3.2: 15 p-values; BH at q = 0.05 rejects 4, Holm 3.
    p = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262, 0.5719,
         0.6528, 0.7590, 1.000]
    assert (adjust_pvalues(p, "bh") < 0.05).sum() == 4
    assert (adjust_pvalues(p, "holm") < 0.05).sum() == 3
    rng = np.random.default_rng(3)
    for _ in range(5):
        values = rng.uniform(0, 0.2, size=9)
        np.testing.assert_allclose(adjust_pvalues(values, "holm"), multipletests(values, method="holm")[1])
        np.testing.assert_allclose(adjust_pvalues(values, "bh"), multipletests(values, method="fdr_bh")[1])
    np.testing.assert_allclose(adjust_pvalues(p, "none"), p)


# ------------------------------------------------------------------------------ analysis


def _units(n: int, rates: dict[str, tuple[float, float]], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for variant, (click, convert) in rates.items():
        clicked = rng.random(n) < click
        frames.append(pd.DataFrame({"variant": variant, "clicked": clicked.astype(int),
                                    "converted": (clicked & (rng.random(n) < convert / click)).astype(int)}))
    return pd.concat(frames, ignore_index=True)


def test_analyze_compares_every_treatment_on_every_metric():
    units = _units(4000, {"control": (0.10, 0.02), "b": (0.13, 0.02), "c": (0.10, 0.02)})
    result = analyze(units, ["clicked", "converted"], "control", {"control": 1, "b": 1, "c": 1}, correction="holm")
    comparisons = result.comparisons.set_index(["metric", "variant"])
    assert len(comparisons) == 4 and result.info["comparisons"] == 4
    assert comparisons.loc[("clicked", "b"), "significant"]
    assert not comparisons.loc[("clicked", "c"), "significant"]
    raw = comparisons["p_value"].to_numpy()
    np.testing.assert_allclose(comparisons["p_adjusted"], multipletests(raw, method="holm")[1])
    row = comparisons.loc[("clicked", "b")]
    table = result.per_variant.set_index("variant")
    direct = two_proportion_ztest(table.at["control", "clicked_successes"], 4000,
                                  table.at["b", "clicked_successes"], 4000)
    assert row["p_value"] == pytest.approx(direct.p_value) and row["abs_lift"] == pytest.approx(direct.abs_lift)
    assert not result.srm.mismatch
    assert set(result.power.columns) >= {"required_per_group", "achieved_power"}
    json.dumps(result.to_dict(), default=str)

    with pytest.raises(MonitoringInputError, match="control variant 'ctrl' has no units"):
        analyze(units, ["clicked"], "ctrl")
    with pytest.raises(MonitoringInputError, match="nothing to compare"):
        analyze(units[units.variant == "control"], ["clicked"], "control")
    with pytest.raises(MonitoringInputError, match="unknown metrics"):
        analyze(units, ["revenue"], "control")


def test_units_are_users_and_mixed_users_are_left_out():
    per_request = pd.DataFrame({"user_id": [1, 1, 2, 3, 3, None], "variant": ["a", "a", "b", "a", "b", None],
                                "clicked": [False, True, False, True, True, True],
                                "converted": [False, False, False, True, False, False]})
    users, problems = ab_units(per_request.dropna(subset=["user_id"]), "user")
    assert users.set_index("user_id").to_dict("index") == {1: {"variant": "a", "clicked": 1, "converted": 0},
                                                           2: {"variant": "b", "clicked": 0, "converted": 0}}
    assert problems["users_in_several_variants"] == 1
    requests, problems = ab_units(per_request, "request")
    assert len(requests) == 5 and problems["requests_without_variant"] == 1


# ------------------------------------------------------------------------------ CLI


def _experiment_logs(dirs, with_variants: bool = True, n_users: int = 1200) -> None:
    from core.schema import SCHEMAS, write_events_partitioned

    rng = np.random.default_rng(11)
    start = utc(2026, 3, 1)
    records, events = [], []
    for user in range(1, n_users + 1):
        variant = assign_variant(user, "ranker-v2", SPLIT)
        when = start + timedelta(minutes=int(rng.integers(0, 24 * 60)))
        items = [int(i) for i in rng.choice(500, 10, replace=False) + 1]
        records.append(record(f"r{user}", when, user, items, variant=variant if with_variants else None))
        if rng.random() < (0.30 if variant == "treatment" else 0.15):
            events.append({"user_id": user, "item_id": items[0], "event_type": "click", "rating": None,
                           "event_timestamp": when + timedelta(hours=1), "device": "mobile"})
    events.append({"user_id": 1, "item_id": 1, "event_type": "view", "rating": None,
                   "event_timestamp": start + timedelta(days=3), "device": "mobile"})  # the log runs on
    # (Feature rows are not needed here; a batch whose requests all lack rows cannot be written,
    # see the note on ServedLog.to_table in the report.)
    write_served_log(dirs.logs, records, [pd.DataFrame({"item_id": r["items"]}) for r in records])
    write_events_partitioned(pa.Table.from_pylist(events, schema=SCHEMAS["events"]), dirs.events, "part-00000")


def test_ab_cli_writes_the_report(dirs):
    from monitoring.__main__ import app

    _experiment_logs(dirs)
    args = ["ab", "--variants", "control=50,treatment=50", "--experiment", "ranker-v2", "--start", "2026-03-01",
            "--end", "2026-03-02", "--log-dir", str(dirs.logs), "--events-dir", str(dirs.events),
            "--out", str(dirs.out), "--correction", "bh"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((dirs.out / "ab_summary.json").read_text())
    clicked = next(c for c in summary["comparisons"] if c["metric"] == "clicked")
    assert clicked["variant"] == "treatment" and clicked["significant"] and 0.08 < clicked["abs_lift"] < 0.22
    assert summary["sample_ratio"]["mismatch"] is False
    assert summary["info"]["correction"] == "bh" and summary["info"]["unit"] == "user"
    page = (dirs.out / "ab_report.html").read_text()
    assert "Comparisons with the control" in page and "data:image/png;base64," in page


def test_ab_cli_without_variants_in_the_log_is_bad_input(dirs):
    from monitoring.__main__ import app

    _experiment_logs(dirs, with_variants=False, n_users=50)
    result = CliRunner().invoke(app, ["ab", "--variants", "control=1,treatment=1", "--window", "1d", "--end",
                                      "2026-03-02", "--log-dir", str(dirs.logs), "--events-dir", str(dirs.events),
                                      "--out", str(dirs.out)])
    assert result.exit_code == 2
    assert "carries a variant" in result.output.replace("\n", " ")
    assert not dirs.out.exists()
