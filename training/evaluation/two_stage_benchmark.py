"""The platform's two-stage recommender as one model of an offline benchmark protocol.

For a protocol (`training.evaluation.protocols`), the whole platform runs on the protocol's
*train* interactions only, as a backtest (`training.backtest`, what `python -m training
backtest` runs) in a folder of its own: raw files -> ingest -> Spark feature jobs (recent history
at event granularity, so a request in the middle of a session sees the session so far, as the
service does through its push source) -> `feast apply` of an isolated Feast project -> training
(`train_two_stage`, Feast point-in-time training sets) -> one request per evaluated user at the
protocol's request time, every feature read point-in-time from Feast, candidates from sources
fitted on the train interactions, the user's train items excluded -> the ranker's top k.

The held-out interactions never reach the raw data, so no feature, model or candidate source can
see them. Nothing is materialized: the evaluation is offline.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession

from training.backtest import prepare_world, rank_with_configs
from training.data.movielens import DEVICE, write_raw_files
from training.evaluation.protocols import Protocol
from training.pipeline import RankedLists, TrainConfig
from training.presets import movielens_train_config

__all__ = ["REQUEST_MODES", "before_issue_15", "movielens_train_config", "requests_frame", "two_stage_lists",
           "two_stage_variants"]

# The requests each protocol asks at: the global cut is a midnight, per-user requests come mid-session.
REQUEST_MODES = {"global": "daily", "per_user": "session"}


def before_issue_15(config: TrainConfig) -> TrainConfig:
    """`config` as the platform trained before issue #15: no ALS or SASRec source, candidate sources fitted
    once at the start of the ranker's window, the ranker as validated (no refit), 200 two-tower
    candidates, no relative scores, one ranker objective."""
    config.als = config.sasrec = None
    config.source_refit_days = None
    config.refit_ranker = False
    config.candidates.n_ann, config.candidates.relative_scores, config.ranker_grid = 200, False, None
    return config


def two_stage_lists(protocol: Protocol, movielens_dir: Path, root: Path, spark: SparkSession,
                    config: TrainConfig | None = None, k: int = 10, seed: int = 7) -> dict[int, list[int]]:
    """Top-k item ids per evaluated user of `protocol`, from a platform run on its train part (a
    `RankedLists`: each candidate source's own list is in its `components`)."""
    return two_stage_variants(protocol, movielens_dir, root, spark, {"": config}, k, seed)[""]


def two_stage_variants(protocol: Protocol, movielens_dir: Path, root: Path, spark: SparkSession,
                       configs: dict[str, TrainConfig | None], k: int = 10, seed: int = 7) -> dict[str, dict]:
    """`two_stage_lists` for several training configurations sharing one feature pipeline and
    Feast project (None: `movielens_train_config` for the protocol). The run is a backtest
    (`training.backtest`): the protocol's train part is written as raw files and ingested."""
    train_pairs = set(zip(protocol.train["user_id"].tolist(), protocol.train["item_id"].tolist()))
    write_raw_files(movielens_dir, root / "input",
                    keep=lambda users, items: [pair in train_pairs for pair in zip(users, items)])
    world = prepare_world(root / "input", root / "run", spark)
    mode = REQUEST_MODES.get(protocol.name, "daily")
    configs = {name: config or movielens_train_config(mode, seed) for name, config in configs.items()}
    requests = requests_frame(protocol)
    exclude = dict(zip(requests["request_id"], (protocol.exclude[u] for u in requests["user_id"])))
    by_request = rank_with_configs(world, spark, requests, configs, k, exclude)
    return {name: by_user(lists, requests) for name, lists in by_request.items()}


def by_user(lists: RankedLists, requests: pd.DataFrame) -> RankedLists:
    """Lists keyed by request_id -> keyed by user_id (one request per user)."""
    user_of = dict(zip(requests["request_id"], requests["user_id"].astype(int)))
    out = RankedLists({user_of[rid]: items for rid, items in lists.items()})
    out.components = {name: {user_of[rid]: items for rid, items in component.items()}
                      for name, component in lists.components.items()}
    return out


def requests_frame(protocol: Protocol) -> pd.DataFrame:
    """One request per evaluated user at the protocol's request time."""
    users = protocol.users
    return pd.DataFrame({
        "request_id": [f"{protocol.name}:{u}" for u in users],
        "user_id": users,
        "event_timestamp": [datetime.fromtimestamp(protocol.request_time[u], tz=timezone.utc) for u in users],
        "device": DEVICE,
    })
