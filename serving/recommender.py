"""The request path: user features -> user embedding -> candidates -> item features -> ranker ->
business rules -> top k.

Ranking rows are assembled with the columns the training pipeline gives its ranker
(`training.pipeline.candidate_rows` + `with_ranking_features`): request_id, user_id,
event_timestamp (the request time), device, item_idx, the retrieval features of
`CandidateGenerator`, item_id, category, and the `ranking` service's `<view>__<feature>` columns.
They are scored by `training.ranking.lgbm_ranker.score`, the one scoring path training uses.

Fallbacks, each visible in the response:
* cold start (no behaviour and no history online): the candidates are the trending ones, re-ranked
  by the ranker with the request's context (device, hour, weekday) and whatever profile exists
  -> "context-aware trending", `cold_start: true`;
* the online store does not answer (or is marked down by the health check): the bundle's trending
  list, `degraded: true`; partial failures later in the path (user x category, item features)
  score with what is available and also set `degraded: true`.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from serving.features import (
    IS_NEW_COLUMN, ITEM_CATEGORY_COLUMN, ItemFeatureCache, OnlineFeatures, OnlineStoreUnavailable,
)
from serving.metrics import ServingMetrics
from serving.model import LoadedModel, ModelHolder
from serving.rules import RuleConfig, apply_rules
from serving.served_log import ServedLog
from training.ranking import lgbm_ranker
from training.retrieval.candidates import RETRIEVAL_FEATURES, primary_source
from training.retrieval.inputs import HISTORY_COLUMN, user_features

log = logging.getLogger("serving.recommender")

USER_DAILY_PREFIX = "user_daily__"


class ModelNotReady(RuntimeError):
    pass


class UnknownItem(LookupError):
    pass


class StoreHealth:
    """Whether to try the online store at all. A failed call marks it down at once; the background
    health check (a Redis PING every `health_check_interval_s`) marks it up again, so a dead Redis
    costs one timeout, not one per request, and recovery needs no restart."""

    def __init__(self) -> None:
        self.available = True
        self.last_error: str | None = None
        self.changed_at = time.time()

    def down(self, error: BaseException | str) -> None:
        if self.available:
            log.warning("online store marked unavailable: %s", error)
            self.changed_at = time.time()
        self.available = False
        self.last_error = str(error)

    def up(self) -> None:
        if not self.available:
            log.info("online store reachable again")
            self.changed_at = time.time()
        self.available = True
        self.last_error = None


@dataclass
class Recommendation:
    request_id: str
    user_id: int
    model_version: str
    request_time: datetime
    device: str
    items: list[dict[str, Any]]
    cold_start: bool = False
    degraded: bool = False
    reasons: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    n_candidates: int = 0
    rows: pd.DataFrame | None = None  # the ranker's input rows (all scored candidates)
    ranker_scores: np.ndarray | None = None  # aligned with `rows`


def to_utc(when: datetime | None) -> datetime:
    if when is None:
        return datetime.now(timezone.utc)
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


class Recommender:
    def __init__(self, holder: ModelHolder, online: OnlineFeatures, cache: ItemFeatureCache,
                 health: StoreHealth, rules: RuleConfig, metrics: ServingMetrics, served_log: ServedLog,
                 cold_start_candidates: int = 200) -> None:
        self.holder = holder
        self.online = online
        self.cache = cache
        self.health = health
        self.rules = rules
        self.metrics = metrics
        self.served_log = served_log
        self.cold_start_candidates = cold_start_candidates
        ranking = set(online.ranking_columns)
        self.user_columns = [c for c in online._columns(online.user_refs) if c in ranking]  # noqa: SLF001
        self.user_category_columns = online._columns(online.user_category_refs)  # noqa: SLF001

    def model(self) -> LoadedModel:
        model = self.holder.current
        if model is None:
            raise ModelNotReady("no model bundle loaded yet")
        return model

    # -------------------------------------------------------------------------- recommendations

    def recommend(self, user_id: int, k: int, device: str, when: datetime | None = None,
                  keep_rows: bool = False) -> Recommendation:
        model = self.model()
        request_time = to_utc(when)
        result = Recommendation(uuid.uuid4().hex, int(user_id), model.version, request_time, device, [])
        timings: dict[str, float] = {}
        try:
            self._recommend(model, result, k, timings)
        finally:
            result.timings_ms = {s: round(v * 1000, 3) for s, v in timings.items()}
        kind = "degraded" if result.degraded else "cold_start" if result.cold_start else "personalized"
        self.metrics.responses.labels(kind).inc()
        if self.served_log.sampled():
            self.served_log.submit(self._log_record(result), result.rows)
        if not keep_rows:
            result.rows = None
        return result

    def _recommend(self, model: LoadedModel, result: Recommendation, k: int, timings: dict) -> None:
        time_stage = self.metrics.time_stage
        with time_stage("features", timings):
            user = self._user_features(result)
        if user is None:
            with time_stage("rules", timings):
                self._trending_fallback(model, result, k, seen=())
            return
        history = user.get(HISTORY_COLUMN) or []
        result.cold_start = not history and all(
            user.get(c) is None for c in user if c.startswith(USER_DAILY_PREFIX))
        seen_ids = [int(i) for i in history]

        with time_stage("retrieval", timings):
            frame = pd.DataFrame({"user_id": [result.user_id], **{c: [v] for c, v in user.items()}})
            users = user_features(frame, model.user_ids, model.item_ids, model.user_spec)
            seen_idx = model.item_ids.to_idx(seen_ids) if self.rules.exclude_seen and seen_ids else np.zeros(0)
            exclude = [set(int(i) for i in seen_idx if i >= 0)]
            request_epoch = int(result.request_time.timestamp())
            candidates = model.generator.generate(users, np.array([request_epoch]), exclude)
            if result.cold_start:
                trending = candidates[candidates["from_trending"] == 1]
                candidates = trending.head(self.cold_start_candidates)
            candidates = candidates.reset_index(drop=True)
        if candidates.empty:
            with time_stage("rules", timings):
                self._trending_fallback(model, result, k, seen=seen_ids, degraded=False)
            return

        with time_stage("features", timings):
            rows = self._ranking_rows(model, result, user, candidates)
        with time_stage("ranking", timings):
            scores = lgbm_ranker.score(model.booster, rows, model.spec)
        self.metrics.candidates.observe(len(rows))
        with time_stage("rules", timings):
            is_new = pd.to_numeric(rows[IS_NEW_COLUMN], errors="coerce").fillna(0).to_numpy() > 0
            embeddings = model.item_embeddings[rows["item_idx"].to_numpy()] if self.rules.diversity == "mmr" else None
            chosen, final = apply_rules(rows["item_id"].to_numpy(), scores, rows["category"].to_numpy(),
                                        is_new, k, self.rules, seen=seen_ids, embeddings=embeddings)
            sources = primary_source(candidates).to_numpy()
            source = "trending" if result.cold_start else None
            result.items = [
                {"item_id": int(rows["item_id"].iat[i]), "score": float(s), "ranker_score": float(scores[i]),
                 "source": source or str(sources[i]), "category": _text(rows["category"].iat[i]),
                 "is_new": bool(is_new[i])}
                for i, s in zip(chosen, final)
            ]
        result.rows, result.ranker_scores, result.n_candidates = rows, scores, len(rows)

    def _user_features(self, result: Recommendation) -> dict[str, Any] | None:
        if not self.health.available:
            result.degraded = True
            result.reasons.append(f"online store unavailable ({self.health.last_error})")
            return None
        try:
            user = self.online.user(result.user_id)
        except OnlineStoreUnavailable as error:
            self.health.down(error)
            result.degraded = True
            result.reasons.append(str(error))
            return None
        return {c: v for c, v in user.items()}

    def _item_features(self, result: Recommendation, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        snapshot = self.cache.snapshot
        if snapshot is not None and self.cache.fresh():
            return snapshot.take(item_ids)
        if self.health.available:
            try:
                return self.online.items(item_ids)  # exact, uncached (the cache is too old or missing)
            except OnlineStoreUnavailable as error:
                self.health.down(error)
        result.degraded = True
        if snapshot is not None:
            result.reasons.append(f"item features from a {snapshot.age():.0f}s old cache (online store down)")
            return snapshot.take(item_ids)
        result.reasons.append("no item features (online store down, no cache)")
        columns = self.online._columns(self.online.item_refs)  # noqa: SLF001
        return {c: self.online.as_array(c, [None] * len(item_ids)) for c in columns}

    def _ranking_rows(self, model: LoadedModel, result: Recommendation, user: dict[str, Any],
                      candidates: pd.DataFrame) -> pd.DataFrame:
        n = len(candidates)
        item_idx = candidates["item_idx"].to_numpy()
        item_ids = model.item_ids.to_ids(item_idx)
        items = self._item_features(result, item_ids)
        categories = items[ITEM_CATEGORY_COLUMN]
        affinity = self._user_category(result, [c for c in pd.unique(categories) if c is not None])
        columns: dict[str, Any] = {
            "request_id": result.request_id,
            "user_id": np.full(n, result.user_id, dtype=np.int64),
            "event_timestamp": pd.Timestamp(result.request_time),
            "device": result.device,
            "item_idx": item_idx,
        }
        for column in RETRIEVAL_FEATURES:
            columns[column] = candidates[column].to_numpy()
        columns["item_id"] = item_ids
        columns["category"] = categories
        for column in self.user_columns:
            columns[column] = self.online.as_array(column, [user.get(column)] * n)
        columns.update(items)
        for column in self.user_category_columns:
            values = [affinity.get(c, {}).get(column) for c in categories]
            columns[column] = self.online.as_array(column, values)
        return pd.DataFrame(columns)

    def _user_category(self, result: Recommendation, categories: list[str]) -> dict[str, dict[str, Any]]:
        if not self.health.available:
            result.degraded = True
            return {}
        try:
            return self.online.user_category(result.user_id, categories)
        except OnlineStoreUnavailable as error:
            self.health.down(error)
            result.degraded = True
            result.reasons.append(f"user x category features unavailable: {error}")
            return {}

    def _trending_fallback(self, model: LoadedModel, result: Recommendation, k: int, seen, degraded=True) -> None:
        """The bundle's trending list (items existing at the request time), business rules applied."""
        result.degraded = result.degraded or degraded
        request_epoch = int(result.request_time.timestamp())
        order = model.trending.order
        pool = order[model.item_available_from[order] <= request_epoch][: max(self.cold_start_candidates, k * 5)]
        item_ids = model.item_ids.to_ids(pool)
        snapshot = self.cache.snapshot
        if snapshot is not None:
            taken = snapshot.take(item_ids)
            categories = taken[ITEM_CATEGORY_COLUMN]
            is_new = np.nan_to_num(taken[IS_NEW_COLUMN].astype(np.float64)) > 0
        else:
            categories = np.full(len(pool), None, dtype=object)
            is_new = np.zeros(len(pool), dtype=bool)
        scores = model.trending.item_scores[pool]
        chosen, final = apply_rules(item_ids, scores, categories, is_new, k, self.rules, seen=seen)
        result.items = [
            {"item_id": int(item_ids[i]), "score": float(s), "ranker_score": None, "source": "trending",
             "category": _text(categories[i]), "is_new": bool(is_new[i])}
            for i, s in zip(chosen, final)
        ]

    def _log_record(self, result: Recommendation) -> dict[str, Any]:
        return {
            "request_id": result.request_id,
            "timestamp": result.request_time,
            "user_id": result.user_id,
            "model_version": result.model_version,
            "variant": None,
            "device": result.device,
            "cold_start": result.cold_start,
            "degraded": result.degraded,
            "items": [item["item_id"] for item in result.items],
            "scores": [item["score"] for item in result.items],
            "ranker_scores": [item["ranker_score"] for item in result.items],
        }

    # -------------------------------------------------------------------------- similar items

    def similar_items(self, item_id: int, k: int) -> dict[str, Any]:
        model = self.model()
        idx = int(model.item_ids.to_idx([item_id])[0])
        if idx < 0:
            raise UnknownItem(f"unknown item {item_id}: not in the catalog of model {model.version}")
        query = np.ascontiguousarray(model.item_embeddings[idx:idx + 1], dtype=np.float32)
        scores, found = model.index.search(query, min(k + 1, model.n_items))
        neighbours = [(int(i), float(s)) for i, s in zip(found[0], scores[0]) if i >= 0 and i != idx][:k]
        covisited = model.covisit.similar_items(idx, k)
        snapshot = self.cache.snapshot

        def describe(pairs, source):
            ids = model.item_ids.to_ids(np.array([i for i, _ in pairs], dtype=np.int64))
            categories = snapshot.take(ids)[ITEM_CATEGORY_COLUMN] if snapshot is not None and len(ids) else \
                [None] * len(ids)
            return [{"item_id": int(i), "score": s, "source": source, "category": _text(c)}
                    for i, (_, s), c in zip(ids, pairs, categories)]

        return {"item_id": int(item_id), "model_version": model.version,
                "embedding_neighbours": describe(neighbours, "two_tower"),
                "covisitation": describe(covisited, "covisit")}


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)
