"""The serving tests' world: the session's trained world (synthetic raw data -> Spark features ->
an isolated Feast project with its own registry and Redis key prefix -> a trained bundle, see
tests/conftest.py) materialized into the real Redis, with a models folder of its own. Built once
per test session; the Redis keys are deleted at the end of the session."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.settings import Settings
from serving.settings import ServingSettings

EPOCH = datetime(1970, 1, 1)


@dataclass
class World:
    settings: Settings
    repo: Path
    project: str
    bundle: Path
    last_snapshot: date  # the latest feature snapshot (materialized into Redis)
    models_dir: Path  # the serving tests' own: they publish bundles into it

    @property
    def request_time(self) -> datetime:
        """A time after the materialized snapshot and within every view's TTL."""
        day = self.last_snapshot
        return datetime(day.year, day.month, day.day, 13, 30, tzinfo=timezone.utc)

    def store(self):
        from feast_ext import repo as feast_repo

        return feast_repo.feature_store(self.repo)

    def serving_settings(self, tmp: Path, **overrides) -> ServingSettings:
        values = dict(feature_repo=self.repo, models_dir=self.models_dir, events_dir=tmp / "events",
                      log_dir=tmp / "serving_logs", log_sample_rate=1.0, log_flush_s=0.2,
                      reload_interval_s=0.3, item_cache_refresh_s=1.0, health_check_interval_s=0.2,
                      n_ann=100, gc_freeze=False)  # a test process outlives many apps
        values.update(overrides)
        return ServingSettings(**values)


@pytest.fixture(scope="session")
def world(trained_world, tmp_path_factory):
    """The session's trained world (tests/conftest.py), materialized into Redis, its bundle copied
    into a models folder of the serving tests' own as `latest`."""
    from feast_ext import repo as feast_repo
    from training.features.pipeline import default_snapshot_range

    started = time.perf_counter()
    settings = trained_world.settings
    models_dir = tmp_path_factory.mktemp("serving_models")
    bundle = models_dir / trained_world.bundle.name
    shutil.copytree(trained_world.bundle, bundle)
    (models_dir / "latest").write_text(bundle.name + "\n")
    last_snapshot = default_snapshot_range(settings.raw_dir)[1]
    end = datetime(last_snapshot.year, last_snapshot.month, last_snapshot.day) + timedelta(seconds=1)
    feast_repo.materialize(EPOCH, end, repo_path=trained_world.repo, env=trained_world.env)
    print(f"\nserving test world materialized in {time.perf_counter() - started:.0f}s", file=sys.__stderr__)
    return World(settings, trained_world.repo, trained_world.project, bundle, last_snapshot, models_dir)


API_KEY = "test-key-0123456789"  # the live server's
BODY_LIMIT = 64_000  # bytes, the live server's request body limit


@pytest.fixture(scope="module")
def live(world, tmp_path_factory):
    """The served world over real HTTP (uvicorn on loopback), with an API key and a small body
    limit; one per test module that uses it."""
    from serving.app import create_app

    from .helpers import LiveServer

    settings = world.serving_settings(tmp_path_factory.mktemp("live"), api_key=API_KEY, max_body_bytes=BODY_LIMIT)
    with LiveServer(create_app(settings)) as server:
        yield server
