"""The fast materialization path (DuckDB latest-row reads, ArrowMaterializationEngine and
FastRedisOnlineStore, as shipped in feature_store.yaml) on the real stack: generated data with some
null cells, the real Spark, Redis and `feast` CLI. It must leave Redis byte for byte as Feast's
built-in path (Spark's latest-row query, local engine, Redis store) does, never overwrite a newer
(pushed) row, and work incrementally."""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from feast import RepoConfig
from feast.data_source import PushMode
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

from core.environment import redis_client, redis_reachable
from core.online_marker import is_bookkeeping_key, read_marker, write_token_key
from core.settings import Settings
from feast_ext import repo as feast_repo
from feast_ext.local_read import DuckDBLatestRowsJob, local_parquet_dir
from feast_ext.offline_store import AsofSparkOfflineStore
from tests.conftest import utc
from training.data.synthetic import GeneratorConfig, generate
from training.features.pipeline import run_feature_pipeline

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_reachable(), reason="needs the real Redis at REDIS_URL")]

START, END = datetime(1970, 1, 1), datetime(2100, 1, 1)
VIEW_KEYS = {"user_daily": ["user_id"], "item_daily": ["item_id"], "user_category": ["user_id", "category"],
             "user_recent_history": ["user_id"], "user_profile": ["user_id"], "item_profile": ["item_id"]}


def _with_nulls(table_dir: Path, nulls: dict[str, int]) -> None:
    """Rewrite a feature table with `column` set to null on every n-th row."""
    table = pq.read_table(table_dir)
    for column, every in nulls.items():
        mask = pa.array(np.arange(table.num_rows) % every == 0)
        index = table.schema.get_field_index(column)
        table = table.set_column(index, column, pa.compute.if_else(mask, pa.nulls(table.num_rows, table.field(column).type),
                                                                   table.column(column)))
    shutil.rmtree(table_dir)
    table_dir.mkdir()
    pq.write_table(table, table_dir / "part-0.parquet", coerce_timestamps="us")


def _builtin_config(repo: Path) -> None:
    """Spark's latest-row query, Feast's own engine and Redis store, for comparison."""
    def builtin(config: dict) -> None:
        config["offline_store"]["local_source_reader"] = "spark"
        config["batch_engine"] = {"type": "local"}
        config["online_store"] = {"type": "redis", "connection_string": config["online_store"]["connection_string"]}
    feast_repo.edit_config(repo, builtin)


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("fastmat")
    settings = Settings(data_dir=root / "data")
    generate(GeneratorConfig(n_events=20_000, n_users=300, n_items=80, n_days=10, seed=7), settings.raw_dir,
             progress=False)
    run_feature_pipeline(spark, settings, progress=False)
    _with_nulls(settings.features_dir / "user_profile", {"age": 3, "gender": 5})
    _with_nulls(settings.features_dir / "item_profile", {"price": 4, "title": 6})
    env = {"RECSYS_DATA_DIR": str(settings.data_dir)}
    tag = uuid.uuid4().hex[:8]
    repos = {name: feast_repo.make_isolated_repo(root / name, f"{name}mat_{tag}", root / f"registry_{name}")
             for name in ("fast", "builtin", "incremental")}
    _builtin_config(repos["builtin"])
    try:
        for name, repo in repos.items():
            feast_repo.apply(repo, env, checked=False)
        for name in ("fast", "builtin"):
            feast_repo.materialize(START, END, repos[name], env)
        yield settings, repos, env
    finally:
        for repo in repos.values():
            feast_repo.delete_online_rows(feast_repo.project_name(repo))


def _hashes(repo: Path) -> dict[bytes, dict[bytes, bytes]]:
    """Every entity hash of the repo's project, keyed without the project suffix (the
    materialization marker and the write tokens, string keys, left out)."""
    project = feast_repo.project_name(repo).encode()
    client = redis_client()
    return {key[:-len(project)]: client.hgetall(key)
            for key in client.scan_iter(match=b"*" + project, count=10_000)
            if not is_bookkeeping_key(key)}


def test_only_the_project_engine_marks_the_store_materialized(world):
    _, repos, _ = world
    client = redis_client()
    marker = read_marker(client, feast_repo.project_name(repos["fast"]))
    assert marker is not None and len(marker["views"]) == 6 and marker["end_time"].startswith(str(END.date()))
    assert read_marker(client, feast_repo.project_name(repos["builtin"])) is None  # Feast's own engine


def _latest(settings: Settings, view: str) -> pd.DataFrame:
    df = pd.read_parquet(settings.features_dir / view)
    return df.sort_values("event_timestamp").groupby(VIEW_KEYS[view]).tail(1)


def test_fast_path_leaves_redis_exactly_as_feasts_own_path(world):
    settings, repos, _ = world
    fast, builtin = _hashes(repos["fast"]), _hashes(repos["builtin"])
    entities = {tuple(row) for view in ("user_daily", "user_recent_history", "user_profile")
                for row in _latest(settings, view)[["user_id"]].itertuples(index=False)}
    assert len(fast) >= len(entities) > 100
    assert fast == builtin


@pytest.mark.parametrize("view", list(VIEW_KEYS))
def test_duckdb_latest_rows_equal_sparks_within_date_bounds(world, view):
    settings, repos, _ = world
    fs = feast_repo.feature_store(repos["builtin"])
    assert fs.config.offline_store.local_source_reader == "spark"
    fv = fs.get_feature_view(view)
    times = pd.read_parquet(settings.features_dir / view, columns=["event_timestamp"])["event_timestamp"]
    # Bounds inside the data, so the timestamp and date partition filters both matter.
    start = (times.min() + pd.Timedelta(days=2)).to_pydatetime()
    end = (times.max() - pd.Timedelta(days=2, hours=6)).to_pydatetime()
    args = (list(VIEW_KEYS[view]), [f.name for f in fv.features], fv.batch_source.timestamp_field,
            fv.batch_source.created_timestamp_column or None, start, end)
    spark = AsofSparkOfflineStore.pull_latest_from_table_or_query(fs.config, fv.batch_source, *args).to_arrow()
    duck = DuckDBLatestRowsJob(local_parquet_dir(fv.batch_source), fv.batch_source, *args).to_arrow()
    assert duck.schema.names == spark.schema.names
    assert duck.column("event_timestamp").type == spark.column("event_timestamp").type
    order = [(k, "ascending") for k in VIEW_KEYS[view]]
    expected, got = spark.sort_by(order).to_pandas(), duck.sort_by(order).to_pandas()
    assert len(got) > 0
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert got["event_timestamp"].between(start, end).all()


def test_duckdb_reader_is_refused_for_a_source_it_cannot_read(world):
    _, repos, _ = world
    fs = feast_repo.feature_store(repos["fast"])
    assert fs.config.offline_store.local_source_reader == "auto"
    table_source = SparkSource(name="warehouse_table", table="db.user_daily", timestamp_field="event_timestamp")
    assert local_parquet_dir(table_source) is None
    assert local_parquet_dir(SparkSource(name="s3", path="s3a://bucket/user_daily", file_format="parquet",
                                         timestamp_field="event_timestamp")) is None
    config = yaml.safe_load((repos["fast"] / "feature_store.yaml").read_text())
    config["offline_store"]["local_source_reader"] = "duckdb"
    config = RepoConfig(**config, repo_path=repos["fast"])
    with pytest.raises(ValueError, match="warehouse_table is not one"):
        AsofSparkOfflineStore.pull_latest_from_table_or_query(config, table_source, ["user_id"], ["x"],
                                                              "event_timestamp", None, START, END)


def test_apply_checks_local_sources_without_spark(world, tmp_path):
    from feast.errors import DataSourceNotFoundException

    settings, repos, _ = world
    fs = feast_repo.feature_store(repos["fast"])
    store = AsofSparkOfflineStore()
    store.validate_data_source(fs.config, fs.get_feature_view("user_daily").batch_source)  # readable: no error
    (tmp_path / "empty").mkdir()
    for missing in (tmp_path / "no_such_table", tmp_path / "empty"):
        source = SparkSource(name="missing", path=str(missing), file_format="parquet", timestamp_field="event_timestamp")
        with pytest.raises(DataSourceNotFoundException, match=str(missing)):
            store.validate_data_source(fs.config, source)


def test_null_cells_read_back_as_none_like_feasts_own_path(world):
    settings, repos, _ = world
    users = [{"user_id": int(u)} for u in _latest(settings, "user_profile")["user_id"]]
    items = [{"item_id": int(i)} for i in _latest(settings, "item_profile")["item_id"]]
    for repo in (repos["fast"], repos["builtin"]):
        fs = feast_repo.feature_store(repo)
        profile = fs.get_online_features(features=["user_profile:age", "user_profile:gender"], entity_rows=users).to_dict()
        catalog = fs.get_online_features(features=["item_profile:price", "item_profile:title"], entity_rows=items).to_dict()
        assert None in profile["age"] and None in profile["gender"] and None in catalog["price"] and None in catalog["title"]
        assert sum(v is None for v in profile["age"]) == sum(pd.isna(_latest(settings, "user_profile")["age"]))
    fast, builtin = (feast_repo.feature_store(repos[n]) for n in ("fast", "builtin"))
    features = ["item_profile:price", "item_profile:title", "item_profile:item_category"]
    assert (fast.get_online_features(features=features, entity_rows=items).to_dict()
            == builtin.get_online_features(features=features, entity_rows=items).to_dict())


def test_online_values_equal_latest_offline_rows_for_every_view(world):
    settings, repos, _ = world
    fs = feast_repo.feature_store(repos["fast"])
    for view in VIEW_KEYS:
        latest = _latest(settings, view).head(50)
        names = [f.name for f in fs.get_feature_view(view).features]
        rows = latest[VIEW_KEYS[view]].to_dict("records")
        online = fs.get_online_features(features=[f"{view}:{n}" for n in names], entity_rows=rows).to_df()
        for name in names:
            expected, got = latest[name].tolist(), online[name].tolist()
            if name == "recent_item_ids":
                assert [list(e) for e in expected] == [list(g) for g in got], view
            elif name == "last_event_timestamp":  # Feast keeps UnixTimestamp values in whole seconds
                assert (pd.to_datetime(pd.Series(expected), utc=True).dt.floor("s").tolist()
                        == pd.to_datetime(pd.Series(got), utc=True).tolist()), view
            elif latest[name].dtype == object:
                assert [None if pd.isna(v) else v for v in got] == [None if pd.isna(v) else v for v in expected], name
            else:
                pd.testing.assert_series_equal(pd.Series(got, dtype=float), pd.Series(expected, dtype=float),
                                               check_names=False, obj=f"{view}:{name}")


def test_materialize_never_overwrites_a_newer_pushed_row(world):
    settings, repos, env = world
    fs = feast_repo.feature_store(repos["fast"])
    user = int(_latest(settings, "user_recent_history")["user_id"].iloc[0])
    pushed = pd.DataFrame({"user_id": [user], "recent_item_ids": [[999_001, 999_002]],
                           "last_event_timestamp": [pd.Timestamp(utc(2099, 1, 1))],
                           "event_timestamp": [pd.Timestamp(utc(2099, 1, 1))]})
    fs.push("user_activity_push", pushed, to=PushMode.ONLINE)
    feast_repo.materialize(START, END, repos["fast"], env)
    online = fs.get_online_features(features=["user_recent_history:recent_item_ids"],
                                    entity_rows=[{"user_id": user}]).to_dict()
    assert online["recent_item_ids"] == [[999_001, 999_002]]


def test_materialize_incremental_brings_rows_up_to_date(world):
    settings, repos, env = world
    repo = repos["incremental"]
    daily = pd.read_parquet(settings.features_dir / "user_daily")
    middle = daily["event_timestamp"].min() + (daily["event_timestamp"].max() - daily["event_timestamp"].min()) / 2
    feast_repo.materialize(START, middle.to_pydatetime().replace(tzinfo=None), repo, env)
    early = _hashes(repo)
    feast_repo.materialize_incremental(END - timedelta(days=1), repo, env)
    assert _hashes(repo) == _hashes(repos["builtin"]) != early


def test_proto_fallback_writes_every_record_batch(world):
    """The path Redis Cluster writes take (`_write_with_protos`, Feast's own conversion and write)
    gets a table in many record batches, as DuckDB returns them; Feast's `_convert_arrow_to_proto`
    reads the first batch only, which once lost rows on the cluster at random."""
    from feast_ext.online_store import FastRedisOnlineStore, _Layout

    settings, repos, _ = world
    fast = feast_repo.feature_store(repos["fast"])
    project = f"protos_{uuid.uuid4().hex[:8]}"
    config = fast.config.model_copy(update={"project": project})
    view = fast.get_feature_view("user_daily")
    latest = pa.Table.from_pandas(_latest(settings, "user_daily"), preserve_index=False)
    chunked = pa.Table.from_batches(latest.to_batches(max_chunksize=7))
    assert chunked.num_rows > 100 and len(chunked.to_batches()) > 10
    try:
        FastRedisOnlineStore()._write_with_protos(config, view, chunked)  # noqa: SLF001
        layout = _Layout(config, view)
        fields = [layout.ts_field, *layout.fields.values()]
        client = redis_client()
        written = {key[:-len(project)]: client.hmget(key, fields)
                   for key in client.scan_iter(match=f"*{project}".encode(), count=10_000)
                   if not is_bookkeeping_key(key)}
        expected = {key: [row[f] for f in fields] for key, row in _hashes(repos["fast"]).items()
                    if layout.ts_field in row}
        assert len(written) == chunked.num_rows
        assert written == expected
    finally:
        feast_repo.delete_online_rows(project)


def test_every_write_of_the_project_store_sets_a_new_write_token(world):
    """Readers that keep a copy of a view (serving's item cache) compare these tokens. (Last in
    the module: it writes a newer row, which the comparisons above must not see.)"""
    settings, repos, env = world
    client = redis_client()
    fast, builtin = (feast_repo.project_name(repos[name]) for name in ("fast", "builtin"))
    tokens = {view: client.get(write_token_key(fast, view)) for view in VIEW_KEYS}
    assert all(tokens.values()) and len(set(tokens.values())) == len(VIEW_KEYS)
    assert not any(client.get(write_token_key(builtin, view)) for view in VIEW_KEYS)  # Feast's own store
    store = feast_repo.feature_store(repos["fast"])
    row = _latest(settings, "item_daily").head(1).copy()
    row["event_timestamp"] = pd.Timestamp.now(tz="UTC")
    store.write_to_online_store("item_daily", row)  # Feast's push path: `online_write_batch`
    assert client.get(write_token_key(fast, "item_daily")) not in (None, tokens["item_daily"])
    assert client.get(write_token_key(fast, "user_daily")) == tokens["user_daily"]

