"""The Feast contract: the workflow of Feast's own `templates/*/test_workflow.py` (apply ->
`get_historical_features` -> materialize -> `get_online_features` -> push -> read back), through
Feast's public API and CLI, on every configuration this project promises:

* `shipped`: feature_store.yaml as committed (the project's offline store, engine and online store);
* `builtin`: Feast's own Spark offline store, local engine and Redis store, which the shipped
  extensions must equal value for value;
* `redis_cluster`: the shipped stores on a real three-node Redis Cluster (`redis_type: redis_cluster`);
* `sql_registry`: the shipped stores with Feast's SQL registry on the local PostgreSQL.

Every configuration must give the same training rows, online values and pushed values; this is the
early warning for a Feast upgrade (see `feast_ext/compat.py`). The serving layer's direct Redis
reads (`serving.features.OnlineFeatures`) are checked against `get_online_features` on each too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from feast.data_source import PushMode

from core.environment import redis_reachable
from feast_ext import repo as feast_repo
from tests.conftest import copy_data_dir, utc

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not redis_reachable(), reason="needs the real Redis at REDIS_URL")]

CONFIGS = ("shipped", "builtin", "redis_cluster", "sql_registry")
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432"
REQUEST_TIMES = [utc(2026, 1, 3), utc(2026, 1, 5, 12), utc(2026, 1, 8)]
RANKING_REFS = ["user_daily:view_count_7d", "user_daily:ctr_30d", "user_profile:age",
                "item_daily:popularity_7d", "item_profile:item_category", "item_profile:price"]
USER_REFS = ["user_daily:view_count_7d", "user_daily:purchase_count_30d", "user_profile:gender",
             "user_recent_history:recent_item_ids"]
PUSHED_AT = utc(2026, 1, 9, 10)


@dataclass
class WorkflowResult:
    training_rows: pd.DataFrame | None  # None where the offline path is the shipped one's
    online: dict[str, list]
    direct_reads: list[dict]
    feast_reads: list[dict]
    pushed: dict[str, list]
    online_after_push: dict[str, list]  # the first read again, after the push (user 2 is pushed)
    views_written: dict[int, list[str]]  # per user, the views with a row in Redis (failure messages)
    written_by_materialize: dict[int, list[str]]  # the same, right after `feast materialize`
    materialize_log: list[str]  # the engine's per-view rows read and written (failure messages)


# -- the services a configuration needs ---------------------------------------------------------


@contextmanager
def redis_cluster(root: Path) -> Iterator[str]:
    """Three local cluster nodes on free ports (no persistence), children of the test, stopped
    afterwards; yields Feast's cluster connection string."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for the Redis Cluster workflow")
    nodes: list[subprocess.Popen] = []
    try:
        ports = free_ports(3)
        for port in ports:
            node = root / f"node-{port}"
            node.mkdir(parents=True)
            nodes.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node / "nodes.conf"), "--dir", str(node), "--save", "",
                 "--appendonly", "no", "--logfile", str(node / "redis.log")]))
        for port in ports:
            _wait_until(lambda: _redis_cli(port, "ping") == "PONG", f"redis node on {port} did not start")
        addresses = [f"127.0.0.1:{port}" for port in ports]
        subprocess.run(["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        # every node, not just one: a node that has not yet learnt the slot map answers CLUSTERDOWN
        _wait_until(lambda: all("cluster_state:ok" in _redis_cli(port, "cluster", "info") and
                                _redis_cli(port, "cluster", "info").count("cluster_known_nodes:3")
                                for port in ports),
                    "the Redis Cluster did not reach cluster_state:ok on every node")
        yield ",".join(addresses)
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(timeout=30)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        # a cluster node also listens on its port + 10000 (the cluster bus)
        ports = [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    if any(port + 10_000 > 65_535 for port in ports):
        return free_ports(count)
    return ports


def _redis_cli(port: int, *args: str) -> str:
    done = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)
    return done.stdout.strip()


def _wait_until(condition, message: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(0.1)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the SQL registry, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is needed for the SQL registry")
    name = f"feast_registry_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True,
                                connect_timeout=3)
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 for the SQL registry ({error.__class__.__name__})")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{POSTGRES_URL}/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# -- configurations -----------------------------------------------------------------------------


def configure(repo: Path, config_name: str, cluster: str | None, registry_url: str | None) -> None:
    def change(config: dict) -> None:
        if config_name == "builtin":
            config["offline_store"]["type"] = "spark"
            config["offline_store"].pop("local_source_reader", None)
            config["batch_engine"] = {"type": "local"}
            config["online_store"] = {"type": "redis", "connection_string": config["online_store"]["connection_string"]}
        elif config_name == "redis_cluster":
            config["online_store"]["redis_type"] = "redis_cluster"
            config["online_store"]["connection_string"] = cluster
        elif config_name == "sql_registry":
            config["registry"] = {"registry_type": "sql", "path": registry_url, "cache_ttl_seconds": 60,
                                  "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True}}
    feast_repo.edit_config(repo, change)


def run_workflow(repo: Path, env: dict[str, str], spark, offline: bool) -> WorkflowResult:
    from serving.features import OnlineFeatures

    feast_repo.apply(repo, env)
    store = feast_repo.feature_store(repo)
    assert {s.name for s in store.list_feature_services()} == {"ranking", "retrieval"}

    training_rows = training_set(store, spark) if offline else None

    materialize_log = materialize_logged(repo, env)
    store = feast_repo.feature_store(repo)
    written_by_materialize = views_written(store, [1, 2, 999])
    users = [{"user_id": 1}, {"user_id": 2}, {"user_id": 999}]
    online = store.get_online_features(features=USER_REFS, entity_rows=users).to_dict()
    direct_reads = OnlineFeatures(store).users([1, 2, 999])
    feast_reads = OnlineFeatures(store, via_feast=True).users([1, 2, 999])

    store.push("user_activity_push", pd.DataFrame({
        "user_id": [2], "recent_item_ids": [[12, 11, 10]], "last_event_timestamp": [PUSHED_AT],
        "event_timestamp": [PUSHED_AT]}), to=PushMode.ONLINE)
    pushed = store.get_online_features(features=["user_recent_history:recent_item_ids",
                                                 "user_recent_history:last_event_timestamp"],
                                       entity_rows=[{"user_id": 2}]).to_dict()
    online_after_push = store.get_online_features(features=USER_REFS, entity_rows=users).to_dict()
    return WorkflowResult(training_rows, online, direct_reads, feast_reads, pushed, online_after_push,
                          views_written(store, [1, 2, 999]), written_by_materialize, materialize_log)


def materialize_logged(repo: Path, env: dict[str, str]) -> list[str]:
    """`feast materialize` at log level INFO; the engine's lines (rows read and written per view),
    which failure messages quote."""
    output = feast_repo.materialize(datetime(1970, 1, 1), datetime(2026, 1, 8), repo, env, log_level="INFO")
    return [line for line in output.splitlines() if "feast_ext" in line or " rows " in line]


def views_written(store, user_ids: list[int]) -> dict[int, list[str]]:
    """Per user, the views whose row its Redis hash holds (the `_ts:<view>` fields)."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    config = store.config
    client = store._get_provider().online_store._get_client(config.online_store)  # noqa: SLF001
    out = {}
    for user in user_ids:
        key = _redis_key(config.project, EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=user)]),
                         entity_key_serialization_version=config.entity_key_serialization_version)
        out[user] = sorted(f.decode()[4:] for f in client.hkeys(key) if f.startswith(b"_ts:"))
    return out


def training_set(store, spark) -> pd.DataFrame:
    entity_rows = pd.DataFrame([{"user_id": u, "item_id": i, "event_timestamp": t}
                                for u in (1, 2) for i in (10, 11, 12) for t in REQUEST_TIMES])
    entity_df = spark.createDataFrame(entity_rows)
    rows = store.get_historical_features(entity_df=entity_df, features=RANKING_REFS).to_df()
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)  # Spark hands back naive UTC
    return rows.sort_values(["user_id", "item_id", "event_timestamp"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def workflows(hand_built_data, spark, tmp_path_factory) -> dict[str, WorkflowResult]:
    root = tmp_path_factory.mktemp("workflow")
    results: dict[str, WorkflowResult] = {}
    with redis_cluster(root / "cluster") as cluster, postgres_database() as registry_url:
        for name in CONFIGS:
            settings = copy_data_dir(hand_built_data, root / name)
            project = f"workflow_{name}_{uuid.uuid4().hex[:6]}"
            repo = feast_repo.make_isolated_repo(root / name / "repo", project, settings.data_dir)
            configure(repo, name, cluster, registry_url)
            env = {"RECSYS_DATA_DIR": str(settings.data_dir)}
            try:
                # the online store does not take part in point-in-time joins
                results[name] = run_workflow(repo, env, spark, offline=name != "redis_cluster")
            finally:
                if name != "redis_cluster":
                    feast_repo.delete_online_rows(project)
    return results


# -- the contract -------------------------------------------------------------------------------


def test_shipped_workflow_gives_point_in_time_rows_and_online_values(workflows):
    shipped = workflows["shipped"]
    rows = shipped.training_rows
    assert len(rows) == 2 * 3 * len(REQUEST_TIMES)
    # item 12 is created on Jan 4: unknown to a request on Jan 3, known from Jan 5
    item12 = rows[rows["item_id"] == 12].set_index(["user_id", "event_timestamp"])["item_category"]
    assert pd.isna(item12.loc[(1, pd.Timestamp(REQUEST_TIMES[0]))])
    assert item12.loc[(1, pd.Timestamp(REQUEST_TIMES[1]))] == "books"
    assert shipped.online["recent_item_ids"][0] == [12, 11, 11, 10, 10]
    assert shipped.online["view_count_7d"][2] is None  # unknown user
    assert shipped.pushed["recent_item_ids"] == [[12, 11, 10]]
    assert shipped.pushed["last_event_timestamp"][0] == PUSHED_AT


@pytest.mark.parametrize("name", [c for c in CONFIGS if c != "shipped"])
def test_every_configuration_gives_the_shipped_results(workflows, name):
    shipped, other = workflows["shipped"], workflows[name]
    if other.training_rows is not None:
        pd.testing.assert_frame_equal(other.training_rows, shipped.training_rows, check_dtype=False)
    context = (f"views with a row in Redis: {other.views_written} (shipped: {shipped.views_written}); "
               f"right after materialize: {other.written_by_materialize}; "
               f"read again after the push: {other.online_after_push}; engine log: {other.materialize_log}")
    assert other.online == shipped.online, context
    assert other.pushed == shipped.pushed, context
    assert other.online_after_push == shipped.online_after_push, context


@pytest.mark.parametrize("name", CONFIGS)
def test_serving_direct_reads_equal_get_online_features(workflows, name):
    """The request path's reads, direct (the default) and through Feast (RECSYS_SERVING_ONLINE_READS=feast)."""
    result = workflows[name]
    assert result.direct_reads == result.feast_reads
    for index, row in enumerate(result.direct_reads):
        for ref in USER_REFS:
            feature = ref.split(":")[1]
            assert row[ref.replace(":", "__")] == result.online[feature][index], (name, index, feature)
