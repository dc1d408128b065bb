"""The training pipeline: Feast training sets -> retrieval -> candidates -> ranker -> evaluation -> bundle.

Data flows one way through these steps; each step is a function so the CLI can run it alone and
tests can check it. Periods come from a time split (never random): retrieval models learn from
the first period, the ranker from candidates of the next, the validation period stops both, and
the test period is evaluated once against baselines measured in the same run.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureStore
from pyspark.sql import DataFrame, SparkSession
from rich.console import Console

from core.contracts import RANKING_SERVICE, RETRIEVAL_SERVICE, service_features
from core.inference import ann_index
from core.inference.baselines import (
    CoVisitationRecommender,
    ItemKNNRecommender,
    PopularityRecommender,
    TrendingRecommender,
)
from core.inference.candidates import SOURCE_COLUMNS, CandidateConfig, CandidateGenerator
from core.inference.content import ContentScorer
from core.inference.frame import DEFAULT_EXCLUDE, fit_feature_spec
from core.inference.inputs import IdMap, UserInputSpec, fit_user_input_spec, item_features, user_features
from core.inference.ranker import DCN, LIGHTGBM
from core.inference.ranker import score as ranker_score
from core.metrics import ranking_metrics
from core.schema import EVENT_GAIN
from core.settings import Settings
from training.datasets import requests as req
from training.datasets.point_in_time import join_feature_service, write_parquet
from training.datasets.splits import TimeSplit
from training.features.pipeline import event_date_range
from training.features.raw_io import read_events
from training.ranking import lgbm_ranker, selection
from training.ranking.dcn import DCNConfig, plot_dcn_curves
from training.retrieval.als import ALSConfig, fit_als, select_als
from training.retrieval.mf import BPRConfig, BPRRecommender
from training.retrieval.sasrec import SASRecConfig, SASRecFitter
from training.retrieval.two_tower import Interactions, TwoTowerConfig, plot_training_curves, train_two_tower

console = Console()
KS = (5, 10, 20, 50)


@dataclass
class TrainConfig:
    test_days: int = 7
    val_days: int = 7
    ranker_days: int = 14
    max_ranker_requests: int = 4_000
    max_val_requests: int = 1_500
    max_test_users: int = 3_000
    max_retrieval_pairs: int = 400_000
    # "daily": requests at midnight, labelled by the day's events; "session": requests mid-day,
    # one per share, labelled by the day's last share of events (see training.datasets.requests).
    request_mode: str = "daily"
    session_label_shares: tuple[float, ...] = (0.2,)
    # Days of interactions that label a request: 1 labels a daily request by its day, a session
    # request by the rest of its day; more add the user's interactions of the following days.
    label_days: int = 1
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    two_tower: TwoTowerConfig = field(default_factory=lambda: TwoTowerConfig(
        epochs=8, batch_size=1024, progress=sys.stderr.isatty()))
    ranker: lgbm_ranker.RankerConfig = field(default_factory=lgbm_ranker.RankerConfig)
    bpr: BPRConfig = field(default_factory=lambda: BPRConfig(
        batch_size=8192, epochs=10, lr=0.03, progress=sys.stderr.isatty()))
    # The ALS candidate source and ranker features; None leaves ALS out.
    als: ALSConfig | None = field(default_factory=ALSConfig)
    # With a grid ({field: [values]}), ALS's hyper-parameters are chosen on the ranker's validation
    # requests (ALS alone, NDCG@10, fitted on the events before the validation window).
    als_grid: dict[str, list] | None = None
    # Ranker training / validation requests get candidates from sources (trending, co-visitation,
    # ALS) refitted every `source_refit_days` on the events before each chunk of requests, so their
    # features are about as fresh as at test and serving time; None fits once, at the window's start.
    source_refit_days: int | None = 7
    # The SASRec candidate source and ranker features (a sequence model of the recent history);
    # None leaves it out. Its fits are reused for up to `sasrec_refit_days` of requests, each refit
    # warm-started from the last (`training.retrieval.sasrec.SASRecFitter`).
    sasrec: SASRecConfig | None = None
    sasrec_refit_days: int | None = 28
    # The item-kNN candidate source and ranker features (items similar by who interacted with them,
    # each item's `item_knn_neighbours` nearest kept; refitted like trending); None leaves it out.
    item_knn_neighbours: int | None = None
    # The content candidate source and ranker features (`core.inference.content`: item attributes as
    # `content_dim`-d vectors, so items without interactions are reachable); None leaves it out.
    content_dim: int | None = None
    # After validation has chosen the ranker's rounds, refit it on the training and validation
    # requests together with that many rounds; the bundle ships the refitted ranker.
    refit_ranker: bool = True
    # With a grid ({RankerConfig field: [values]}), the ranker's settings are chosen on the
    # validation requests (best early-stopped NDCG@10 there); the trace is in training_stats.json.
    ranker_grid: dict[str, list] | None = None
    # The kinds of ranker trained ("lightgbm", "dcn"): each on the same rows, early-stopped on the
    # same validation requests; the one with the higher validation NDCG@10 ships
    # (`training.ranking.selection`), and with several the test window reports each (two_stage_<kind>).
    ranker_kinds: tuple[str, ...] = ("lightgbm",)
    dcn: DCNConfig = field(default_factory=DCNConfig)
    seed: int = 7


@dataclass
class Catalog:
    """Items and users in index order, with the id maps every model shares."""

    items: pd.DataFrame  # item_id, category, price, created_timestamp, title
    item_ids: IdMap
    user_ids: IdMap
    categories: list[str]

    @property
    def available_from(self) -> np.ndarray:
        return epoch_seconds(self.items["created_timestamp"])


@dataclass
class StepTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn, *args, **kwargs):
        console.print(f"[bold]> {name}[/]")
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - started, 2)
        return result


def epoch_seconds(values: pd.Series) -> np.ndarray:
    """UTC timestamps (any resolution) -> int64 epoch seconds."""
    delta = pd.to_datetime(pd.Series(values), utc=True) - pd.Timestamp(0, tz="UTC")
    return (delta // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def to_epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp())


# ---------------------------------------------------------------- data ----------------------------


def load_catalog(spark: SparkSession, settings: Settings) -> Catalog:
    items = pd.read_parquet(settings.raw_dir / "items").sort_values("item_id").reset_index(drop=True)
    users = pd.read_parquet(settings.raw_dir / "users", columns=["user_id"]).sort_values("user_id")
    return Catalog(items, IdMap(items["item_id"].to_numpy()), IdMap(users["user_id"].to_numpy()),
                   sorted(items["category"].astype(str).unique()))


def events_frame(events: DataFrame, path: Path, catalog: Catalog) -> pd.DataFrame:
    """Events as numpy-friendly columns (written by Spark, read by pyarrow)."""
    write_parquet(events.select("user_id", "item_id", "event_type", "event_timestamp"), path)
    frame = pd.read_parquet(path)
    frame["user_idx"] = catalog.user_ids.to_idx(frame["user_id"])
    frame["item_idx"] = catalog.item_ids.to_idx(frame["item_id"])
    frame["ts"] = epoch_seconds(frame["event_timestamp"])
    frame["gain"] = frame["event_type"].map(EVENT_GAIN).astype(float)
    return frame[(frame.user_idx >= 0) & (frame.item_idx >= 0)].sort_values("ts").reset_index(drop=True)


def labelled_requests(events: DataFrame, start: date, end: date, config: TrainConfig) -> DataFrame:
    """Training / validation requests of [start, end) in the configured request mode."""
    if config.request_mode == "daily":
        return req.daily_requests(events, start, end, config.label_days)
    if config.request_mode == "session":
        return req.session_requests(events, start, end, config.session_label_shares, config.label_days)
    raise ValueError(f"request_mode must be 'daily' or 'session', got {config.request_mode!r}")


def with_user_features(store: FeatureStore, spark: SparkSession, labelled: DataFrame, path: Path) -> pd.DataFrame:
    """Labelled request rows + the `retrieval` service's point-in-time user features."""
    requests = labelled.select("request_id", "user_id", "event_timestamp", "device").distinct()
    joined = join_feature_service(store, requests, RETRIEVAL_SERVICE)
    write_parquet(joined, path)
    return pd.read_parquet(path)


# ---------------------------------------------------------------- retrieval -----------------------


def train_retrieval(store, spark, events: DataFrame, split: TimeSplit, catalog: Catalog, config: TrainConfig,
                    work: Path, settings: Settings):
    """Two-tower on (user features at the start of the day, items of that day) pairs."""
    train_labels = req.sample_requests(labelled_requests(events, split.start, split.ranker_start, config),
                                       config.max_retrieval_pairs // 4, config.seed)
    val_labels = req.sample_requests(labelled_requests(events, split.ranker_start, split.val_start, config),
                                     config.max_val_requests, config.seed)
    write_parquet(train_labels, work / "retrieval_train_labels")
    write_parquet(val_labels, work / "retrieval_val_labels")
    train_users = with_user_features(store, spark, train_labels, work / "retrieval_train_users")
    val_users = with_user_features(store, spark, val_labels, work / "retrieval_val_users")
    spec = fit_user_input_spec(train_users, settings.recent_history_length)
    items_in = item_features(catalog.items, catalog.categories)

    def interactions(labels_path: Path, users: pd.DataFrame) -> Interactions:
        pairs = pd.read_parquet(labels_path, columns=["request_id", "item_id"]).merge(users, on="request_id")
        pairs = pairs[catalog.item_ids.to_idx(pairs["item_id"]) >= 0]
        return Interactions(user_features(pairs, catalog.user_ids, catalog.item_ids, spec),
                            catalog.item_ids.to_idx(pairs["item_id"]))

    train_pairs = interactions(work / "retrieval_train_labels", train_users)
    val_pairs = interactions(work / "retrieval_val_labels", val_users)
    console.print(f"  two-tower: {len(train_pairs):,} training pairs, {len(val_pairs):,} validation pairs")
    started = time.perf_counter()
    result = train_two_tower(train_pairs, items_in, len(catalog.user_ids), config.two_tower, val=val_pairs,
                             n_categories=len(catalog.categories) + 1)
    seconds = time.perf_counter() - started
    epochs = len(result.history.train_loss)
    throughput = len(train_pairs) * epochs / seconds
    console.print(f"  two-tower: best epoch {result.best_epoch}, val recall@{config.two_tower.eval_k} "
                  f"{result.best_val_recall:.4f}, {throughput:,.0f} examples/s")
    return result, spec, items_in, {"val_users_path": str(work / "retrieval_val_users"),
                                    "two_tower_examples_per_s": round(throughput), "two_tower_epochs": epochs,
                                    "two_tower_best_val_recall": result.best_val_recall,
                                    "two_tower_train_pairs": len(train_pairs)}


def build_index(model, items_in, user_rows, n_queries: int = 1000):
    """FAISS index of the item embeddings and its recall@100 against exact search."""
    item_emb = model.item_embeddings(items_in)
    index = ann_index.build_index(item_emb)
    queries = model.user_embeddings(user_rows)[:n_queries]
    return item_emb, index, ann_index.recall_vs_exact(index, item_emb, queries, 100)


@dataclass
class FittedSources:
    """The candidate sources fitted on one stretch of events (optional ones None when left out)."""

    trending: TrendingRecommender
    covisit: CoVisitationRecommender
    als: object | None = None  # core.inference.als.ALSUserSolver
    sasrec: object | None = None  # core.inference.sasrec.SASRecScorer
    item_knn: ItemKNNRecommender | None = None
    content: ContentScorer | None = None

    def generator(self, model, item_emb: np.ndarray, index, catalog: Catalog,
                  candidates: CandidateConfig) -> CandidateGenerator:
        return CandidateGenerator(model, item_emb, index, catalog.available_from, self.trending, self.covisit,
                                  candidates, self.als, self.sasrec, self.item_knn, self.content)


def fit_sources(events_np: pd.DataFrame, before: int, catalog: Catalog, als: ALSConfig | None = None,
                sasrec: SASRecFitter | None = None, final: bool = False,
                item_knn_neighbours: int | None = None, content_dim: int | None = None) -> FittedSources:
    """Trending, co-visitation, (with an `als` config) ALS item factors, (with a `sasrec` fitter)
    SASRec and (with `item_knn_neighbours`) item-kNN, fitted on events strictly before `before`
    (epoch s), and (with `content_dim`) content vectors from the attributes of the items created
    before then. `final`: SASRec fitted up to `before` whatever its refit period."""
    past = events_np[events_np.ts < before]
    n_items = len(catalog.item_ids)
    trending = TrendingRecommender(n_items).fit(past.user_idx, past.item_idx, past.ts, past.gain, as_of=before)
    covisit = CoVisitationRecommender(n_items).fit(past.user_idx, past.item_idx, past.ts, past.gain)
    als_model = (fit_als(past.user_idx.to_numpy(), past.item_idx.to_numpy(), len(catalog.user_ids), n_items, als)
                 if als is not None else None)
    sasrec_model = None
    if sasrec is not None:
        sasrec_model = (sasrec.final if final else sasrec.at)(events_np, before, n_items)
    item_knn = (ItemKNNRecommender(n_items, item_knn_neighbours).fit(past.user_idx, past.item_idx)
                if item_knn_neighbours else None)
    content = (ContentScorer.fit(catalog.items, catalog.available_from < before, content_dim)
               if content_dim else None)
    return FittedSources(trending, covisit, als_model, sasrec_model, item_knn, content)


def choose_als(events_np: pd.DataFrame, catalog: Catalog, before: int, user_spec: UserInputSpec, request_data,
               base: ALSConfig, grid: dict[str, list]) -> tuple[ALSConfig, list[dict]]:
    """`select_als` on validation requests (`request_set`'s output), fitted on events before `before`."""
    requests, labels_pd, _, exclude = request_data
    past = events_np[events_np.ts < before]
    users = user_features(requests, catalog.user_ids, catalog.item_ids, user_spec)
    positions = {rid: i for i, rid in enumerate(requests["request_id"])}
    labels = labels_pd.assign(item_idx=catalog.item_ids.to_idx(labels_pd["item_id"]),
                              position=labels_pd["request_id"].map(positions))
    labels = labels[(labels.item_idx >= 0) & labels.position.notna()]
    relevant = {int(p): dict(zip(g.item_idx.astype(int), g.label.astype(float))) for p, g in labels.groupby("position")}
    return select_als(past.user_idx.to_numpy(), past.item_idx.to_numpy(), len(catalog.user_ids),
                      len(catalog.item_ids), users.history, relevant, exclude, catalog.available_from < before,
                      base, grid)


def refit_chunks(times: np.ndarray, start: int, days: int | None) -> list[tuple[int, np.ndarray]]:
    """Requests (epoch s, all >= `start`) grouped by `days`-long chunks from `start`: [(fit time =
    the chunk's start, positions of its requests)], chunks in time order. `days` None: one chunk."""
    times = np.asarray(times, dtype=np.int64)
    if len(times) and times.min() < start:
        raise ValueError("a request lies before the window's start: its sources would see its future")
    chunk = np.zeros(len(times), dtype=np.int64) if days is None else (times - start) // (days * 86_400)
    return [(start + int(c) * (days or 0) * 86_400, np.flatnonzero(chunk == c)) for c in np.unique(chunk)]


def seen_before(events_np: pd.DataFrame, users: np.ndarray, times: np.ndarray) -> list[set[int]]:
    """Items each (user, time) request had interacted with strictly before its time."""
    first_seen = events_np.groupby(["user_idx", "item_idx"], sort=False)["ts"].min().reset_index()
    by_user = {u: g for u, g in first_seen.groupby("user_idx")}
    out = []
    for user, when in zip(users, times):
        group = by_user.get(int(user))
        out.append(set() if group is None else set(group.item_idx[group.ts < when].tolist()))
    return out


# ---------------------------------------------------------------- ranking -------------------------


def candidate_rows(generator: CandidateGenerator, requests: pd.DataFrame, labels: pd.DataFrame,
                   catalog: Catalog, spec: UserInputSpec, exclude: list[set[int]]) -> pd.DataFrame:
    """Candidates of each request with its labels (0 where the user did not interact)."""
    users = user_features(requests, catalog.user_ids, catalog.item_ids, spec)
    times = epoch_seconds(requests["event_timestamp"])
    candidates = generator.generate(users, times, exclude)
    meta = requests[["request_id", "user_id", "event_timestamp", "device"]].reset_index(drop=True)
    rows = candidates.merge(meta, left_on="position", right_index=True).drop(columns="position")
    rows["item_id"] = catalog.item_ids.to_ids(rows["item_idx"])
    rows["category"] = catalog.items["category"].astype(str).to_numpy()[rows["item_idx"]]
    labelled = rows.merge(labels[["request_id", "item_id", "label"]], on=["request_id", "item_id"], how="left")
    labelled["label"] = labelled["label"].fillna(0).astype(int)
    return labelled


def with_ranking_features(store: FeatureStore, spark: SparkSession, rows: pd.DataFrame, path: Path) -> pd.DataFrame:
    sdf = spark.createDataFrame(rows.assign(event_timestamp=pd.to_datetime(rows["event_timestamp"], utc=True)))
    joined = join_feature_service(store, sdf, RANKING_SERVICE)
    write_parquet(joined, path)
    return pd.read_parquet(path)


def keep_informative(rows: pd.DataFrame) -> pd.DataFrame:
    """LambdaRank learns nothing from a request without a positive candidate."""
    has_positive = rows.groupby("request_id")["label"].transform("max") > 0
    return rows[has_positive]


# ---------------------------------------------------------------- evaluation ----------------------


def relevant_items(labels: pd.DataFrame, catalog: Catalog) -> dict[int, dict[int, float]]:
    labels = labels.assign(item_idx=catalog.item_ids.to_idx(labels["item_id"]))
    labels = labels[labels.item_idx >= 0]
    return {int(u): dict(zip(g.item_idx.astype(int), g.label.astype(float))) for u, g in labels.groupby("user_id")}


def ranked_lists(scored: pd.DataFrame, score_column: str, k: int, key: str = "user_id") -> dict:
    """Top-k item_idx per `key` (user_id: one request per user) by `score_column`, best first."""
    top = scored.sort_values([key, score_column], ascending=[True, False]).groupby(key).head(k)
    cast = int if key == "user_id" else str
    return {cast(u): g.item_idx.astype(int).tolist() for u, g in top.groupby(key)}


def baseline_lists(events_np, catalog, test_users, test_time, exclude, k, config: TrainConfig) -> dict[str, dict]:
    """Popularity, trending, co-visitation and BPR, fitted on everything before the test period."""
    past = events_np[events_np.ts < test_time]
    n_items = len(catalog.item_ids)
    user_idx = catalog.user_ids.to_idx(test_users)
    exclude_by_idx = {int(u): ex for u, ex in zip(user_idx, exclude)}
    popularity = PopularityRecommender(n_items).fit(past.user_idx, past.item_idx, past.ts, past.gain)
    trending = TrendingRecommender(n_items).fit(past.user_idx, past.item_idx, past.ts, past.gain, as_of=test_time)
    covisit = CoVisitationRecommender(n_items).fit(past.user_idx, past.item_idx, past.ts, past.gain)
    pairs = past[["user_idx", "item_idx"]].drop_duplicates()
    bpr = BPRRecommender(len(catalog.user_ids), n_items, config.bpr).fit(pairs.user_idx.to_numpy(), pairs.item_idx.to_numpy())
    lists = {}
    for name, model in {"popularity": popularity, "trending": trending, "covisitation": covisit, "bpr_mf": bpr}.items():
        recs = model.recommend(user_idx, k, exclude_by_idx)
        lists[name] = {int(u): r for u, r in zip(test_users, recs)}
    return lists


def candidate_recall(generator: CandidateGenerator, users, test_time: int, exclude: list[set[int]],
                     user_ids: np.ndarray, relevant: dict[int, dict[int, float]], ks=(100, 500)) -> dict[str, float]:
    """Share of test positives in each source's top-K and in the union of those, on the test window."""
    limits = {source: max(ks) for source in generator.sources}
    lists = generator.source_lists(users, np.full(len(users), test_time), exclude, limits)
    total = sum(len(relevant.get(int(u), {})) for u in user_ids)
    out = {}
    for k in ks:
        hits = dict.fromkeys([*limits, "union"], 0)
        for user, per_source in zip(user_ids, lists):
            positives = relevant.get(int(user), {})
            union = set()
            for source in limits:
                top = set(per_source[source][:k])
                union |= top
                hits[source] += len(top & positives.keys())
            hits["union"] += len(union & positives.keys())
        out.update({f"{source}@{k}": round(h / max(total, 1), 4) for source, h in hits.items()})
    return out


# ---------------------------------------------------------------- the whole pipeline --------------


@dataclass
class TrainedTwoStage:
    """What a training run leaves in memory besides its bundle: enough to rank more requests
    offline (`rank_requests`) with exactly the models the bundle holds."""

    bundle: Path
    work: Path
    catalog: Catalog
    events_np: pd.DataFrame
    two_tower: object  # TwoTowerModel
    item_embeddings: np.ndarray
    index: object  # faiss.Index
    user_spec: UserInputSpec
    ranker: selection.TrainedRanker  # the shipped ranker, of the kind chosen on validation
    spec: object  # FeatureSpec
    candidates: CandidateConfig
    als: ALSConfig | None = None
    retrieval: tuple | None = None  # `train_retrieval`'s result, reusable by another run on the same data
    sasrec: SASRecFitter | None = None
    item_knn_neighbours: int | None = None
    content_dim: int | None = None


def run_training(spark: SparkSession, store: FeatureStore, settings: Settings,
                 config: TrainConfig | None = None) -> Path:
    """Train the two-stage recommender; write the report and a versioned bundle; return its path."""
    return train_two_stage(spark, store, settings, config).bundle


def train_two_stage(spark: SparkSession, store: FeatureStore, settings: Settings,
                    config: TrainConfig | None = None, retrieval: tuple | None = None) -> TrainedTwoStage:
    """`run_training`, returning the trained components along with the bundle path. `retrieval`
    (a previous run's `TrainedTwoStage.retrieval`, same data and two-tower settings) skips the
    two-tower's training."""
    from core.bundle import new_version

    config = config or TrainConfig()
    timer = StepTimer()
    version = new_version()
    work = settings.training_work_dir(version)
    first_day, last_day = event_date_range(settings.raw_dir)
    split = TimeSplit.from_days(first_day, last_day, config.test_days, config.val_days, config.ranker_days)
    console.print(f"time split: {split.to_dict()}")
    events = read_events(spark, settings.raw_dir, split.start, split.end).cache()
    catalog = load_catalog(spark, settings)
    events_np = timer.run("events", events_frame, events, work / "events", catalog)

    if retrieval is None:
        retrieval = timer.run("retrieval: Feast training set + two-tower", train_retrieval, store, spark, events,
                              split, catalog, config, work, settings)
    two_tower, user_spec, items_in, retrieval_stats = retrieval
    model = two_tower.model

    # Ranker training / validation requests and their candidates.
    def request_set(name: str, start: date, end: date, limit: int):
        labels = req.sample_requests(labelled_requests(events, start, end, config), limit, config.seed)
        write_parquet(labels, work / f"{name}_labels")
        labels_pd = pd.read_parquet(work / f"{name}_labels")
        requests = with_user_features(store, spark, labels, work / f"{name}_users")
        times = epoch_seconds(requests["event_timestamp"])
        exclude = seen_before(events_np, catalog.user_ids.to_idx(requests["user_id"]), times)
        return requests, labels_pd, times, exclude

    def ranker_set(name: str, start: date, request_data) -> pd.DataFrame:
        requests, labels_pd, times, exclude = request_data
        parts = []
        # Without refits every set's sources are fitted once, at the ranker window's start.
        fit_from = start if config.source_refit_days else split.ranker_start
        for fit_time, positions in refit_chunks(times, to_epoch(fit_from), config.source_refit_days):
            chunk = requests.iloc[positions].reset_index(drop=True)
            parts.append(candidate_rows(make_generator(fit_time), chunk, labels_pd, catalog, user_spec,
                                        [exclude[i] for i in positions]))
        rows = pd.concat(parts, ignore_index=True)
        # The training rows are also the bundle's drift reference (monitoring reads them there).
        out = settings.reference_rows_dir(version) if name == "ranker_train" else work / f"{name}_rows"
        return with_ranking_features(store, spark, rows, out)

    als_config, als_selection = config.als, None

    sasrec = SASRecFitter(config.sasrec, config.sasrec_refit_days) if config.sasrec is not None else None

    def make_generator(before: int, final: bool = False) -> CandidateGenerator:
        sources = fit_sources(events_np, before, catalog, als_config, sasrec, final, config.item_knn_neighbours,
                              config.content_dim)
        return sources.generator(model, item_emb, index, catalog, config.candidates)

    user_probe = user_features(pd.read_parquet(retrieval_stats["val_users_path"]), catalog.user_ids,
                               catalog.item_ids, user_spec)
    item_emb, index, ann_recall = timer.run("faiss index", build_index, model, items_in, user_probe)
    val_requests = timer.run("ranker validation requests", request_set, "ranker_val", split.val_start,
                             split.test_start, config.max_val_requests)
    if als_config is not None and config.als_grid:
        als_config, als_selection = timer.run("ALS selection on the validation requests", choose_als, events_np,
                                              catalog, to_epoch(split.val_start), user_spec, val_requests,
                                              als_config, config.als_grid)
        console.print(f"  ALS: chose {als_config}")
    train_requests = timer.run("ranker training requests", request_set, "ranker_train", split.ranker_start,
                               split.val_start, config.max_ranker_requests)
    ranker_train = timer.run("ranker training set (Feast ranking service)", ranker_set, "ranker_train",
                             split.ranker_start, train_requests)
    ranker_val = timer.run("ranker validation set", ranker_set, "ranker_val", split.val_start, val_requests)
    train_rows, val_rows = keep_informative(ranker_train), keep_informative(ranker_val)
    spec = fit_feature_spec(train_rows, exclude=(*DEFAULT_EXCLUDE, "item_idx"))  # ids are not features
    choice = selection.select_ranker_kind(train_rows, val_rows, spec, config.ranker_kinds, config.ranker,
                                          config.ranker_grid, config.dcn, run=timer.run)
    ranker_selection = choice.lightgbm_trace
    for entry in ranker_selection if config.ranker_grid else ():
        console.print(f"  ranker grid: {entry}")
    console.print(f"  ranker: {len(train_rows):,} rows, val ndcg@10 "
                  + ", ".join(f"{kind} {score:.4f}" for kind, score in choice.validation_scores.items())
                  + f": {choice.chosen}" + (f", best iteration {choice.best.best_iteration}"
                                            if choice.chosen == LIGHTGBM else ""))
    shipped = dict(choice.validated)  # kind -> the ranker the test window scores (refitted when asked)
    if config.refit_ranker:
        both = pd.concat([train_rows, val_rows], ignore_index=True)
        shipped = {kind: timer.run(f"{kind} ranker refit on training + validation requests", selection.refit,
                                   validated_kind, both) for kind, validated_kind in choice.validated.items()}
    validated, ranker = choice.best, shipped[choice.chosen]

    # Test: one request per user at the start of the test period, sources refitted up to then.
    test_time = to_epoch(split.test_start)
    generator = make_generator(test_time, final=True)
    test_labels = req.window_requests(events, split.test_start, split.end)
    test_labels = req.sample_requests(test_labels, config.max_test_users, config.seed)
    write_parquet(test_labels, work / "test_labels")
    test_labels_pd = pd.read_parquet(work / "test_labels")
    test_requests = with_user_features(store, spark, test_labels, work / "test_users")
    # Evaluated users: history before the test period and interactions in it.
    test_requests = test_requests[test_requests["user_daily__weighted_events_30d"].notna()
                                  | test_requests["user_recent_history__recent_item_ids"].notna()]
    test_users = test_requests["user_id"].to_numpy()
    exclude = seen_before(events_np, catalog.user_ids.to_idx(test_users), np.full(len(test_users), test_time))
    test_rows = timer.run("test candidates + Feast features", lambda: with_ranking_features(
        store, spark, candidate_rows(generator, test_requests, test_labels_pd, catalog, user_spec, exclude),
        work / "test_rows"))
    test_rows["ranker_score"] = ranker_score(ranker.scorer, test_rows, spec)
    if ranker is not validated:
        test_rows["validated_ranker_score"] = ranker_score(validated.scorer, test_rows, spec)
    for kind, kind_ranker in shipped.items() if len(shipped) > 1 else ():
        test_rows[f"ranker_score_{kind}"] = ranker_score(kind_ranker.scorer, test_rows, spec)
    relevant = {u: r for u, r in relevant_items(test_labels_pd, catalog).items() if u in set(test_users.tolist())}

    k_max = max(KS)
    lists = timer.run("baselines", baseline_lists, events_np, catalog, test_users, test_time, exclude, k_max, config)
    lists.update(source_alone_lists(test_rows, ("two_tower", "als", "sasrec", "item_knn", "content"), k_max))
    lists["two_stage"] = ranked_lists(test_rows, "ranker_score", k_max)
    if ranker is not validated:  # the ranker as validated, before its refit: both are reported
        lists["two_stage_before_refit"] = ranked_lists(test_rows, "validated_ranker_score", k_max)
    for kind in shipped if len(shipped) > 1 else ():  # every kind of ranker on the test window, chosen or not
        lists[f"two_stage_{kind}"] = ranked_lists(test_rows, f"ranker_score_{kind}", k_max)
    popularity = np.bincount(events_np.item_idx[events_np.ts < test_time], minlength=len(catalog.item_ids))
    results = {name: ranking_metrics(recs, relevant, KS, popularity, len(catalog.item_ids))
               for name, recs in lists.items()}
    recall_by_source = candidate_recall(
        generator, user_features(test_requests, catalog.user_ids, catalog.item_ids, user_spec), test_time,
        exclude, test_users, relevant)
    stats = {"split": split.to_dict(), "seconds": timer.seconds, "faiss_recall_at_100_vs_exact": ann_recall,
             "candidate_recall": recall_by_source, "n_test_users": len(relevant), **retrieval_stats,
             "ranker_rows": len(train_rows), "ranker_kind": choice.chosen, "ranker_choice": choice.to_dict(),
             **({"ranker_best_iteration": shipped[LIGHTGBM].best_iteration}
                if LIGHTGBM in shipped else {}),
             "als": als_config.to_dict() if als_config is not None else None, "als_selection": als_selection,
             "ranker_selection": ranker_selection, "sasrec_fits": sasrec.fits if sasrec is not None else 0}
    bundle = write_outputs(settings, version, split, results, stats, two_tower, user_spec, item_emb, index,
                           shipped, choice, spec, catalog, generator, store, work)
    return TrainedTwoStage(bundle, work, catalog, events_np, model, item_emb, index, user_spec, ranker, spec,
                           config.candidates, als_config, retrieval, sasrec, config.item_knn_neighbours,
                           config.content_dim)


def rank_requests(trained: TrainedTwoStage, store: FeatureStore, spark: SparkSession, requests: pd.DataFrame,
                  exclude: Mapping[str, Iterable[int]] | None, k: int, name: str = "offline") -> RankedLists:
    """Top-k item ids per request of `requests` (request_id, user_id, event_timestamp, device) from
    the two-stage recommender, keyed by request_id, with every feature read point-in-time from
    Feast at the request's time and candidates from sources fitted on all of the run's events.
    `exclude` maps a request_id to item ids it must not be shown; None leaves out, for each
    request, the items its user interacted with before the request's time."""
    catalog, events_np = trained.catalog, trained.events_np
    sources = fit_sources(events_np, int(events_np.ts.max()) + 1, catalog, trained.als, trained.sasrec, final=True,
                          item_knn_neighbours=trained.item_knn_neighbours, content_dim=trained.content_dim)
    generator = sources.generator(trained.two_tower, trained.item_embeddings, trained.index, catalog,
                                  trained.candidates)
    frame = requests.assign(event_timestamp=pd.to_datetime(requests["event_timestamp"], utc=True))
    with_users = with_user_features(store, spark, spark.createDataFrame(frame), trained.work / f"{name}_users")
    if exclude is None:
        excluded = seen_before(events_np, catalog.user_ids.to_idx(with_users["user_id"]),
                               epoch_seconds(with_users["event_timestamp"]))
    else:
        excluded = [{int(i) for i in catalog.item_ids.to_idx(sorted(exclude.get(rid, ()))) if i >= 0}
                    for rid in with_users["request_id"]]
    no_labels = pd.DataFrame({"request_id": pd.Series(dtype=str), "item_id": pd.Series(dtype=np.int64),
                              "label": pd.Series(dtype=np.int64)})
    rows = candidate_rows(generator, with_users, no_labels, catalog, trained.user_spec, excluded)
    rows = with_ranking_features(store, spark, rows, trained.work / f"{name}_rows")
    rows["ranker_score"] = ranker_score(trained.ranker.scorer, rows, trained.spec)
    to_ids = lambda lists: {key: catalog.item_ids.to_ids(np.asarray(items, dtype=np.int64)).tolist()  # noqa: E731
                            for key, items in lists.items()}
    out = RankedLists(to_ids(ranked_lists(rows, "ranker_score", k, key="request_id")))
    for source, lists in source_alone_lists(rows, tuple(SOURCE_COLUMNS), k, key="request_id").items():
        out.components[f"source: {source}"] = to_ids(lists)
    return out


def source_alone_lists(rows: pd.DataFrame, sources: tuple[str, ...], k: int, key: str = "user_id") -> dict[str, dict]:
    """Each of `sources` alone: the candidates it proposed among `rows`, in its own order (top-k
    item_idx per `key`). A source that proposed nothing (e.g. `n_ann=0`) is left out, not scored 0."""
    out = {}
    for source in sources:
        flag, rank = SOURCE_COLUMNS[source]
        if flag in rows.columns and rows[flag].any():
            proposed = rows[rows[flag] == 1].assign(_order=lambda r, rank=rank: -r[rank].astype(float))
            out[source] = ranked_lists(proposed, "_order", k, key)
    return out


class RankedLists(dict):
    """Top-k item ids per request (the two-stage list), with `components`: other lists of the same
    requests by name (each candidate source alone)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.components: dict[str, dict[int, list[int]]] = {}


def write_outputs(settings, version, split, results, stats, two_tower, user_spec, item_emb, index, shipped,
                  choice, spec, catalog, generator, store, work) -> Path:
    """`shipped`: kind -> the ranker the test window scored; `choice`: the validation's choice
    among them (`selection.RankerChoice`), whose ranker the bundle ships."""
    from core.bundle import Bundle
    from training.evaluation.report import write_report

    report_dir = settings.training_report_dir(version)
    report_dir.mkdir(parents=True, exist_ok=True)
    plots = {"Two-tower training": plot_training_curves(two_tower.history, report_dir / "two_tower_curves.png"),
             **ranker_plots(shipped, choice, report_dir)}
    baselines = {k: v for k, v in results.items() if not k.startswith("two_stage")}
    best_name = max(baselines, key=lambda k: baselines[k]["ndcg@10"])
    best, ours = baselines[best_name]["ndcg@10"], results["two_stage"]["ndcg@10"]
    lift = (ours / best - 1) if best > 0 else float("inf")
    stats["lift_ndcg@10_vs_best_baseline"] = {"baseline": best_name, "lift": round(lift, 4)}
    notes = [f"Time split: {split.to_dict()}",
             f"Two-stage NDCG@10 {ours:.4f} vs best baseline {best_name} {best:.4f}: {lift:+.1%}",
             f"Ranker: {choice.chosen}, chosen on validation NDCG@10 "
             + ", ".join(f"{kind} {score:.4f}" for kind, score in choice.validation_scores.items()),
             f"Candidate recall on the test window: {stats['candidate_recall']}",
             f"FAISS recall@100 vs exact search: {stats['faiss_recall_at_100_vs_exact']:.4f}",
             f"Step timings (s): {stats['seconds']}"]
    json_path, html_path = write_report(report_dir, results, {"plots": plots, "notes": notes})
    (report_dir / "training_stats.json").write_text(json.dumps(stats, indent=2, default=str))

    features = service_features(store, RANKING_SERVICE)
    covisit, trending = generator.covisit, generator.trending
    manifest = {
        "feature_service": RANKING_SERVICE,
        "features": features.columns,
        "retrieval_feature_service": RETRIEVAL_SERVICE,
        "retrieval_features": service_features(store, RETRIEVAL_SERVICE).columns,
        "ranker_features": spec.columns,
        "training_window": split.to_dict(),
        "data_fingerprint": data_fingerprint(settings),
        "metrics": {name: {k: v for k, v in m.items() if k.endswith("@10")} for name, m in results.items()},
        "candidates": asdict(generator.config),
        "als": ({"regularization": generator.als.regularization, "alpha": generator.als.alpha,
                 "factors": generator.als.factors} if generator.als is not None else None),
        "sasrec": asdict(generator.sasrec.shape) if generator.sasrec is not None else None,
        "item_knn": {"neighbours": generator.item_knn.neighbours} if generator.item_knn is not None else None,
        "content": {"dim": generator.content.encoder.dim} if generator.content is not None else None,
        "ranker_choice": choice.to_dict(),
    }
    bundle = Bundle.from_two_tower_state(
        two_tower.model.state_arrays(), two_tower_config=two_tower.model.metadata(), user_spec=user_spec,
        index=index, item_embeddings=item_emb, ranker=shipped[choice.chosen].scorer, ranker_spec=spec,
        item_ids=catalog.item_ids.ids, user_ids=catalog.user_ids.ids, categories=catalog.categories,
        item_available_from=catalog.available_from, covisitation=covisit.matrix.tocsr(),
        trending_scores=trending.item_scores,
        als_item_factors=generator.als.item_factors if generator.als is not None else None,
        sasrec_weights=generator.sasrec.weights if generator.sasrec is not None else None,
        item_knn=generator.item_knn.matrix.tocsr() if generator.item_knn is not None else None,
        content=generator.content, manifest=manifest,
    ).save(settings.models_dir, version)
    console.print(f"[bold green]bundle[/] {bundle}\n[bold green]report[/] {html_path}")
    return bundle


def ranker_plots(shipped: Mapping[str, selection.TrainedRanker], choice: selection.RankerChoice,
                 report_dir: Path) -> dict[str, Path]:
    """LightGBM's curves and gain importance (of the ranker the test window scored, as before there
    were kinds) and the DCN's validation curve; a DCN has no feature importance."""
    plots = {}
    lightgbm = shipped.get(LIGHTGBM)
    if lightgbm is not None:
        plots["Ranker validation NDCG"] = lgbm_ranker.plot_ranker_curves(lightgbm.evals_result,
                                                                          report_dir / "ranker_curves.png")
        plots["Ranker feature importance (gain)"] = lgbm_ranker.plot_feature_importance(
            lightgbm.feature_importance, report_dir / "feature_importance.png")
    if DCN in choice.validated:
        plots["DCN ranker training (validation NDCG per epoch)"] = plot_dcn_curves(
            choice.validated[DCN].history, report_dir / "dcn_ranker_curves.png")
    return plots


def data_fingerprint(settings: Settings) -> str:
    """sha256 over the raw files' names, sizes and modification times (cheap, changes with the data)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(settings.raw_dir.rglob("*.parquet")):
        stat = path.stat()
        digest.update(f"{path.relative_to(settings.raw_dir)}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()
