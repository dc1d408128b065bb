"""Read the raw tables into Spark with schema checks and row quarantine."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from core.schema import DEVICES, EVENT_TYPES, SCHEMAS, SchemaError
from core.time_window import OUTSIDE_WINDOW, time_window

# Spark types each raw column may arrive as; all are cast to the first one.
_ACCEPTED_SPARK_TYPES: dict[pa.DataType, tuple[type, ...]] = {
    pa.int64(): (T.LongType, T.IntegerType, T.ShortType),
    pa.float64(): (T.DoubleType, T.FloatType, T.LongType, T.IntegerType),
    pa.string(): (T.StringType,),
    pa.timestamp("us", tz="UTC"): (T.TimestampType, T.TimestampNTZType),
}
_CAST_TO = {pa.int64(): "bigint", pa.float64(): "double", pa.string(): "string",
            pa.timestamp("us", tz="UTC"): "timestamp"}


def _read_parquet(spark: SparkSession, path: Path, kind: str, **options: str) -> DataFrame:
    if not path.exists():
        raise SchemaError(str(path), f"no {kind} data here. Generate or ingest raw data first "
                          f"(`python -m training generate` or `python -m training ingest`).")
    try:
        reader = spark.read
        for key, value in options.items():
            reader = reader.option(key, value)
        return reader.parquet(str(path))
    except Exception as exc:  # Spark raises AnalysisException / Py4J errors with JVM traces
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SchemaError(str(path), f"cannot read {kind} parquet: {first_line}") from None


def conform(df: DataFrame, kind: str, source: Path) -> DataFrame:
    """Check columns and types against the raw schema; return the columns cast and in order."""
    schema = SCHEMAS[kind]
    present = {f.name: f.dataType for f in df.schema.fields}
    missing = [name for name in schema.names if name not in present]
    if missing:
        raise SchemaError(str(source), f"{kind}: missing column(s) {', '.join(missing)}; "
                          f"expected columns {', '.join(schema.names)}", tuple(missing))
    for field in schema:
        accepted = _ACCEPTED_SPARK_TYPES[field.type]
        if not isinstance(present[field.name], accepted):
            raise SchemaError(str(source), f"{kind}: column '{field.name}' has type "
                              f"{present[field.name].simpleString()}, expected {field.type}", (field.name,))
    return df.select(*[F.col(f.name).cast(_CAST_TO[f.type]).alias(f.name) for f in schema])


def _event_reject_reason() -> Column:
    window = time_window()
    rules = [
        (F.col("user_id").isNull() | (F.col("user_id") < 0), "invalid user_id"),
        (F.col("item_id").isNull() | (F.col("item_id") < 0), "invalid item_id"),
        (F.col("event_timestamp").isNull(), "null event_timestamp"),
        ((F.col("event_timestamp") < F.lit(window.earliest)) | (F.col("event_timestamp") > F.lit(window.latest())),
         f"event_timestamp {OUTSIDE_WINDOW}"),
        (~F.col("event_type").isin(*EVENT_TYPES) | F.col("event_type").isNull(), "unknown event_type"),
        (F.col("rating").isNotNull() & ~F.col("rating").between(1.0, 5.0), "rating outside 1..5"),
        (~F.col("device").isin(*DEVICES) | F.col("device").isNull(), "unknown device"),
    ]
    reason = F.lit(None).cast("string")
    for condition, label in reversed(rules):
        reason = F.when(condition, F.lit(label)).otherwise(reason)
    return reason


def read_events(spark: SparkSession, raw_dir: Path, start: date, end: date,
                quarantine_dir: Path | None = None) -> DataFrame:
    """Valid events with start <= event date < end. Bad rows go to quarantine_dir (counted)."""
    path = raw_dir / "events"
    df = _read_parquet(spark, path, "events", basePath=str(path))
    if "event_date" in df.columns:  # partition pruning: only read the needed days
        df = df.where((F.col("event_date") >= F.lit(start)) & (F.col("event_date") < F.lit(end)))
    df = conform(df, "events", path)
    df = df.where((F.to_date("event_timestamp") >= F.lit(start)) & (F.to_date("event_timestamp") < F.lit(end)))
    checked = df.withColumn("reject_reason", _event_reject_reason())
    if quarantine_dir is not None:
        rejected = checked.where(F.col("reject_reason").isNotNull())
        target = quarantine_dir / f"events_{start.isoformat()}_{end.isoformat()}"
        rejected.write.mode("overwrite").parquet(str(target))
        n_rejected = spark.read.parquet(str(target)).count()
        if n_rejected:
            print(f"[quarantine] {n_rejected} bad event rows written to {target}")
    return checked.where(F.col("reject_reason").isNull()).drop("reject_reason")


def read_users(spark: SparkSession, raw_dir: Path) -> DataFrame:
    path = raw_dir / "users"
    return conform(_read_parquet(spark, path, "users"), "users", path)


def read_items(spark: SparkSession, raw_dir: Path) -> DataFrame:
    path = raw_dir / "items"
    return conform(_read_parquet(spark, path, "items"), "items", path)
