"""Reads of local parquet sources that need no Spark: materialization's latest rows (DuckDB) and
`feast apply`'s source check (the parquet schema, with pyarrow).

`feast materialize` asks the offline store for the latest row per entity key of each view
(`pull_latest_from_table_or_query`). The Spark store answers with a ROW_NUMBER window, which on
one machine costs a JVM start and a full shuffle and sort: measured on the 10M-event benchmark,
Spark took most of the materialization (see the README's benchmark figures). When the source is
plain parquet files on the local disk and Spark runs in local mode, the same query run by DuckDB
(already a dependency) reads the files in-process and returns Arrow directly.

The query is Feast's own, written in DuckDB's dialect: rows with `timestamp_field` between the
start and end dates (inclusive, UTC), the same bounds on the date partition column formatted with
the source's format, and per join key the row with the greatest (timestamp, created timestamp).
Which of two rows with equal timestamps wins is arbitrary in both engines, as in Feast.

Anything else (a table or query source, a table format such as Iceberg, a remote path, a cluster
master) is left to Spark, so moving to a cluster is still configuration only.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import duckdb
import pandas as pd
import pyarrow
import pyarrow.dataset

from feast_ext.compat import check_feast

check_feast()  # before the Feast internals below are imported: a clear message, not an ImportError

from feast.data_source import DataSource
from feast.errors import DataSourceNotFoundException
from feast.feature_view import DUMMY_ENTITY_ID, DUMMY_ENTITY_VAL
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata


def local_parquet_dir(source: DataSource) -> Path | None:
    """The local directory or file of a plain parquet SparkSource, else None."""
    if not isinstance(source, SparkSource) or source.table or source.query or source.table_format:
        return None
    if (source.file_format or "").lower() != "parquet" or not source.path:
        return None
    parsed = urlparse(source.path)
    if parsed.scheme not in ("", "file"):
        return None
    return Path(parsed.path if parsed.scheme else source.path)


def local_parquet_schema(path: Path) -> pyarrow.Schema:
    """The schema of the parquet files under `path` (hive partitions included); like the Spark
    source's check, DataSourceNotFoundException when there is nothing readable there."""
    try:
        schema = pyarrow.dataset.dataset(path, format="parquet", partitioning="hive").schema
    except (OSError, pyarrow.ArrowInvalid) as error:  # FileNotFoundError is an OSError
        raise DataSourceNotFoundException(str(path)) from error
    if not schema.names:
        raise DataSourceNotFoundException(str(path))
    return schema


def spark_is_local(spark_conf: dict[str, str] | None) -> bool:
    master = (spark_conf or {}).get("spark.master", "local[*]")
    return master.startswith("local")


class DuckDBLatestRowsJob(RetrievalJob):
    """The latest row per join key of a local parquet source, read by DuckDB on `to_arrow()`."""

    def __init__(self, path: Path, source: SparkSource, join_key_columns: list[str],
                 feature_name_columns: list[str], timestamp_field: str, created_timestamp_column: str | None,
                 start_date: datetime, end_date: datetime):
        self._path = path
        self._source = source
        self._columns = (join_key_columns, feature_name_columns, timestamp_field, created_timestamp_column)
        self._dates = (start_date, end_date)

    @property
    def full_feature_names(self) -> bool:
        return False

    @property
    def on_demand_feature_views(self) -> list:
        return []

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return None

    def to_sql(self) -> str:
        return self._query()

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def _to_arrow_internal(self, timeout: int | None = None) -> pyarrow.Table:
        with duckdb.connect() as con:
            return _utc(con.sql(self._query()).to_arrow_table())

    def _query(self) -> str:
        join_keys, features, ts, created = self._columns
        mapping = self._source.field_mapping or {}
        timestamps = [ts] + ([created] if created else [])
        selected = [f"{_quote(c)} AS {_quote(mapping.get(c, c))}" for c in [*join_keys, *features, *timestamps]]
        order = ", ".join(f"{_quote(c)} DESC" for c in timestamps)
        partition = f"PARTITION BY {', '.join(_quote(k) for k in join_keys)} " if join_keys else ""
        start, end = self._dates
        conditions = [f"{_quote(ts)} BETWEEN {_timestamp(start)} AND {_timestamp(end)}"]
        date_column, date_format = self._source.date_partition_column, self._source.date_partition_column_format
        if date_column:  # hive partition values stay strings (no type guessing), as compared here
            conditions.append(f"{_quote(date_column)} >= {_literal(start.strftime(date_format))}")
            conditions.append(f"{_quote(date_column)} <= {_literal(end.strftime(date_format))}")
        dummy = "" if join_keys else f", {_literal(DUMMY_ENTITY_VAL)} AS {_quote(DUMMY_ENTITY_ID)}"
        return (f"SELECT {', '.join(selected)}{dummy} FROM {self._scan()} WHERE {' AND '.join(conditions)} "
                f"QUALIFY row_number() OVER ({partition}ORDER BY {order}) = 1")

    def _scan(self) -> str:
        pattern = str(self._path / "**" / "*.parquet") if self._path.is_dir() else str(self._path)
        return f"read_parquet({_literal(pattern)}, hive_partitioning = true, hive_types_autocast = false)"


def _utc(table: pyarrow.Table) -> pyarrow.Table:
    """Time zone-aware columns labelled "UTC", as Spark labels them (DuckDB without its ICU
    extension says "Etc/UTC"; the instants are the same)."""
    fields = [pyarrow.field(f.name, pyarrow.timestamp(f.type.unit, "UTC"), f.nullable)
              if pyarrow.types.is_timestamp(f.type) and f.type.tz else f for f in table.schema]
    return table.cast(pyarrow.schema(fields))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _timestamp(t: datetime) -> str:
    """A TIMESTAMPTZ literal; naive datetimes are UTC, as in Feast's Spark query. DuckDB compares
    it with TIMESTAMP (naive) columns as UTC too, whatever the process's time zone."""
    t = t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)
    return f"TIMESTAMPTZ {_literal(t.strftime('%Y-%m-%d %H:%M:%S.%f+00'))}"
