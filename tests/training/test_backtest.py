"""`python -m training backtest`: its input checks, and one whole run on a small synthetic data set
(real Spark, an isolated Feast project applied through Feast's CLI, real models)."""

from __future__ import annotations

import json
import tempfile
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core.environment import redis_client
from core.settings import get_settings
from training.backtest import (
    BacktestInputError,
    infer_request_mode,
    raw_files,
    read_requests,
    run_backtest,
    write_lists,
)
from training.cli import app
from training.presets import backtest_config, movielens_train_config, windows_for_span


def write_requests(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(["user_id,request_time", *lines]) + "\n")
    return path


# ---------------------------------------------------------------- inputs --------------------------


def test_read_requests_accepts_iso_naive_and_epoch_times_in_file_order(tmp_path):
    path = write_requests(tmp_path / "r.csv", ["7,2026-01-02T10:30:00Z", "3,2026-01-02T10:30:00",
                                               "7,2026-01-02T12:30:00+02:00", "5,1767349800"])
    requests = read_requests(path)
    assert requests["request_id"].tolist() == ["r0", "r1", "r2", "r3"]
    assert requests["user_id"].tolist() == [7, 3, 7, 5]
    expected = pd.Timestamp("2026-01-02T10:30:00Z")
    assert (requests["event_timestamp"] == expected).all()  # every spelling of the same instant


@pytest.mark.parametrize("line, message", [
    ("x1,2026-01-02", "row 2: user_id must be an integer, got 'x1'"),
    ("1.5,2026-01-02", "row 2: user_id must be an integer"),
    ("1,yesterday", "row 2: request_time must be ISO 8601 or epoch seconds, got 'yesterday'"),
    ("1,", "row 2: request_time must be ISO 8601"),
])
def test_read_requests_names_the_first_bad_row(tmp_path, line, message):
    path = write_requests(tmp_path / "r.csv", ["1,2026-01-01", line])
    with pytest.raises(BacktestInputError, match="1 bad row") as error:
        read_requests(path)
    assert message in str(error.value)


def test_read_requests_refuses_missing_columns_empty_files_and_long_values(tmp_path):
    (tmp_path / "cols.csv").write_text("user,request_time\n1,2026-01-01\n")
    with pytest.raises(BacktestInputError, match="missing column.*user_id"):
        read_requests(tmp_path / "cols.csv")
    with pytest.raises(BacktestInputError, match="no requests"):
        read_requests(write_requests(tmp_path / "empty.csv", []))
    with pytest.raises(BacktestInputError, match="does not exist"):
        read_requests(tmp_path / "nope.csv")
    with pytest.raises(BacktestInputError) as error:
        read_requests(write_requests(tmp_path / "long.csv", ["1," + "9" * 5000]))
    assert len(str(error.value)) < 300  # a bad value is shown cut short


def test_raw_files_finds_one_file_per_kind(tmp_path):
    for kind, suffix in (("events", ".csv"), ("users", ".parquet"), ("items", ".csv")):
        (tmp_path / f"{kind}{suffix}").write_text("")
    assert {k: p.name for k, p in raw_files(tmp_path).items()} == {
        "events": "events.csv", "users": "users.parquet", "items": "items.csv"}
    (tmp_path / "items.parquet").write_text("")
    with pytest.raises(BacktestInputError, match="both items.csv and items.parquet"):
        raw_files(tmp_path)
    (tmp_path / "users.parquet").unlink()
    with pytest.raises(BacktestInputError, match="no users.csv or users.parquet"):
        raw_files(tmp_path)


def test_request_mode_is_daily_only_when_every_request_is_at_midnight():
    midnight = pd.Series(pd.to_datetime(["2026-01-01", "2026-01-05"], utc=True))
    assert infer_request_mode(midnight) == "daily"
    assert infer_request_mode(pd.concat([midnight, pd.Series(pd.to_datetime(["2026-01-02 09:00"], utc=True))])) \
        == "session"


def test_windows_scale_with_the_span_and_match_movielens_on_its_span():
    assert windows_for_span(215) == (7, 28, 84)  # MovieLens-100K's per-user train part
    for days in (30, 40, 60, 100, 400):
        test, val, ranker = windows_for_span(days)
        assert days - test - val - ranker >= days // 5, days  # a retrieval period remains
        assert test >= 1 and val >= 7 and ranker >= 14
    with pytest.raises(ValueError, match="29 days of events are too few"):
        windows_for_span(29)
    config = backtest_config(date(2026, 1, 1), date(2026, 2, 9), "daily", seed=3)
    assert (config.test_days, config.val_days, config.ranker_days) == windows_for_span(40)
    assert config.ranker.seed == 3 and config.request_mode == "daily"
    reference = movielens_train_config("daily", 3)
    assert config.candidates == reference.candidates and config.als_grid == reference.als_grid


def test_write_lists_keeps_the_requests_order_and_replaces_atomically(tmp_path):
    requests = pd.DataFrame({"request_id": ["r0", "r1"], "user_id": [4, 2],
                             "event_timestamp": pd.to_datetime(["2026-01-02 10:00", "2026-01-01 00:00"], utc=True)})
    out = tmp_path / "lists.jsonl"
    out.write_text("old\n")
    write_lists(out, requests, {"r1": [9, 8], "r0": [1]})
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"user_id": 4, "request_time": "2026-01-02T10:00:00+00:00", "items": [1]},
                     {"user_id": 2, "request_time": "2026-01-01T00:00:00+00:00", "items": [9, 8]}]
    assert [p.name for p in tmp_path.iterdir()] == ["lists.jsonl"]  # no temp file left


def test_bad_inputs_are_refused_before_any_work(tmp_path):
    (tmp_path / "data").mkdir()
    requests = write_requests(tmp_path / "r.csv", ["1,2026-01-01"])
    result = CliRunner().invoke(app, ["backtest", "--data", str(tmp_path / "data"), "--requests", str(requests),
                                      "--out", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2 and "backtest refused" in result.output and "no events.csv" in result.output
    with pytest.raises(BacktestInputError, match="k must be in 1..1000"):
        run_backtest(tmp_path / "data", requests, tmp_path / "out.jsonl", k=0)
    assert not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------- a whole run ---------------------


@pytest.fixture(scope="module")
def synthetic_inputs(tmp_path_factory) -> Path:
    """A small synthetic data set as the three files a user hands the backtest (events as csv)."""
    from training.data.synthetic import GeneratorConfig, generate

    root = tmp_path_factory.mktemp("backtest_data")
    generate(GeneratorConfig(n_users=300, n_items=120, n_events=25_000, n_days=42, seed=5), root / "raw",
             progress=False)
    inputs = root / "inputs"
    inputs.mkdir()
    events = ds.dataset(root / "raw" / "events", format="parquet", partitioning="hive").to_table()
    pa_csv.write_csv(events.drop_columns([c for c in events.column_names if c == "event_date"]),
                     inputs / "events.csv")
    pq.write_table(pq.read_table(root / "raw" / "users" / "users.parquet"), inputs / "users.parquet")
    pq.write_table(pq.read_table(root / "raw" / "items" / "items.parquet"), inputs / "items.parquet")
    return inputs


@pytest.mark.slow
def test_backtest_trains_on_the_events_given_and_writes_one_list_per_request(synthetic_inputs, tmp_path,
                                                                             monkeypatch, spark):
    events = pd.read_csv(synthetic_inputs / "events.csv")
    events["event_timestamp"] = pd.to_datetime(events["event_timestamp"], utc=True)
    busiest = events["user_id"].value_counts().index[:3].tolist()
    last = events["event_timestamp"].max()
    middle = events["event_timestamp"].min() + (last - events["event_timestamp"].min()) * 0.9
    rows = [f"{user},{when.isoformat()}" for user in busiest for when in (middle, last + pd.Timedelta(hours=1))]
    rows.append(f"999999,{last.isoformat()}")  # a user the data does not know gets trending items
    requests = write_requests(tmp_path / "requests.csv", rows)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    raw_before = sorted(get_settings().raw_dir.rglob("*")) if get_settings().raw_dir.exists() else []

    result = CliRunner().invoke(app, ["backtest", "--data", str(synthetic_inputs), "--requests", str(requests),
                                      "--out", str(tmp_path / "lists.jsonl"), "--k", "7"])
    assert result.exit_code == 0, result.output
    assert "7 lists (session requests, 0 empty)" in result.output

    lines = [json.loads(line) for line in (tmp_path / "lists.jsonl").read_text().splitlines()]
    assert [line["user_id"] for line in lines] == [int(r.split(",")[0]) for r in rows]
    assert [pd.Timestamp(line["request_time"]) for line in lines[:2]] == [middle.floor("us"),
                                                                         (last + pd.Timedelta(hours=1)).floor("us")]
    catalog = set(pq.read_table(synthetic_inputs / "items.parquet")["item_id"].to_pylist())
    for line in lines:
        assert len(line["items"]) == 7 and len(set(line["items"])) == 7 and set(line["items"]) <= catalog
        seen = events[(events.user_id == line["user_id"])
                      & (events.event_timestamp < pd.Timestamp(line["request_time"]))]["item_id"]
        assert not set(line["items"]) & set(seen), "an item the user had interacted with before the request"

    assert not list((tmp_path / "tmp").glob("recsys-backtest-*"))  # the temporary work folder is removed
    assert not list(redis_client().scan_iter(match="*backtest_*", count=1000))  # nothing was written online
    assert (sorted(get_settings().raw_dir.rglob("*")) if get_settings().raw_dir.exists() else []) == raw_before
