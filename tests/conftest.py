"""Shared fixtures: one local SparkSession per test run, tiny hand-built raw datasets and their
feature tables."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from core.schema import SCHEMAS, write_events_partitioned, write_table_atomic
from core.settings import Settings

# The modules whose tests use the session's trained world (about three minutes to build). Under
# `make test` (pytest-xdist, `--dist loadfile`) they run in one process, so the world is built once;
# every other module is a unit of its own. A module that starts using the world must be listed here:
# collection fails otherwise (pytest_collection_modifyitems below).
TRAINED_WORLD_MODULES = ("tests/serving/", "tests/feast/test_feast_ui.py",
                         "tests/training/test_training_pipeline.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with the trained world's modules as one unit. (pytest-xdist's own
    `--dist loadgroup` cannot group under pytest 9: it marks items through `item._nodeid`, which
    pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedWorldScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "trained_world" if module.startswith(TRAINED_WORLD_MODULES) else module

    return SharedWorldScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    unlisted = sorted({item.nodeid.split("::")[0] for item in items
                       if "trained_world" in item.fixturenames and not item.nodeid.startswith(TRAINED_WORLD_MODULES)})
    if unlisted:
        raise pytest.UsageError(f"these modules use the trained world but are not in tests/conftest.py's "
                                f"TRAINED_WORLD_MODULES (they would build it again): {', '.join(unlisted)}")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def spark():
    from training.spark import get_spark

    session = get_spark("tests")
    yield session


def write_raw(raw_dir: Path, events: list[dict], users: list[dict], items: list[dict]) -> None:
    """Write hand-built rows in the canonical raw layout."""
    if events:
        table = pa.Table.from_pylist(events, schema=SCHEMAS["events"])
        write_events_partitioned(table, raw_dir / "events", "part-00000")
    write_table_atomic(pa.Table.from_pylist(users, schema=SCHEMAS["users"]), raw_dir / "users" / "users.parquet")
    write_table_atomic(pa.Table.from_pylist(items, schema=SCHEMAS["items"]), raw_dir / "items" / "items.parquet")


@dataclass
class FeastWorld:
    store: object  # feast.FeatureStore
    settings: Settings
    repo: Path
    env: dict[str, str]


@pytest.fixture(scope="session")
def hand_built_data(spark, tmp_path_factory) -> Path:
    """The hand-built events of tests/features and the feature tables the Spark jobs make of them,
    built once per session. Tests use a copy (`copy_data_dir`), which they may change."""
    from tests.features.test_feature_jobs import EVENTS, ITEMS, USERS
    from training.features.pipeline import run_feature_pipeline

    settings = Settings(data_dir=tmp_path_factory.mktemp("hand_built") / "data")
    write_raw(settings.raw_dir, EVENTS, USERS, ITEMS)
    run_feature_pipeline(spark, settings, progress=False)
    return settings.data_dir


def copy_data_dir(template: Path, root: Path) -> Settings:
    """Settings over a copy of the data directory `template`, at `root / "data"`."""
    settings = Settings(data_dir=root / "data")
    shutil.copytree(template, settings.data_dir)
    return settings


@contextmanager
def hand_built_feast_world(hand_built_data: Path, root: Path, project_prefix: str,
                           checked_apply: bool = False) -> Iterator[FeastWorld]:
    """A copy of the hand-built feature tables, applied and materialized into Redis under a project
    of their own; its Redis rows are deleted afterwards. `checked_apply`: `feast apply` with
    Feast's type checks of the definitions (see `feast_repo.apply`)."""
    from feast_ext import repo as feast_repo

    settings = copy_data_dir(hand_built_data, root)
    project = f"{project_prefix}_{uuid.uuid4().hex[:8]}"
    repo = feast_repo.make_isolated_repo(root / "repo", project, settings.data_dir)
    env = {"RECSYS_DATA_DIR": str(settings.data_dir)}
    feast_repo.apply(repo, env, checked=checked_apply)
    feast_repo.materialize(datetime(1970, 1, 1), datetime(2026, 1, 8), repo, env)
    try:
        yield FeastWorld(feast_repo.feature_store(repo), settings, repo, env)
    finally:
        feast_repo.delete_online_rows(project)


@dataclass
class TrainedWorld:
    """Synthetic raw data -> Spark features -> an isolated Feast project -> a trained bundle."""

    settings: Settings
    repo: Path
    project: str
    env: dict[str, str]
    result: object  # training.pipeline.TrainedTwoStage

    @property
    def bundle(self) -> Path:
        return self.result.bundle

    def store(self):
        from feast_ext import repo as feast_repo

        return feast_repo.feature_store(self.repo)


@pytest.fixture(scope="session")
def trained_world(spark, tmp_path_factory) -> TrainedWorld:
    """The training pipeline's run on a small synthetic world, once per session: the training
    tests check it and the serving tests serve its bundle (from a copy of its models folder, as
    they publish bundles of their own). Its bundle must stay `latest` in its own models folder."""
    from core.inference.candidates import CandidateConfig
    from feast_ext import repo as feast_repo
    from training.data.synthetic import GeneratorConfig, generate
    from training.features.pipeline import run_feature_pipeline
    from training.pipeline import TrainConfig, train_two_stage
    from training.retrieval.sasrec import SASRecConfig

    root = tmp_path_factory.mktemp("trained_world")
    settings = Settings(data_dir=root / "data", artifacts_dir=root / "artifacts", reports_dir=root / "reports")
    generate(GeneratorConfig(n_users=1_500, n_items=400, n_events=150_000, n_days=40, seed=3),
             settings.raw_dir, progress=False)
    run_feature_pipeline(spark, settings, progress=False)
    project = f"recsys_train_{uuid.uuid4().hex[:6]}"
    repo = feast_repo.make_isolated_repo(root / "repo", project, settings.data_dir)
    env = {"RECSYS_DATA_DIR": str(settings.data_dir)}
    feast_repo.apply(repo, env)  # checked: the definitions as users apply them
    config = TrainConfig(max_ranker_requests=1_000, max_val_requests=500, max_test_users=800,
                         candidates=CandidateConfig(n_ann=100, n_trending=30, n_covisit=30))
    config.two_tower.epochs = 5
    config.bpr.epochs = 5
    # A small SASRec, item-kNN and content, so the bundle the serving tests serve has every source and
    # feature kind.
    config.sasrec = SASRecConfig(dim=16, epochs=3, warm_epochs=1, batch_size=256)
    config.item_knn_neighbours = 50
    config.content_dim = 16
    result = train_two_stage(spark, feast_repo.feature_store(repo), settings, config)
    yield TrainedWorld(settings, repo, project, env, result)
    feast_repo.delete_online_rows(project)


def event(user: int, item: int, kind: str, when: datetime, rating: float | None = None,
          device: str = "mobile") -> dict:
    return {"user_id": user, "item_id": item, "event_type": kind, "rating": rating,
            "event_timestamp": when, "device": device}


def user_row(user: int, signup: datetime, age: int = 30) -> dict:
    return {"user_id": user, "age": age, "gender": "F", "occupation": "engineer", "signup_timestamp": signup}


def item_row(item: int, category: str, created: datetime, price: float = 20.0) -> dict:
    return {"item_id": item, "category": category, "price": price, "title": f"item {item}",
            "created_timestamp": created}


@pytest.fixture
def settings_for(tmp_path):
    def make(name: str = "data") -> Settings:
        return Settings(data_dir=tmp_path / name)
    return make
