"""The platform's two-stage recommender as one model of an offline benchmark protocol.

For a protocol (`training.evaluation.protocols`), the whole platform runs on the protocol's
*train* interactions only, in a folder of its own: raw data -> Spark feature jobs (recent history
at event granularity, so a request in the middle of a session sees the session so far, as the
service does through its push source) -> `feast apply` of an isolated Feast project -> training
(`train_two_stage`, Feast point-in-time training sets) -> one request per evaluated user at the
protocol's request time, every feature read point-in-time from Feast, candidates from sources
fitted on the train interactions, the user's train items excluded -> the ranker's top k.

The held-out interactions never reach the raw data, so no feature, model or candidate source can
see them. Nothing is materialized: the evaluation is offline.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession

from core.inference.candidates import CandidateConfig
from core.settings import Settings
from feast_ext import repo as feast_repo
from training.data.movielens import DEVICE, write_movielens
from training.evaluation.protocols import Protocol
from training.features.pipeline import run_feature_pipeline
from training.pipeline import TrainConfig, rank_requests, train_two_stage

# The requests each protocol asks at: the global cut is a midnight, per-user requests come mid-session.
REQUEST_MODES = {"global": "daily", "per_user": "session"}


def movielens_train_config(request_mode: str = "session", seed: int = 7) -> TrainConfig:
    """Windows for MovieLens-100K's pace (~3k ratings a week): twelve weeks of ranker requests,
    four weeks of validation, and four requests per rating session (a few hundred sessions per
    window otherwise leave the ranker too few requests); the run's own test week is reported but
    not used here. Co-visitation is seeded by the whole recent history (20 items): a rating
    session is one long history. 200 ANN candidates: the catalog has 1,682 items.
    `request_mode` should match the requests the model will answer (see `REQUEST_MODES`)."""
    config = TrainConfig(test_days=7, val_days=28, ranker_days=84, max_ranker_requests=6_000,
                         max_val_requests=2_000, request_mode=request_mode, seed=seed,
                         session_label_shares=(0.2, 0.4, 0.6, 0.8),
                         candidates=CandidateConfig(n_ann=200, n_trending=50, n_covisit=200, covisit_seeds=20))
    # Small data (a few thousand ranker requests): smaller trees, more data per leaf.
    config.ranker.num_leaves = 15
    config.ranker.min_data_in_leaf = 100
    config.ranker.feature_fraction = 0.7
    config.ranker.early_stopping_rounds = 50
    config.two_tower.epochs = 20
    config.two_tower.seed = config.ranker.seed = seed
    if config.als is not None:
        config.als.seed = seed
    # ALS chosen on the validation requests (peers' ALS on MovieLens wants few factors, strong
    # regularization).
    config.als_grid = {"factors": [16, 32, 64], "regularization": [1.0, 10.0, 50.0]}
    # MovieLens relevance follows popularity closely; log-Q correction (which removes popularity
    # from the in-batch softmax) costs the two-tower more than it gives here.
    config.two_tower.logq_correction = False
    if request_mode == "session":
        # Chosen on the per-user protocol's validation split (benchmarks/movielens_validation.py,
        # issue #15): the two-tower is near random on MovieLens (NDCG@10 ~0.02-0.03 alone, random
        # ~0.02) yet filled ~200 of ~450 candidate slots, so it proposes none here (its similarity
        # stays a feature of every candidate); each source's score also enters relative to the
        # request's best; LightGBM's objective is chosen on the pipeline's own validation requests.
        # On the global protocol's validation split the same change lost (0.202 vs 0.226), so
        # daily requests keep the configuration above.
        config.candidates.n_ann = 0
        config.candidates.relative_scores = True
        config.ranker_grid = {"objective": ["lambdarank", "rank_xendcg"]}
    return config


def before_issue_15(config: TrainConfig) -> TrainConfig:
    """`config` as the platform trained before issue #15: no ALS source, candidate sources fitted
    once at the start of the ranker's window, the ranker as validated (no refit), 200 two-tower
    candidates, no relative scores, one ranker objective."""
    config.als = None
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
    Feast project (None: `movielens_train_config` for the protocol)."""
    settings = Settings(data_dir=root / "data", artifacts_dir=root / "artifacts", reports_dir=root / "reports",
                        recent_history_granularity="event")
    train_pairs = set(zip(protocol.train["user_id"].tolist(), protocol.train["item_id"].tolist()))
    write_movielens(movielens_dir, settings.raw_dir, settings.quarantine_dir,
                    keep=lambda users, items: [pair in train_pairs for pair in zip(users, items)])
    run_feature_pipeline(spark, settings, progress=False)
    project = f"ml_{protocol.name}_{uuid.uuid4().hex[:6]}"
    repo = feast_repo.make_isolated_repo(root / "repo", project, settings.data_dir)
    feast_repo.apply(repo, {"RECSYS_DATA_DIR": str(settings.data_dir)})
    store = feast_repo.feature_store(repo)
    out, retrieval = {}, None
    for name, config in configs.items():  # the two-tower is trained once (the variants share its settings)
        config = config or movielens_train_config(REQUEST_MODES.get(protocol.name, "daily"), seed)
        trained = train_two_stage(spark, store, settings, config, retrieval)
        retrieval = trained.retrieval
        out[name] = rank_requests(trained, store, spark, requests_frame(protocol), protocol.exclude, k,
                                  f"{protocol.name}{name}")
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
