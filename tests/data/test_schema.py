"""The raw data contract: schema errors, row quarantine, reading, partitioned writing, ingestion."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.schema import (
    EVENTS_SCHEMA,
    ITEMS_SCHEMA,
    USERS_SCHEMA,
    SchemaError,
    ingest,
    read_raw_file,
    validate_table,
    write_events_partitioned,
    write_table_atomic,
)

UTC = timezone.utc
TS_US_UTC = pa.timestamp("us", tz="UTC")


def events(n: int = 4, **overrides: list) -> pa.Table:
    columns = {
        "user_id": [1] * n,
        "item_id": [10] * n,
        "event_type": ["view"] * n,
        "rating": [None] * n,
        "event_timestamp": [datetime(2026, 1, 1, 12, tzinfo=UTC) + timedelta(seconds=i) for i in range(n)],
        "device": ["mobile"] * n,
    }
    columns.update(overrides)
    return pa.table(columns)


def users(ids: list[int]) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "user_id": ids,
            "age": [30] * n,
            "gender": ["female"] * n,
            "occupation": ["engineer"] * n,
            "signup_timestamp": [datetime(2025, 6, 1, tzinfo=UTC)] * n,
        }
    )


def items(ids: list[int], price: list[float] | None = None, category: list | None = None) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "item_id": ids,
            "category": category or ["Books"] * n,
            "price": price or [9.99] * n,
            "title": [f"item {i}" for i in ids],
            "created_timestamp": [datetime(2025, 1, 1, tzinfo=UTC)] * n,
        }
    )


# --- whole-file problems -------------------------------------------------------------------


def test_valid_table_conforms_exactly_and_drops_extra_columns() -> None:
    table = events().append_column("extra", pa.array(["x"] * 4))
    table = table.select(["device", "extra", *EVENTS_SCHEMA.names[:-1]])  # shuffled order

    result = validate_table(table, "events")

    assert result.valid.schema == EVENTS_SCHEMA
    assert result.valid.num_rows == 4 and result.n_rejected == 0
    assert result.summary() == "events: 0 of 4 rows rejected"


def test_missing_columns_are_named_with_the_file() -> None:
    with pytest.raises(SchemaError) as error:
        validate_table(events().drop_columns(["device", "rating"]), "events", source="in/events.csv")

    message = str(error.value)
    assert "in/events.csv" in message and "rating" in message and "device" in message
    assert error.value.columns == ("rating", "device")


def test_uncastable_type_names_expected_and_actual_type() -> None:
    table = events().set_column(0, "user_id", pa.array(["a", "b", "c", "d"]))

    with pytest.raises(SchemaError, match=r"events\.parquet: column user_id has type string, expected int64"):
        validate_table(table, "events", source="events.parquet")


def test_fractional_ids_cannot_be_cast() -> None:
    table = events().set_column(0, "user_id", pa.array([1.0, 2.5, 3.0, 4.0]))

    with pytest.raises(SchemaError, match="user_id.*expected int64"):
        validate_table(table, "events")


@pytest.mark.parametrize("bad", [pa.array([1, 2, 3, 4], pa.int64()), pa.array(["yesterday"] * 4)])
def test_timestamps_must_be_timestamps_or_iso_strings(bad: pa.Array) -> None:
    with pytest.raises(SchemaError, match="event_timestamp.*expected timestamp"):
        validate_table(events().set_column(4, "event_timestamp", bad), "events")


def test_timestamps_of_any_unit_and_naive_or_iso_are_cast_to_us_utc() -> None:
    expected = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    variants = [
        pa.array([datetime(2026, 1, 1, 12)] * 4, pa.timestamp("ns")),  # naive -> UTC
        pa.array([datetime(2026, 1, 1, 12)] * 4, pa.timestamp("s", tz="UTC")),
        pa.array([expected] * 4, pa.timestamp("ms", tz="Europe/Paris")),  # same instant, other zone
        pa.array(["2026-01-01T12:00:00Z"] * 4),
        pa.array(["2026-01-01T14:00:00+02:00"] * 4),
        pa.array(["2026-01-01 12:00:00"] * 4),  # no offset -> UTC
    ]
    for column in variants:
        valid = validate_table(events().set_column(4, "event_timestamp", column), "events").valid
        assert valid.schema.field("event_timestamp").type == TS_US_UTC
        assert valid.column("event_timestamp").to_pylist() == [expected] * 4, column.type


# --- row problems --------------------------------------------------------------------------


def test_bad_event_rows_are_quarantined_with_reasons() -> None:
    table = events(
        9,
        user_id=[1, None, -3, 1, 1, 1, 1, 1, 1],
        event_type=["view", "view", "view", "like", None, "purchase", "view", "view", "view"],
        rating=[None, None, None, None, None, 6.0, float("nan"), None, None],
        device=["mobile", "mobile", "mobile", "mobile", "mobile", "mobile", "mobile", None, "fridge"],
    )

    result = validate_table(table, "events", source="e.csv")

    assert result.valid.num_rows == 2  # the NaN rating is a missing rating, not a bad one
    assert result.valid.column("rating").null_count == 2
    assert result.rejected.column("reject_reason").to_pylist() == [
        "null user_id",
        "negative user_id",
        "unknown event_type",
        "null event_type",
        "rating out of range",
        "null device",
        "unknown device",
    ]
    assert result.rejected.schema.names == [*EVENTS_SCHEMA.names, "reject_reason", "source_row"]
    assert result.rejected.column("source_row").to_pylist() == [2, 3, 4, 5, 6, 8, 9]
    assert result.n_rejected == 7
    assert result.summary().startswith("events: 7 of 9 rows rejected (1 null user_id, ")


def test_summary_counts_reasons_most_frequent_first() -> None:
    table = events(6, event_type=["view", "x", "y", "view", "view", "view"], user_id=[1, 1, 1, None, 1, 1])

    assert validate_table(table, "events").summary() == (
        "events: 3 of 6 rows rejected (2 unknown event_type, 1 null user_id)"
    )


def test_bad_item_and_user_rows_are_quarantined() -> None:
    item_result = validate_table(items([1, 2, 3, 3], price=[5.0, -1.0, 3.0, 4.0], category=["A", "A", None, "B"]), "items")
    user_result = validate_table(users([1, -2, 1]), "users")

    assert item_result.reason_counts() == {"negative price": 1, "null category": 1}
    assert item_result.valid.column("item_id").to_pylist() == [1, 3]
    assert user_result.reason_counts() == {"negative user_id": 1, "duplicate user_id": 1}
    assert item_result.valid.schema == ITEMS_SCHEMA and user_result.valid.schema == USERS_SCHEMA


# --- reading -------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"user_id,item_id\n1,2\n", b"PAR1\x00\x01garbage"])
def test_unreadable_parquet_raises_schema_error_with_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "events.parquet"
    path.write_bytes(content)

    with pytest.raises(SchemaError, match="cannot read") as error:
        read_raw_file(path)
    assert str(path) in str(error.value)


def test_truncated_parquet_raises_schema_error(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(events(100), good)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-40])

    with pytest.raises(SchemaError, match="truncated.parquet"):
        read_raw_file(truncated)


def test_read_csv_treats_empty_strings_as_null(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "user_id,item_id,event_type,rating,event_timestamp,device\n"
        "1,10,view,,2026-01-01T10:00:00Z,mobile\n"
        "2,11,purchase,5,2026-01-01T11:00:00Z,\n"
    )

    result = validate_table(read_raw_file(path), "events", source=str(path))

    assert result.valid.column("rating").to_pylist() == [None]
    assert result.reason_counts() == {"null device": 1}


def test_unsupported_suffix_is_a_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_text("{}")
    with pytest.raises(SchemaError, match="unsupported file type"):
        read_raw_file(path)


# --- writing -------------------------------------------------------------------------------


def test_events_are_partitioned_by_utc_date_with_us_timestamps(tmp_path: Path) -> None:
    stamps = [
        datetime(2026, 1, 2, 0, 30, tzinfo=UTC),
        datetime(2026, 1, 1, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 1, 1, 8, 0, tzinfo=UTC),
    ]
    table = events(3, event_timestamp=pa.array(stamps, pa.timestamp("ns", tz="UTC")))

    written = write_events_partitioned(table, tmp_path / "events", "part-00000")

    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "events/event_date=2026-01-01/part-00000.parquet",
        "events/event_date=2026-01-02/part-00000.parquet",
    ]
    day1 = pq.read_table(tmp_path / "events/event_date=2026-01-01/part-00000.parquet")
    assert day1.schema == EVENTS_SCHEMA  # no event_date column, timestamps us UTC
    assert day1.column("event_timestamp").to_pylist() == sorted(stamps[1:])
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp files left
    assert read_raw_file(tmp_path / "events").schema == EVENTS_SCHEMA  # no partition column added


def test_rewriting_a_part_replaces_it(tmp_path: Path) -> None:
    write_events_partitioned(events(4), tmp_path, "part-00000")
    write_events_partitioned(events(2), tmp_path, "part-00000")

    assert read_raw_file(tmp_path).num_rows == 2


def test_write_table_atomic_creates_parent_dirs(tmp_path: Path) -> None:
    path = write_table_atomic(users([1, 2]), tmp_path / "users" / "users.parquet")
    assert pq.read_table(path).num_rows == 2
    assert [p.name for p in path.parent.iterdir()] == ["users.parquet"]


# --- ingestion -----------------------------------------------------------------------------


def write_inputs(tmp_path: Path, event_table: pa.Table) -> tuple[Path, Path, Path]:
    paths = tmp_path / "in_events.parquet", tmp_path / "in_users.parquet", tmp_path / "in_items.parquet"
    pq.write_table(event_table, paths[0])
    pq.write_table(users([1, 2]), paths[1])
    pq.write_table(items([10, 11]), paths[2])
    return paths


def test_ingest_writes_canonical_layout_and_quarantine(tmp_path: Path) -> None:
    table = events(5, user_id=[1, 2, 3, 1, 1], item_id=[10, 11, 10, 99, 10], event_type=["view"] * 4 + ["bad"])
    raw, quarantine = tmp_path / "raw", tmp_path / "quarantine"

    counts = ingest(*write_inputs(tmp_path, table), raw, quarantine)

    assert counts == {
        "events": {"valid": 2, "rejected": 3},
        "users": {"valid": 2, "rejected": 0},
        "items": {"valid": 2, "rejected": 0},
    }
    assert (raw / "events/event_date=2026-01-01/part-00000.parquet").exists()
    assert read_raw_file(raw / "users/users.parquet").schema == USERS_SCHEMA
    assert read_raw_file(raw / "items/items.parquet").schema == ITEMS_SCHEMA
    rejected = pq.read_table(quarantine / "events.parquet")
    assert sorted(rejected.column("reject_reason").to_pylist()) == ["unknown event_type", "unknown item_id", "unknown user_id"]
    assert pq.read_table(quarantine / "users.parquet").num_rows == 0


def test_ingest_replaces_previous_partitions(tmp_path: Path) -> None:
    raw, quarantine = tmp_path / "raw", tmp_path / "quarantine"
    old = events(2, event_timestamp=[datetime(2025, 12, 1, tzinfo=UTC)] * 2)
    ingest(*write_inputs(tmp_path, old), raw, quarantine)

    ingest(*write_inputs(tmp_path, events(3)), raw, quarantine)

    assert sorted(p.name for p in (raw / "events").iterdir()) == ["event_date=2026-01-01"]
    assert read_raw_file(raw / "events").num_rows == 3


def test_ingest_schema_error_leaves_raw_dir_untouched(tmp_path: Path) -> None:
    raw, quarantine = tmp_path / "raw", tmp_path / "quarantine"
    ingest(*write_inputs(tmp_path, events(3)), raw, quarantine)
    before = sorted(p.relative_to(raw) for p in raw.rglob("*"))

    with pytest.raises(SchemaError, match="in_events.parquet.*device"):
        ingest(*write_inputs(tmp_path, events(3).drop_columns(["device"])), raw, quarantine)

    assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before
    assert read_raw_file(raw / "events").num_rows == 3
