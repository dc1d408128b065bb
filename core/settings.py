"""Platform settings: the one place for paths and knobs outside feature_store.yaml.

Every value can be overridden by an environment variable `RECSYS_<NAME>` (or a `.env` file).
Spark and Redis settings live in `feature_store.yaml`; `spark_conf()` reads them from there so a
training job and Feast always run with the same Spark configuration.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "localhost:6379"



def environment_defaults() -> dict[str, str]:
    """What the process environment needs for Feast and Spark, when unset: feature_store.yaml reads
    ${REDIS_URL} (the documented default), and Spark's Python workers (Feast's Spark materialization)
    must run this interpreter, the one with Feast installed, not whatever `python3` is first on PATH."""
    return {"REDIS_URL": DEFAULT_REDIS_URL, "PYSPARK_PYTHON": sys.executable}


def apply_environment_defaults() -> None:
    """Set `environment_defaults()` where unset. Called where a Feast store, a `feast` command or a
    Spark session is made, never on import."""
    for name, value in environment_defaults().items():
        os.environ.setdefault(name, value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", env_file=".env", extra="ignore")

    repo_root: Path = Field(REPO_ROOT, description="the checkout: feature_repo/ and feature_store.yaml")
    data_dir: Path = Field(default=REPO_ROOT / "data", description="raw data, feature tables, registry")
    artifacts_dir: Path = Field(default=REPO_ROOT / "artifacts", description="model bundles")
    reports_dir: Path = Field(default=REPO_ROOT / "reports", description="evaluation / drift reports")
    feature_store_yaml: Path = Field(REPO_ROOT / "feature_store.yaml",
                                     description="the Feast config (Spark, Redis, registry) jobs read Spark's from")

    windows_days: tuple[int, ...] = Field((1, 7, 30), description="windows (days) of the behavioural counts; "
                                          "changing them changes the Feast schema")
    recent_history_length: int = Field(20, ge=1, description="items kept in a user's recent history")
    recent_history_granularity: Literal["day", "event"] = Field(
        "day", description="day: one recent-history row per active day (requests at midnight); event: one per "
                           "event, known 1 us after it (requests in the middle of a session)")
    price_bucket_edges: tuple[float, ...] = Field((10.0, 25.0, 50.0, 100.0, 250.0),
                                                  description="edges of the item price buckets")
    new_item_days: int = Field(14, ge=0, description="an item younger than this is new (is_new, freshness boost)")

    # Env: an ISO time (RECSYS_EARLIEST_EVENT_TIME=1995-01-01T00:00:00Z), and seconds or an ISO 8601
    # duration (RECSYS_MAX_FUTURE_SKEW=P1D).
    earliest_event_time: datetime = Field(
        datetime(1990, 1, 1, tzinfo=timezone.utc), description="the time window (core.time_window): no "
        "event or request time before this, in ingest, POST /events and ?time=")
    max_future_skew: timedelta = Field(default=timedelta(days=1), ge=timedelta(0),
                                       description="the time window: no event or request time more than this "
                                                   "ahead of the checking machine's clock")

    @property
    def redis_url(self) -> str:
        return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)

    # Layout of data_dir: raw -> features -> (Feast registry).
    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def events_dir(self) -> Path:
        """The raw event log (date-partitioned parquet): ingest, the generator and POST /events write it."""
        return self.raw_dir / "events"

    @property
    def serving_log_dir(self) -> Path:
        """The served log (`core.contracts.SERVED_LOG_RECORD` records) serving writes, monitoring reads."""
        return self.data_dir / "serving_logs"

    @property
    def logs_dir(self) -> Path:
        """The full logs of `python -m workflows demo|movielens`."""
        return self.data_dir / "logs"

    @property
    def models_dir(self) -> Path:
        """Model bundles (`<version>/`) and the `latest` pointer."""
        return self.artifacts_dir / "models"

    def training_work_dir(self, version: str) -> Path:
        """A training run's intermediate tables (training sets, the ranker's rows)."""
        return self.data_dir / "training" / version

    def reference_rows_dir(self, version: str) -> Path:
        """The ranker's training rows of bundle `version`: the drift reference monitoring compares with."""
        return self.training_work_dir(version) / "ranker_train_rows"

    def training_report_dir(self, version: str) -> Path:
        return self.reports_dir / "training" / version

    def monitoring_report_dir(self, name: str) -> Path:
        return self.reports_dir / "monitoring" / name

    def spark_conf(self) -> dict[str, str]:
        """The Spark configuration Feast uses (offline_store.spark_conf in feature_store.yaml)."""
        config = yaml.safe_load(self.feature_store_yaml.read_text())
        return {str(k): str(v) for k, v in (config["offline_store"].get("spark_conf") or {}).items()}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
