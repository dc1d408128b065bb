"""The raw data contract: schemas, validation, quarantine and the canonical on-disk layout.

Canonical layout under ``raw_dir``::

    events/event_date=YYYY-MM-DD/<part>.parquet   (EVENTS_SCHEMA; event_date only in the path)
    users/users.parquet                           (USERS_SCHEMA)
    items/items.parquet                           (ITEMS_SCHEMA)

Whole-file problems (unreadable file, missing column, a type that cannot be cast) raise
:class:`SchemaError`. Row-level problems never raise: the rows are quarantined with a
``reject_reason`` so one bad record cannot block a pipeline run, and nothing bad flows downstream.

Every file is written to a hidden temporary name in its final directory and then ``os.replace``d,
so a reader (Spark, Feast, pyarrow) never sees a half-written file: names starting with ``.`` are
ignored by all of them.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from core.atomic import atomic_path, replace_directory, staging_directory, swap_directories
from core.time_window import OUTSIDE_WINDOW, time_window

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
EVENT_GAIN: dict[str, int] = {"view": 1, "click": 2, "add_to_cart": 3, "purchase": 4}
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
RATING_RANGE: tuple[float, float] = (1.0, 5.0)

TIMESTAMP = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("event_type", pa.string()),
        pa.field("rating", pa.float64()),  # optional explicit rating 1..5, null when absent
        pa.field("event_timestamp", TIMESTAMP),
        pa.field("device", pa.string()),
    ]
)
USERS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64()),
        pa.field("age", pa.int64()),
        pa.field("gender", pa.string()),
        pa.field("occupation", pa.string()),
        pa.field("signup_timestamp", TIMESTAMP),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64()),
        pa.field("category", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("title", pa.string()),
        pa.field("created_timestamp", TIMESTAMP),
    ]
)
SCHEMAS: dict[str, pa.Schema] = {"events": EVENTS_SCHEMA, "users": USERS_SCHEMA, "items": ITEMS_SCHEMA}

# The primary key of each entity table; duplicates would fan out joins downstream.
PRIMARY_KEYS: dict[str, str] = {"users": "user_id", "items": "item_id"}

EVENT_DATE_COLUMN = "event_date"
REJECT_REASON_COLUMN = "reject_reason"
# 1-based number of the row in its input file (the header line not counted), in quarantine files.
SOURCE_ROW_COLUMN = "source_row"


class SchemaError(ValueError):
    """A whole file does not match the raw contract (unreadable, missing column, wrong type)."""

    def __init__(self, source: str, message: str, columns: tuple[str, ...] = ()) -> None:
        self.source = source
        self.columns = columns
        super().__init__(f"{source}: {message}")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_raw_file(path: str | Path) -> pa.Table:
    """Read a ``.parquet`` / ``.csv`` file or a directory of parquet files into one table.

    Directories are read without partition discovery, so the ``event_date=...`` directory names
    of the events layout do not add a column (the date is derived from ``event_timestamp``).
    Hidden (``.``) and ``_``-prefixed files, e.g. in-flight temp files, are ignored.
    Any read failure becomes a :class:`SchemaError` naming the path.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"raw data not found: {path}")
    try:
        if path.is_dir():
            return ds.dataset(path, format="parquet", partitioning=None).to_table()
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix == ".csv":
            return pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SchemaError(str(path), f"cannot read file ({type(exc).__name__}: {exc})") from exc
    raise SchemaError(str(path), f"unsupported file type {suffix!r} (expected .parquet or .csv)")


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of :func:`validate_table`: rows that conform and rows that were quarantined."""

    kind: str
    source: str
    valid: pa.Table
    rejected: pa.Table  # the schema's columns + ``reject_reason`` + ``source_row``
    valid_rows: pa.Array | None = None  # the input row number of each valid row

    @property
    def n_valid(self) -> int:
        return self.valid.num_rows

    @property
    def n_rejected(self) -> int:
        return self.rejected.num_rows

    @property
    def n_total(self) -> int:
        return self.n_valid + self.n_rejected

    def reason_counts(self) -> dict[str, int]:
        """Rejected rows per reason, most frequent first."""
        reasons = self.rejected.column(REJECT_REASON_COLUMN).to_pylist()
        return dict(Counter(reasons).most_common())

    def summary(self) -> str:
        """E.g. ``events: 3 of 1000 rows rejected (2 unknown event_type, 1 null user_id)``."""
        text = f"{self.kind}: {self.n_rejected} of {self.n_total} rows rejected"
        if self.n_rejected:
            text += " (" + ", ".join(f"{n} {reason}" for reason, n in self.reason_counts().items()) + ")"
        return text

    def examples(self, limit: int = 5) -> list[str]:
        """The first rejected rows as ``<file> row N: <reason> (value ...)``, for error messages."""
        return [describe_rejected(self.source, row) for row in self.rejected.slice(0, limit).to_pylist()]


def validate_table(table: pa.Table, kind: str, source: str = "<table>") -> ValidationResult:
    """Conform ``table`` to ``SCHEMAS[kind]`` and split it into valid and quarantined rows.

    Raises :class:`SchemaError` for missing columns or columns whose type cannot be cast.
    Extra columns are dropped; ``valid`` has exactly the schema (column order included).
    Floating-point NaN is treated as null (the pandas convention for missing values).
    """
    if kind not in SCHEMAS:
        raise ValueError(f"unknown table kind {kind!r}; expected one of {sorted(SCHEMAS)}")
    conformed = conform_table(table, SCHEMAS[kind], source)
    reasons = _row_reject_reasons(conformed, kind)
    return _split_by_reason(conformed, reasons, kind, source)


def conform_table(table: pa.Table, schema: pa.Schema, source: str = "<table>") -> pa.Table:
    """Select and cast the schema's columns; raise :class:`SchemaError` on whole-file problems."""
    missing = tuple(name for name in schema.names if name not in table.column_names)
    if missing:
        raise SchemaError(source, f"missing column(s) {', '.join(missing)}", missing)
    columns = [_cast_column(table.column(field.name), field, source) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _cast_column(column: pa.ChunkedArray, field: pa.Field, source: str) -> pa.ChunkedArray:
    actual = column.type
    if not _is_castable_kind(actual, field.type):
        raise _type_error(source, field, actual)
    if pa.types.is_floating(actual):
        column = _nan_to_null(column)
    try:
        return _cast_values(column, field)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _cast_error(source, field, column, str(exc)) from exc


def _cast_values(column: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    if pa.types.is_timestamp(field.type) and _is_stringish(column.type):
        return _parse_timestamp_strings(column)
    return pc.cast(column, options=pc.CastOptions(target_type=field.type, allow_time_truncate=True))


def _cast_error(source: str, field: pa.Field, column: pa.ChunkedArray, detail: str) -> SchemaError:
    """Name the first value that does not cast, with its row number (the whole column's cast does
    not say which one; this runs only on the error path)."""
    for row, value in enumerate(column.to_pylist(), start=1):
        try:
            _cast_values(pa.chunked_array([pa.array([value], type=column.type)]), field)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return SchemaError(source, f"column {field.name} has type {column.type}, expected {field.type}: "
                                       f"row {row}, value {_clip(value)!r} cannot be read", (field.name,))
    return _type_error(source, field, column.type, detail=detail)


def _is_castable_kind(actual: pa.DataType, target: pa.DataType) -> bool:
    """Strict type families: e.g. an int column is never silently read as a timestamp or a string."""
    if pa.types.is_null(actual):
        return True
    if pa.types.is_integer(target):
        return pa.types.is_integer(actual) or pa.types.is_floating(actual)
    if pa.types.is_floating(target):
        return pa.types.is_integer(actual) or pa.types.is_floating(actual) or pa.types.is_decimal(actual)
    if pa.types.is_string(target):
        return _is_stringish(actual)
    if pa.types.is_timestamp(target):
        return pa.types.is_timestamp(actual) or pa.types.is_date(actual) or _is_stringish(actual)
    return actual == target


def _is_stringish(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        return _is_stringish(data_type.value_type)
    return (
        pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_string_view(data_type)
    )


_ZONE_SUFFIX = r"(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)$"


def _parse_timestamp_strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """ISO-8601 strings: with a zone offset they are converted to UTC, without one taken as UTC
    (a column may mix both)."""
    column = column.cast(pa.string())
    zoned = pc.fill_null(pc.match_substring_regex(column, _ZONE_SUFFIX), False)
    with_zone = pc.if_else(zoned, column, pa.scalar(None, pa.string())).cast(TIMESTAMP)
    naive = pc.if_else(zoned, pa.scalar(None, pa.string()), column).cast(pa.timestamp("us"))
    as_utc = pc.cast(naive, options=pc.CastOptions(target_type=TIMESTAMP, allow_time_truncate=True))
    return pc.if_else(zoned, with_zone, as_utc)


def _nan_to_null(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)


def _type_error(source: str, field: pa.Field, actual: pa.DataType, detail: str = "") -> SchemaError:
    message = f"column {field.name} has type {actual}, expected {field.type}"
    if detail:
        message += f" (cannot cast: {detail})"
    return SchemaError(source, message, (field.name,))


# Row rules per kind, checked in order; a row gets the reason of the first rule it breaks.
RowRule = tuple[str, Callable[[pa.Table], pa.Array]]


def _is_null(name: str) -> Callable[[pa.Table], pa.Array]:
    return lambda t: pc.is_null(t.column(name))


def _is_negative(name: str) -> Callable[[pa.Table], pa.Array]:
    return lambda t: pc.fill_null(pc.less(t.column(name), 0), False)


def _not_in(name: str, allowed: tuple[str, ...]) -> Callable[[pa.Table], pa.Array]:
    return lambda t: pc.invert(pc.fill_null(pc.is_in(t.column(name), pa.array(allowed)), False))


def _outside(name: str, low: float, high: float) -> Callable[[pa.Table], pa.Array]:
    return lambda t: pc.fill_null(pc.or_(pc.less(t.column(name), low), pc.greater(t.column(name), high)), False)


def _outside_time_window(name: str) -> Callable[[pa.Table], pa.Array]:
    return lambda t: time_window().outside(t.column(name))


def _id_rules(name: str) -> list[RowRule]:
    return [(f"null {name}", _is_null(name)), (f"negative {name}", _is_negative(name))]


ROW_RULES: dict[str, list[RowRule]] = {
    "events": [
        *_id_rules("user_id"),
        *_id_rules("item_id"),
        ("null event_timestamp", _is_null("event_timestamp")),
        (f"event_timestamp {OUTSIDE_WINDOW}", _outside_time_window("event_timestamp")),
        ("null event_type", _is_null("event_type")),
        ("unknown event_type", _not_in("event_type", EVENT_TYPES)),
        ("rating out of range", _outside("rating", *RATING_RANGE)),
        ("null device", _is_null("device")),
        ("unknown device", _not_in("device", DEVICES)),
    ],
    "users": [
        *_id_rules("user_id"),
        ("null signup_timestamp", _is_null("signup_timestamp")),
    ],
    "items": [
        *_id_rules("item_id"),
        ("null created_timestamp", _is_null("created_timestamp")),
        ("null category", _is_null("category")),
        ("negative price", _is_negative("price")),
    ],
}


def _row_reject_reasons(table: pa.Table, kind: str) -> np.ndarray:
    """Per row: the reason of the first rule it breaks, or None. Vectorised, one pass per rule."""
    reasons = np.full(table.num_rows, None, dtype=object)
    rejected = np.zeros(table.num_rows, dtype=bool)

    def mark(broken: np.ndarray, reason: str) -> None:
        new = broken & ~rejected
        reasons[new] = reason
        rejected[new] = True

    for reason, rule in ROW_RULES[kind]:
        mark(_to_bool_numpy(rule(table)), reason)
    if kind in PRIMARY_KEYS:
        key = PRIMARY_KEYS[kind]
        mark(_duplicated(table.column(key), candidates=~rejected), f"duplicate {key}")
    return reasons


def describe_rejected(source: str, row: dict) -> str:
    """A quarantined row in words: file, row number, reason, column and offending value."""
    return f"{source} row {row[SOURCE_ROW_COLUMN]}: {row[REJECT_REASON_COLUMN]}{_offending_value(row)}"


def _offending_value(row: dict) -> str:
    """`, <column> = <value>` for the column a reject reason names (e.g. `unknown event_type`)."""
    reason = row[REJECT_REASON_COLUMN]
    column = next((name for name in row if name not in (REJECT_REASON_COLUMN, SOURCE_ROW_COLUMN)
                   and name in reason.split()), None)
    return "" if column is None else f", column {column} = {_clip(row[column])!r}"


def _clip(value: object, limit: int = 80) -> object:
    """A value as it may appear in a message: times in ISO 8601, long text cut short."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value


def _to_bool_numpy(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _duplicated(column: pa.ChunkedArray, candidates: np.ndarray) -> np.ndarray:
    """True for every repeat of a key among the candidate rows; the first occurrence wins."""
    keys = pc.fill_null(column, 0).to_numpy(zero_copy_only=False)
    positions = np.flatnonzero(candidates & ~_to_bool_numpy(pc.is_null(column)))
    _, first = np.unique(keys[positions], return_index=True)
    duplicated = np.zeros(len(keys), dtype=bool)
    duplicated[positions] = True
    duplicated[positions[first]] = False
    return duplicated


def _split_by_reason(table: pa.Table, reasons: np.ndarray, kind: str, source: str,
                     source_rows: pa.Array | None = None) -> ValidationResult:
    """Rows whose reason is None are valid; the others are rejected with that reason and their row
    number in the input (`source_rows`: those of `table`'s rows, default 1..n)."""
    if source_rows is None:
        source_rows = pa.array(np.arange(1, table.num_rows + 1, dtype=np.int64))
    reason_array = pa.array(reasons, type=pa.string())
    bad = pc.is_valid(reason_array)
    valid = table.filter(pc.invert(bad))
    rejected = (table.filter(bad).append_column(REJECT_REASON_COLUMN, reason_array.filter(bad))
                .append_column(SOURCE_ROW_COLUMN, source_rows.filter(bad)))
    return ValidationResult(kind=kind, source=source, valid=valid, rejected=rejected,
                            valid_rows=source_rows.filter(pc.invert(bad)))


def reject_unknown_keys(result: ValidationResult, column: str, known: pa.Array) -> ValidationResult:
    """Move rows of ``result.valid`` whose ``column`` is not in ``known`` to the rejected rows."""
    unknown = _to_bool_numpy(pc.invert(pc.is_in(result.valid.column(column), known)))
    reasons = np.full(result.valid.num_rows, None, dtype=object)
    reasons[unknown] = f"unknown {column}"
    extra = _split_by_reason(result.valid, reasons, result.kind, result.source, result.valid_rows)
    rejected = pa.concat_tables([result.rejected, extra.rejected]).sort_by(SOURCE_ROW_COLUMN)
    return ValidationResult(kind=result.kind, source=result.source, valid=extra.valid, rejected=rejected,
                            valid_rows=extra.valid_rows)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_table_atomic(table: pa.Table, path: str | Path, durable: bool = False) -> Path:
    """Write one parquet file atomically (`core.atomic.atomic_path`). ``durable``: the file and then
    its directory entry are fsync'd, so a crash right after the return cannot lose it."""
    with atomic_path(path, durable=durable) as tmp:
        pq.write_table(table, tmp, coerce_timestamps="us", allow_truncated_timestamps=True)
    return Path(path)


def event_dates(timestamps: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """UTC calendar date (numpy ``datetime64[D]``) of each timestamp."""
    micros = pc.cast(timestamps, pa.int64()).to_numpy(zero_copy_only=False)
    return micros.astype("datetime64[us]").astype("datetime64[D]")


def write_events_partitioned(table: pa.Table, events_dir: str | Path, part_name: str,
                             durable: bool = False) -> list[Path]:
    """Write ``events_dir/event_date=YYYY-MM-DD/<part_name>.parquet`` for each UTC date present.

    Rows are conformed to EVENTS_SCHEMA (so ``event_date`` is never stored in the files: it is the
    directory partition) and sorted by ``event_timestamp`` within each file. Writing the same
    ``part_name`` again replaces that part, which makes re-runs idempotent.
    """
    table = conform_table(table, EVENTS_SCHEMA, "<events>")
    if table.num_rows == 0:
        return []
    if table.column("event_timestamp").null_count:
        raise ValueError("events with a null event_timestamp cannot be partitioned; validate them first")
    dates = event_dates(table.column("event_timestamp"))
    written = []
    for day in np.unique(dates):
        part = table.filter(pa.array(dates == day)).sort_by("event_timestamp")
        path = Path(events_dir) / f"{EVENT_DATE_COLUMN}={day}" / f"{part_name}.parquet"
        written.append(write_table_atomic(part, path, durable=durable))
    return written






# --------------------------------------------------------------------------------------------
# Ingestion of user-supplied files
# --------------------------------------------------------------------------------------------

RAW_KINDS: tuple[str, ...] = ("events", "users", "items")
RAW_SUBDIRS: dict[str, str] = {"events": "events", "users": "users", "items": "items"}


class EmptyIngestError(ValueError):
    """The new data has no valid rows of a kind that the raw data holds now."""


def ingest(
    events_path: str | Path,
    users_path: str | Path,
    items_path: str | Path,
    raw_dir: str | Path,
    quarantine_dir: str | Path,
    allow_empty: bool = False,
) -> dict[str, dict[str, int]]:
    """Validate user-supplied files and write them into the canonical layout under ``raw_dir``.

    The new data replaces what ``raw_dir`` held (users, items and all event partitions), so
    events always refer to the users/items written with them. Events whose user or item is not
    in the (valid) users / items are rejected as ``unknown user_id`` / ``unknown item_id``.
    Rejected rows go to ``quarantine_dir/<kind>.parquet`` with their reason and input row number
    (the quarantine folder is replaced as a whole, so no file of an earlier run stays).

    All or nothing: everything is validated, then written into staging folders, then swapped in
    by renames; any failure before the swap leaves ``raw_dir`` and ``quarantine_dir`` as they were.
    A kind with no valid rows does not replace existing data (:class:`EmptyIngestError`) unless
    ``allow_empty``. Returns ``{kind: {"valid": n, "rejected": n}}``.
    """
    raw_dir, quarantine_dir = Path(raw_dir), Path(quarantine_dir)
    results = validate_files({"events": events_path, "users": users_path, "items": items_path})
    if not allow_empty:
        _refuse_empty(results, raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    quarantine_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_raw, staging_quarantine = staging_directory(raw_dir), staging_directory(quarantine_dir)
    try:
        _write_raw(results, staging_raw)
        for kind, result in results.items():
            write_table_atomic(result.rejected, staging_quarantine / f"{kind}.parquet")
        swap_directories([(staging_raw / RAW_SUBDIRS[k], raw_dir / RAW_SUBDIRS[k]) for k in RAW_KINDS])
        replace_directory(staging_quarantine, quarantine_dir)
    finally:
        shutil.rmtree(staging_raw, ignore_errors=True)
        shutil.rmtree(staging_quarantine, ignore_errors=True)
    return {kind: {"valid": r.n_valid, "rejected": r.n_rejected} for kind, r in results.items()}


def validate_files(paths: dict[str, str | Path]) -> dict[str, ValidationResult]:
    """Every file validated (users and items first: events must refer to their valid rows)."""
    users = _validate_file(paths["users"], "users")
    items = _validate_file(paths["items"], "items")
    events = _validate_file(paths["events"], "events")
    events = reject_unknown_keys(events, "user_id", users.valid.column("user_id").combine_chunks())
    events = reject_unknown_keys(events, "item_id", items.valid.column("item_id").combine_chunks())
    return {"events": events, "users": users, "items": items}


def _refuse_empty(results: dict[str, ValidationResult], raw_dir: Path) -> None:
    for kind, result in results.items():
        if result.n_valid == 0 and _holds_data(raw_dir / RAW_SUBDIRS[kind]):
            why = "it has no rows" if result.n_total == 0 else f"all {result.n_total} rows are invalid"
            examples = "; ".join(result.examples(3))
            raise EmptyIngestError(
                f"{result.source}: {why}; refusing to replace the {kind} in {raw_dir} with nothing "
                f"(pass --allow-empty to do so){': ' + examples if examples else ''}")


def _holds_data(directory: Path) -> bool:
    return directory.is_dir() and any(p.name.endswith(".parquet") and not p.name.startswith((".", "_"))
                                      for p in directory.rglob("*.parquet"))


def _write_raw(results: dict[str, ValidationResult], target: Path) -> None:
    write_events_partitioned(results["events"].valid, target / RAW_SUBDIRS["events"], part_name="part-00000")
    (target / RAW_SUBDIRS["events"]).mkdir(exist_ok=True)  # no events at all: an empty log
    write_table_atomic(results["users"].valid, target / RAW_SUBDIRS["users"] / "users.parquet")
    write_table_atomic(results["items"].valid, target / RAW_SUBDIRS["items"] / "items.parquet")




def _validate_file(path: str | Path, kind: str) -> ValidationResult:
    return validate_table(read_raw_file(path), kind, source=str(path))
