"""Ingest is all or nothing, keeps to the time window, and names file, column, row and value."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core import schema
from core.schema import EmptyIngestError, SchemaError, ingest, read_raw_file, validate_table
from core.settings import get_settings
from core.time_window import TimeWindow, time_window
from tests.data.test_schema import events, items, users, write_inputs

UTC = timezone.utc
HEADER = "user_id,item_id,event_type,rating,event_timestamp,device\n"


def write_csv_inputs(tmp_path: Path, event_lines: list[str]) -> tuple[Path, Path, Path]:
    paths = tmp_path / "events.csv", tmp_path / "in_users.parquet", tmp_path / "in_items.parquet"
    paths[0].write_text(HEADER + "".join(line + "\n" for line in event_lines))
    pq.write_table(users([1, 2]), paths[1])
    pq.write_table(items([10, 11]), paths[2])
    return paths


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def loaded(tmp_path: Path) -> tuple[Path, Path]:
    """Raw data of 3 good events (and an empty quarantine) already in place."""
    raw, quarantine = tmp_path / "raw", tmp_path / "quarantine"
    (tmp_path / "first").mkdir()
    ingest(*write_inputs(tmp_path / "first", events(3)), raw, quarantine)
    return raw, quarantine


def test_the_window_rejects_the_distant_past_and_the_future() -> None:
    window = TimeWindow(datetime(1990, 1, 1, tzinfo=UTC), timedelta(days=1))
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)

    assert window.problem(datetime(1997, 9, 20), now) is None  # naive is UTC; MovieLens' years
    assert window.problem(now + timedelta(hours=23), now) is None
    assert "before the earliest allowed time 1990-01-01T00:00:00Z" in window.problem(datetime(1, 1, 1), now)
    assert "ahead of the server's clock" in window.problem(datetime(9999, 1, 1, tzinfo=UTC), now)
    assert "ahead" in window.problem(now + timedelta(days=1, seconds=1), now)


def test_window_settings_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_EARLIEST_EVENT_TIME", "2000-01-01T00:00:00Z")
    monkeypatch.setenv("RECSYS_MAX_FUTURE_SKEW", "PT1H")
    get_settings.cache_clear()
    try:
        window = time_window()
        assert window.earliest == datetime(2000, 1, 1, tzinfo=UTC)
        assert window.max_future_skew == timedelta(hours=1)
    finally:
        get_settings.cache_clear()


def test_out_of_window_events_are_quarantined_with_row_and_value(tmp_path: Path) -> None:
    future = datetime.now(UTC) + timedelta(days=3)
    table = events(4, event_timestamp=[datetime(2026, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC),
                                       datetime(1677, 9, 22, tzinfo=UTC), future])

    result = validate_table(table, "events", source="events.parquet")

    assert result.n_valid == 1
    assert result.rejected.column("source_row").to_pylist() == [2, 3, 4]
    assert set(result.reason_counts()) == {"event_timestamp outside the allowed time window"}
    assert result.examples(1) == ["events.parquet row 2: event_timestamp outside the allowed time window, "
                                  "column event_timestamp = '9999-01-01T00:00:00+00:00'"]


def test_a_bad_date_names_file_column_row_and_value(tmp_path: Path) -> None:
    paths = write_csv_inputs(tmp_path, ["1,10,view,,2026-01-01T10:00:00Z,mobile",
                                        "1,10,view,,2026-01-01T11:00:00Z,mobile",
                                        "2,11,click,,2026-13-45T99:00:00Z,mobile"])

    with pytest.raises(SchemaError) as raised:
        ingest(*paths, tmp_path / "raw", tmp_path / "quarantine")

    message = str(raised.value)
    assert "events.csv" in message and "column event_timestamp" in message and "row 3, value" in message
    assert "'2026-13-45T99:00:00Z'" in message
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").rglob("*.parquet"))


def test_mixed_naive_and_offset_timestamps_are_read_as_utc(tmp_path: Path) -> None:
    paths = write_csv_inputs(tmp_path, ["1,10,view,,2026-01-01T10:00:00,mobile",
                                        "1,11,view,,2026-01-01T12:00:00+02:00,mobile",
                                        "2,10,click,,2026-01-01T10:30:00Z,tablet"])

    counts = ingest(*paths, tmp_path / "raw", tmp_path / "quarantine")

    assert counts["events"] == {"valid": 3, "rejected": 0}
    times = sorted(read_raw_file(tmp_path / "raw" / "events").column("event_timestamp").to_pylist())
    assert times == [datetime(2026, 1, 1, 10, tzinfo=UTC), datetime(2026, 1, 1, 10, tzinfo=UTC),
                     datetime(2026, 1, 1, 10, 30, tzinfo=UTC)]


@pytest.mark.parametrize("lines", [[], ["1,10,teleport,,2026-01-01T10:00:00Z,mobile",
                                        "2,10,view,,2999-01-01T10:00:00Z,mobile"]],
                         ids=["header-only", "all-rows-invalid"])
def test_empty_events_never_replace_existing_data(tmp_path: Path, loaded, lines) -> None:
    raw, quarantine = loaded
    before_raw, before_quarantine = snapshot(raw), snapshot(quarantine)

    with pytest.raises(EmptyIngestError, match="events.csv.*refusing to replace the events"):
        ingest(*write_csv_inputs(tmp_path, lines), raw, quarantine)

    assert snapshot(raw) == before_raw and snapshot(quarantine) == before_quarantine
    counts = ingest(*write_csv_inputs(tmp_path, lines), raw, quarantine, allow_empty=True)
    assert counts["events"]["valid"] == 0
    assert not list((raw / "events").rglob("*.parquet"))


def test_a_failure_while_writing_leaves_old_data_and_no_stale_files(tmp_path: Path, loaded, monkeypatch) -> None:
    raw, quarantine = loaded
    before_raw, before_quarantine = snapshot(raw), snapshot(quarantine)
    table = events(5, user_id=[1, 2, 1, 1, 9])  # one unknown user: a quarantine row
    real_write = schema.write_table_atomic

    def fail_on_items(table, path, durable=False):
        if Path(path).name == "items.parquet":
            raise OSError("disk full")
        return real_write(table, path, durable)

    monkeypatch.setattr(schema, "write_table_atomic", fail_on_items)
    with pytest.raises(OSError, match="disk full"):
        ingest(*write_inputs(tmp_path, table), raw, quarantine)

    assert snapshot(raw) == before_raw and snapshot(quarantine) == before_quarantine
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_the_cli_exits_nonzero_and_names_the_problem(tmp_path: Path, loaded, monkeypatch) -> None:
    from training.cli import app

    raw, _ = loaded
    monkeypatch.setenv("RECSYS_DATA_DIR", str(raw.parent))
    get_settings.cache_clear()
    try:
        paths = write_csv_inputs(tmp_path, [])
        result = CliRunner().invoke(app, ["ingest", *map(str, paths)])
        assert result.exit_code == 1, result.output
        assert "nothing was changed" in result.output and "--allow-empty" in result.output
        ok = write_csv_inputs(tmp_path, ["1,10,view,,2026-01-01T10:00:00Z,mobile",
                                         "2,11,view,,9999-01-01T10:00:00Z,mobile"])
        result = CliRunner().invoke(app, ["ingest", *map(str, ok)])
        assert result.exit_code == 0, result.output
        assert "events.csv row 2: event_timestamp outside the allowed time window" in result.output
    finally:
        get_settings.cache_clear()
