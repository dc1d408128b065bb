"""Benchmark point-in-time training-set builds: Feast's built-in Spark store, the as-of Spark store
(feast_ext.offline_store.AsofSparkOfflineStore) and a DuckDB ASOF JOIN of the same tables.

For each N, an entity dataframe of N (user_id, item_id, category, event_timestamp) rows is drawn
by Spark from the feature tables' keys (the category is the item's) with request times uniform
over the snapshot range, and written to parquet. Each engine then joins the `ranking` feature
service (full feature names) onto it and writes parquet; the table shows seconds, rows/s and
time relative to DuckDB. Both Feast runs use isolated projects and registries under the work
dir, so the data dir's own registry is left alone.

    python benchmarks/training_set.py --rows 1000000 --rows 10000000
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import duckdb
import typer
import yaml
from feast import FeatureStore
from pyspark.sql import DataFrame, SparkSession, Window, WindowSpec
from pyspark.sql import functions as F
from rich.console import Console
from rich.table import Table

from core.settings import get_settings
from feast_ext import repo as feast_repo
from feast_ext.offline_store import STORE_TYPE

console = Console(width=150)
SERVICE = "ranking"
STORE_TYPES = {"builtin": "spark", "asof": STORE_TYPE}


@dataclass(frozen=True)
class ViewSpec:
    """What the DuckDB reference needs to know about one feature view of the service."""

    name: str
    keys: list[str]
    features: list[str]
    ttl_seconds: int
    path: str
    timestamp_field: str


def isolated_store(workdir: Path, data_dir: Path, store: str) -> FeatureStore:
    """`feast apply` a copy of the repo under its own project and registry, with the given store."""
    repo = feast_repo.make_isolated_repo(workdir / f"repo_{store}", f"bench_{store}_{uuid.uuid4().hex[:6]}",
                                         data_dir)
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    config["offline_store"]["type"] = STORE_TYPES[store]
    config["registry"]["path"] = str(workdir / f"registry_{store}.db")
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    feast_repo.apply(repo, {"RECSYS_DATA_DIR": str(data_dir)})
    return feast_repo.feature_store(repo)


def view_specs(store: FeatureStore) -> list[ViewSpec]:
    specs = []
    for projection in store.get_feature_service(SERVICE).feature_view_projections:
        view = store.get_feature_view(projection.name)
        specs.append(ViewSpec(projection.name_to_use(), [c.name for c in view.entity_columns],
                              [f.name for f in projection.features], int(view.ttl.total_seconds()),
                              view.batch_source.path, view.batch_source.timestamp_field))
    return specs


def write_entities(spark: SparkSession, features_dir: Path, rows: int, path: Path, seed: int) -> None:
    """N requests: a random known user, a random known item with its category, a uniform time."""
    users = spark.read.parquet(str(features_dir / "user_profile")).select("user_id").distinct()
    items = spark.read.parquet(str(features_dir / "item_profile")).select("item_id", F.col("item_category")
                                                                            .alias("category"))
    span = spark.read.parquet(str(features_dir / "user_daily")).agg(
        F.min(F.unix_micros("event_timestamp")), F.max(F.unix_micros("event_timestamp"))).first()
    n_users, n_items = users.count(), items.count()
    users = users.withColumn("u", F.row_number().over(_ordered("user_id")) - 1)
    items = items.withColumn("i", F.row_number().over(_ordered("item_id")) - 1)
    requests = spark.range(rows).select(
        F.col("id").alias("request_id"),
        F.floor(F.rand(seed) * n_users).alias("u"), F.floor(F.rand(seed + 1) * n_items).alias("i"),
        F.timestamp_micros((F.lit(span[0]) + F.floor(F.rand(seed + 2) * (span[1] - span[0]))).cast("long"))
        .alias("event_timestamp"))
    (requests.join(F.broadcast(users), "u").join(F.broadcast(items), "i")
     .select("request_id", "user_id", "item_id", "category", "event_timestamp")
     .write.mode("overwrite").parquet(str(path)))


def _ordered(column: str) -> WindowSpec:
    return Window.orderBy(column)  # a few thousand keys: one partition is fine


def feast_run(store: FeatureStore, spark: SparkSession, entities: Path, out: Path) -> None:
    entity_df: DataFrame = spark.read.parquet(str(entities))
    job = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(SERVICE),
                                        full_feature_names=True)
    job.to_spark_df().write.mode("overwrite").parquet(str(out))


def duckdb_query(specs: list[ViewSpec], entities: Path) -> str:
    """One ASOF LEFT JOIN per view on its keys and `request time >= row time`; a joined row older
    than the view's TTL (ttl 0: none) gives nulls, as in Feast."""
    joins, columns = [], ["e.*"]
    for i, spec in enumerate(specs):
        alias = f"v{i}"
        cols = ", ".join(f'"{c}"' for c in [*spec.keys, *spec.features])
        source = (f"(SELECT {cols}, \"{spec.timestamp_field}\" AS __ts "
                  f"FROM read_parquet('{spec.path}/**/*.parquet', hive_partitioning = true))")
        keys = " AND ".join(f'e."{k}" = {alias}."{k}"' for k in spec.keys)
        joins.append(f"ASOF LEFT JOIN {source} {alias} ON {keys} AND e.event_timestamp >= {alias}.__ts")
        fresh = (f"{alias}.__ts >= e.event_timestamp - INTERVAL {spec.ttl_seconds} SECOND"
                 if spec.ttl_seconds else "TRUE")
        columns += [f'CASE WHEN {fresh} THEN {alias}."{f}" END AS "{spec.name}__{f}"' for f in spec.features]
    return (f"SELECT {', '.join(columns)} FROM read_parquet('{entities}/*.parquet') e\n" + "\n".join(joins))


def duckdb_run(specs: list[ViewSpec], entities: Path, out: Path, threads: int, memory: str) -> None:
    with duckdb.connect() as con:
        con.execute(f"SET threads = {threads}; SET memory_limit = '{memory}'; SET TimeZone = 'UTC'")
        con.execute(f"COPY ({duckdb_query(specs, entities)}) TO '{out}' (FORMAT parquet)")


def mismatches(specs: list[ViewSpec], reference: Path, other: Path) -> int:
    """Rows of `other` whose features differ from DuckDB's (joined on request_id)."""
    features = [f'"{s.name}__{f}"' for s in specs for f in s.features]
    differs = " OR ".join(f"r.{c} IS DISTINCT FROM o.{c}" for c in features)
    with duckdb.connect() as con:
        return con.execute(f"SELECT count(*) FROM read_parquet('{reference}') r "
                           f"FULL JOIN read_parquet('{other}/*.parquet') o USING (request_id) "
                           f"WHERE r.request_id IS NULL OR o.request_id IS NULL OR {differs}").fetchone()[0]


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main(
    rows: list[int] = typer.Option([1_000_000, 10_000_000], help="entity rows (repeat the option)"),
    data_dir: Path = typer.Option(None, help="data dir with features/ (default: the repo's data/)"),
    skip_builtin_above: int = typer.Option(2_000_000, help="skip Feast's built-in store above N rows"),
    workdir: Path = typer.Option(None, help="where to write (default: a temp dir, removed after)"),
    duckdb_threads: int = typer.Option(os.cpu_count() or 2, help="DuckDB threads (Spark uses local[*])"),
    duckdb_memory: str = typer.Option("8GB"),
    verify: bool = typer.Option(True, help="count rows where the Feast outputs differ from DuckDB's"),
    seed: int = typer.Option(42),
) -> None:
    from training.spark import get_spark

    data_dir = (data_dir or get_settings().data_dir).resolve()
    features_dir = data_dir / "features"
    if not features_dir.exists():
        raise SystemExit(f"{features_dir} not found: run `make demo` or `python -m training generate` "
                         f"and `python -m training features` (with RECSYS_DATA_DIR) first")
    root = workdir or Path(tempfile.mkdtemp(prefix="recsys-pit-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    spark = get_spark("pit-benchmark")
    try:
        stores = {name: isolated_store(root, data_dir, name) for name in STORE_TYPES}
        specs = view_specs(stores["asof"])
        warm = root / "entities_warmup"
        write_entities(spark, features_dir, 10_000, warm, seed)
        for name, store in stores.items():  # JIT, file listings, registry caches
            feast_run(store, spark, warm, root / f"warmup_{name}")
        table = Table(title=f"Point-in-time join of the `{SERVICE}` service ({len(specs)} views, "
                            f"{sum(len(s.features) for s in specs)} features) from {data_dir}")
        for column in ("rows", "engine", "seconds", "rows/s", "x DuckDB time", "rows differing from DuckDB"):
            table.add_column(column, justify="left" if column == "engine" else "right")
        for n in rows:
            run_size(n, spark, stores, specs, features_dir, root, table, skip_builtin_above,
                     duckdb_threads, duckdb_memory, verify, seed)
        console.print(table)
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def run_size(n: int, spark: SparkSession, stores: dict[str, FeatureStore], specs: list[ViewSpec],
             features_dir: Path, root: Path, table: Table, skip_builtin_above: int, threads: int,
             memory: str, verify: bool, seed: int) -> None:
    entities = root / f"entities_{n}"
    console.print(f"[bold]{n:,} rows[/]: writing the entity dataframe ...")
    write_entities(spark, features_dir, n, entities, seed)
    reference = root / f"duckdb_{n}.parquet"
    console.print("  DuckDB ASOF JOIN ...")
    base = timed(lambda: duckdb_run(specs, entities, reference, threads, memory))
    table.add_row(f"{n:,}", "DuckDB ASOF JOIN (reference)", f"{base:.1f}", f"{n / base:,.0f}", "1.0", "")
    for name, label in (("asof", "Feast AsofSparkOfflineStore"), ("builtin", "Feast built-in Spark store")):
        if name == "builtin" and n > skip_builtin_above:
            table.add_row(f"{n:,}", label, "skipped", "", "", f"above --skip-builtin-above {skip_builtin_above:,}")
            continue
        out = root / f"{name}_{n}"
        console.print(f"  {label} ...")
        seconds = timed(lambda: feast_run(stores[name], spark, entities, out))
        differing = f"{mismatches(specs, reference, out):,}" if verify else ""
        table.add_row(f"{n:,}", label, f"{seconds:.1f}", f"{n / seconds:,.0f}", f"{seconds / base:.1f}", differing)
        shutil.rmtree(out, ignore_errors=True)
    reference.unlink(missing_ok=True)
    shutil.rmtree(entities, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
