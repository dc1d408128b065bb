"""A small world of its own for the serving tests: synthetic raw data -> Spark features -> an
isolated Feast project (own registry, own Redis key prefix) -> a trained bundle -> materialized
into the real Redis. Built once per test session (a few minutes); the Redis keys are deleted after.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from serving.settings import ServingSettings
from training.settings import Settings

EPOCH = datetime(1970, 1, 1)


@dataclass
class World:
    settings: Settings
    repo: Path
    project: str
    bundle: Path
    last_snapshot: date  # the latest feature snapshot (materialized into Redis)

    @property
    def models_dir(self) -> Path:
        return self.settings.artifacts_dir / "models"

    @property
    def request_time(self) -> datetime:
        """A time after the materialized snapshot and within every view's TTL."""
        day = self.last_snapshot
        return datetime(day.year, day.month, day.day, 13, 30, tzinfo=timezone.utc)

    def store(self):
        from training import feast_repo

        return feast_repo.feature_store(self.repo)

    def serving_settings(self, tmp: Path, **overrides) -> ServingSettings:
        values = dict(feature_repo=self.repo, models_dir=self.models_dir, events_dir=tmp / "events",
                      log_dir=tmp / "serving_logs", log_sample_rate=1.0, log_flush_s=0.2,
                      reload_interval_s=0.3, item_cache_refresh_s=1.0, health_check_interval_s=0.2,
                      n_ann=100, gc_freeze=False)  # a test process outlives many apps
        values.update(overrides)
        return ServingSettings(**values)


@pytest.fixture(scope="session")
def world(spark, tmp_path_factory):
    from training import feast_repo
    from training.data.synthetic import GeneratorConfig, generate
    from training.environment import redis_client
    from training.features.pipeline import default_snapshot_range, run_feature_pipeline
    from training.pipeline import TrainConfig, run_training
    from training.retrieval.candidates import CandidateConfig

    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - started - sum(timings.values()), 1)

    root = tmp_path_factory.mktemp("serving_world")
    settings = Settings(data_dir=root / "data", artifacts_dir=root / "artifacts", reports_dir=root / "reports")
    generate(GeneratorConfig(n_users=600, n_items=250, n_events=40_000, n_days=26, seed=11),
             settings.raw_dir, progress=False)
    lap("generate")
    run_feature_pipeline(spark, settings, progress=False)
    lap("features")
    project = f"recsys_serve_{uuid.uuid4().hex[:6]}"
    repo = feast_repo.make_isolated_repo(root / "repo", project, settings.data_dir)
    env = {"RECSYS_DATA_DIR": str(settings.data_dir)}
    feast_repo.apply(repo, env)
    lap("apply")
    store = feast_repo.feature_store(repo)
    config = TrainConfig(test_days=3, val_days=4, ranker_days=8, max_ranker_requests=600, max_val_requests=300,
                         max_test_users=300, max_retrieval_pairs=60_000,
                         candidates=CandidateConfig(n_ann=60, n_trending=20, n_covisit=20))
    config.two_tower.epochs = 2
    config.bpr.epochs = 2
    config.ranker.num_boost_round = 60
    bundle = run_training(spark, store, settings, config)
    lap("train")
    last_snapshot = default_snapshot_range(settings.raw_dir)[1]
    end = datetime(last_snapshot.year, last_snapshot.month, last_snapshot.day) + timedelta(seconds=1)
    feast_repo.materialize(EPOCH, end, repo_path=repo, env=env)
    lap("materialize")
    print(f"\nserving test world built in {sum(timings.values()):.0f}s: {timings}", file=sys.__stderr__)
    yield World(settings, repo, project, bundle, last_snapshot)
    client = redis_client()
    keys = list(client.scan_iter(match=f"*{project}".encode(), count=10_000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])
