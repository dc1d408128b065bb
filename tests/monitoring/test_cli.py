"""`python -m monitoring drift`: the exit code gates on the share of drifted features; bad input
gives exit code 2 with a clear message and leaves no report behind."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from monitoring.__main__ import app
from tests.monitoring.helpers import VERSION, log_rows_as_requests, write_bundle, write_reference

runner = CliRunner()
SHIFTED = {"device", "item_profile__item_category", "category_share_30d"}


def _setup(world, dirs) -> list[str]:
    write_bundle(dirs.models, world["spec"])
    write_reference(dirs.data, world["reference"])
    log_rows_as_requests(dirs.logs, world["current"])
    start, end = world["window"]
    return ["--start", start.isoformat(), "--end", end.isoformat(), "--data-dir", str(dirs.data),
            "--models-dir", str(dirs.models), "--log-dir", str(dirs.logs), "--events-dir",
            str(world["raw"] / "events"), "--out", str(dirs.out)]


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_drift_gate_fails_on_the_drift_window(drifted, dirs):
    args = _setup(drifted, dirs)
    result = _invoke("drift", *args, "--threshold", "0.2", "--no-summary-stats", "--no-quality")
    assert result.exit_code == 1, result.output
    assert "drift gate failed" in result.output
    summary = json.loads((dirs.out / "drift_summary.json").read_text())
    assert SHIFTED <= set(summary["drifted_features"])
    assert summary["gate"] == {"threshold": 0.2, "failed": True}
    assert summary["bundle_version"] == VERSION and summary["requests"] > 100
    assert {f["feature"]: f["method"] for f in summary["features"]}["device"] == "psi"
    page = (dirs.out / "drift_report.html").read_text()
    assert page.startswith("\n    <!DOCTYPE html>") or "<!DOCTYPE html>" in page[:200]
    assert "Per-feature drift" in page and "item_profile__item_category" in page
    assert not list(dirs.out.glob(".*tmp"))


def test_drift_gate_passes_without_drift_and_reports_online_quality(steady, dirs):
    args = _setup(steady, dirs)
    result = _invoke("drift", *args, "--threshold", "0.2", "--k", "5")
    assert result.exit_code == 0, result.output
    summary = json.loads((dirs.out / "drift_summary.json").read_text())
    assert summary["gate"]["failed"] is False and summary["n_drifted"] <= 1
    quality = summary["online_quality"]
    assert "error" not in quality, quality
    versions = {row["model_version"]: row for row in quality["by_model_version"]}
    assert set(versions) == {"all", VERSION}
    # The "recommended" items are the viewed ones, so many get clicked within a day.
    assert 0 < versions[VERSION]["ctr"] < 1 and versions[VERSION]["coverage"] > 0
    page = (dirs.out / "drift_report.html").read_text()
    assert "Online quality per model version" in page and "data:image/png;base64," in page


@pytest.mark.parametrize("case", ["empty_window", "no_logs", "no_reference", "schema_mismatch", "bad_window",
                                  "bad_bundle"])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(case, steady, dirs):
    args = _setup(steady, dirs)
    expected = {"empty_window": "no served requests in 2030-01-01", "no_logs": "no served log at",
                "no_reference": "no reference data for bundle", "schema_mismatch": "schema mismatch",
                "bad_window": "invalid duration", "bad_bundle": "model bundle"}[case]
    if case == "empty_window":
        args[1], args[3] = "2030-01-01", "2030-01-02"
    elif case == "no_logs":
        args[args.index("--log-dir") + 1] = str(dirs.data / "nowhere")
    elif case == "no_reference":
        import shutil

        shutil.rmtree(dirs.data / "training")
    elif case == "schema_mismatch":
        write_reference(dirs.data, steady["reference"].drop(columns=["user_daily__weighted_events_30d"]))
    elif case == "bad_window":
        args = ["--window", "three days", *args[4:]]
    elif case == "bad_bundle":
        args += ["--bundle", "no-such-version"]
    result = _invoke("drift", *args)
    assert result.exit_code == 2, result.output
    assert expected in result.output.replace("\n", " ")
    assert not dirs.out.exists() or not any(dirs.out.iterdir())


def test_degraded_requests_are_left_out_by_default(steady, dirs):
    from tests.monitoring.helpers import record, write_served_log

    args = _setup(steady, dirs)
    start, _ = steady["window"]
    broken = steady["current"].head(50).assign(item_profile__price=None, request_id="degraded-1")
    write_served_log(dirs.logs, [record("degraded-1", start.to_pydatetime(), 1, [1], degraded=True)], [broken],
                     name="degraded")
    result = _invoke("drift", *args, "--no-quality", "--no-summary-stats")
    assert result.exit_code == 0, result.output
    summary = json.loads((dirs.out / "drift_summary.json").read_text())
    assert summary["requests_left_out"] == {"degraded": 1}


def test_assign_prints_the_same_variant_as_the_function():
    from monitoring.ab import assign_variant

    result = _invoke("assign", "--experiment", "ranker-v2", "--variants", "control=1,treatment=1", "7", "8")
    assert result.exit_code == 0
    lines = dict(line.split("\t") for line in result.output.strip().splitlines())
    assert lines == {u: assign_variant(int(u), "ranker-v2", {"control": 1, "treatment": 1}) for u in ("7", "8")}
    assert _invoke("assign", "--experiment", "x", "--variants", "control", "1").exit_code == 2
