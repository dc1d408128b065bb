"""The request path: user features -> user embedding -> candidates -> item features -> ranker ->
business rules -> top k.

Ranking rows are assembled with the columns the training pipeline gives its ranker
(`training.pipeline.candidate_rows` + `with_ranking_features`): request_id, user_id,
event_timestamp (the request time), device, item_idx, the retrieval features of
`CandidateGenerator`, item_id, category, and the `ranking` service's `<view>__<feature>` columns.
They are scored by the bundle's ranker (`core.inference.ranker.Ranker`: LightGBM or DCN), the one scoring
path training uses (`core.inference.ranker.score`).

Fallbacks, each visible in the response:
* cold start (no behaviour and no history online): the candidates are the trending ones, re-ranked
  by the ranker with the request's context (device, hour, weekday) and whatever profile exists
  -> "context-aware trending", `cold_start: true`;
* the online store does not answer (or is marked down by the health check): the bundle's trending
  list, `degraded: true`; partial failures later in the path (user x category, item features)
  score with what is available and also set `degraded: true`.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import faiss
import numpy as np
import pandas as pd
from starlette.concurrency import run_in_threadpool

from core.inference.candidates import CANDIDATE_FEATURES, primary_source
from core.inference.frame import TIMESTAMP_COLUMN
from core.inference.inputs import HISTORY_COLUMN, user_features
from serving.experiment import VariantRouter
from serving.features import (
    IS_NEW_COLUMN,
    ITEM_CATEGORY_COLUMN,
    USER_CATEGORY_KEYS,
    USER_KEYS,
    ItemFeatureCache,
    ItemSnapshot,
    OnlineFeatures,
    OnlineStoreUnavailable,
)
from serving.metrics import ServingMetrics
from serving.model import LoadedModel, ModelHolder
from serving.ranker_input import ITEM, PAIR, REQUEST, ItemInputs, ItemTable, MatrixPlan, Pairs
from serving.redact import get_logger, redact
from serving.rules import RuleConfig, apply_rules
from serving.served_log import ServedLog

log = get_logger("serving.recommender")

USER_DAILY_PREFIX = "user_daily__"
# Up to this many catalog categories, a request reads its (user, category) rows of all of them with
# the user's row (one round trip); with more, only those of its candidates, once they are known.
MAX_PREFETCH_CATEGORIES = 64


@dataclass(frozen=True)
class PrefetchedPairs:
    """Raw (user, category) rows read with the users': row r * len(names) + c is request r's
    for category names[c] (`names` is the item table's own list, compared by identity)."""

    names: list[str]
    rows: list


class ModelNotReady(RuntimeError):
    pass


class Overloaded(RuntimeError):
    """More requests are waiting than the server works off in reasonable time: shed this one."""


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
        # Redis answers but holds no materialization (core.online_marker): why, else None.
        self.lost: str | None = None

    def down(self, error: BaseException | str) -> None:
        reason = redact(error)  # it reaches responses and /readyz
        if self.available:
            log.warning("online store marked unavailable: %s", reason)
            self.changed_at = time.time()
        self.available = False
        self.last_error = reason

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
    variant: str | None = None  # A/B variant of the user (None without an experiment)
    cold_start: bool = False
    degraded: bool = False
    reasons: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    n_candidates: int = 0
    rows: pd.DataFrame | None = None  # the ranker's input rows (all scored candidates), when asked for
    ranker_scores: np.ndarray | None = None  # aligned with `rows`
    # The batch's ranker input columns and this request's span in them: a DataFrame of them is
    # only built (`frame_rows`) for a logged request or when the caller keeps the rows.
    row_columns: dict[str, Any] | None = field(default=None, repr=False)
    row_span: tuple[int, int] = (0, 0)

    def frame_rows(self) -> pd.DataFrame | None:
        if self.row_columns is None:
            return None
        start, end = self.row_span
        return pd.DataFrame({c: values[start:end] for c, values in self.row_columns.items()})


def to_utc(when: datetime | None) -> datetime:
    if when is None:
        return datetime.now(timezone.utc)
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


class _Pending:
    """One request waiting in the micro-batcher."""

    __slots__ = ("result", "k", "sampled", "keep_rows", "done", "waiter", "error")

    def __init__(self, result: Recommendation, k: int, sampled: bool = False, keep_rows: bool = False) -> None:
        self.result, self.k = result, k
        self.sampled = sampled  # goes to the served-feature log
        self.keep_rows = keep_rows  # the caller wants the ranker's input rows
        self.done = threading.Event()
        # (loop, future) of a request awaited on an event loop: resolved there once it is done
        self.waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None
        self.error: BaseException | None = None

    @property
    def want_rows(self) -> bool:
        return self.sampled or self.keep_rows

    def finish(self) -> None:
        self.done.set()


class MicroBatcher:
    """Runs `process(list_of_pending)` in `workers` background threads over whatever requests are
    waiting (at most `max_batch`). Nothing waits for a batch to fill: an idle worker takes a lone
    request at once, so at low load a batch is one request; under load, requests that arrive while
    the workers are busy are scored together. The per-request cost of the pipeline is mostly
    per-column pandas work (and one Feast round trip per call), which a batch pays once."""

    def __init__(self, process, max_batch: int, workers: int, max_pending: int = 0) -> None:
        self.process = process
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._queue: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._run, name=f"recommender-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, pending: _Pending) -> None:
        """Queue `pending`, wait until it is done; raise what its processing raised."""
        self.enqueue(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def submit_async(self, pending: _Pending) -> None:
        """`submit` for the event loop: awaits, without holding a thread, until it is done."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        pending.waiter = (loop, done)
        self.enqueue(pending)
        await done
        if pending.error is not None:
            raise pending.error

    def enqueue(self, pending: _Pending) -> None:
        if self.max_pending and self._queue.qsize() >= self.max_pending:
            raise Overloaded(f"{self._queue.qsize()} requests already waiting; try again shortly")
        self._queue.put(pending)

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                self.process(batch)
            except BaseException as error:  # noqa: BLE001 - handed to the waiting requests
                for pending in batch:
                    pending.error = pending.error or error
            finally:
                _finish_all(batch)


class Recommender:
    def __init__(self, variants: VariantRouter, online: OnlineFeatures, cache: ItemFeatureCache,
                 health: StoreHealth, rules: RuleConfig, metrics: ServingMetrics, served_log: ServedLog,
                 cold_start_candidates: int = 200, item_feature_source: str = "cache",
                 max_batch: int = 1, batch_workers: int = 1, num_threads: int = 1,
                 max_pending: int = 0) -> None:
        self.variants = variants
        self.online = online
        self.cache = cache
        self.health = health
        self.rules = rules
        self.metrics = metrics
        self.served_log = served_log
        self.cold_start_candidates = cold_start_candidates
        self.item_feature_source = item_feature_source
        ranking = set(online.ranking_columns)
        self.user_columns = [c for c in online._columns(online.user_refs) if c in ranking]  # noqa: SLF001
        self.user_category_columns = online._columns(online.user_category_refs)  # noqa: SLF001
        self.item_columns = online._columns(online.item_refs)  # noqa: SLF001
        self._plans: dict[str, MatrixPlan] = {}
        self.num_threads = num_threads
        self.batcher = MicroBatcher(self._run, max_batch, batch_workers, max_pending) if max_batch > 1 else None

    @property
    def holder(self) -> ModelHolder:
        """The control's (or the only) bundle."""
        return self.variants.primary

    def model(self, variant: str | None = None) -> LoadedModel:
        """The bundle in service for `variant` (the control's / the only one by default)."""
        variant = self.variants.primary_variant if variant is None else variant
        holder = self.variants.holder(variant)
        model = holder.current
        if model is None:
            raise ModelNotReady(_not_loaded(variant, holder))
        return model

    def known_items(self, item_ids) -> np.ndarray:
        """Per item: >= 0 when some bundle in service has it in its catalog, -1 otherwise."""
        found = np.full(len(item_ids), -1, dtype=np.int64)
        for model in self.variants.loaded_models():
            found = np.maximum(found, model.item_ids.to_idx(item_ids))
        return found

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()

    # -------------------------------------------------------------------------- recommendations

    def recommend(self, user_id: int, k: int, device: str, when: datetime | None = None,
                  keep_rows: bool = False) -> Recommendation:
        """Top-k for one user (blocking; the API awaits `recommend_async`)."""
        pending = self._pending(user_id, k, device, when, keep_rows)
        if self.batcher is not None:
            self.batcher.submit(pending)
        else:
            self._run([pending])
        return _outcome(pending)

    async def recommend_async(self, user_id: int, k: int, device: str,
                              when: datetime | None = None) -> Recommendation:
        """`recommend` for the event loop: the request waits for its batch without a thread."""
        pending = self._pending(user_id, k, device, when, keep_rows=False)
        if self.batcher is not None:
            await self.batcher.submit_async(pending)
        else:
            await run_in_threadpool(self._run, [pending])
        return _outcome(pending)

    def _pending(self, user_id: int, k: int, device: str, when: datetime | None, keep_rows: bool) -> _Pending:
        variant = self.variants.assign(user_id)
        self.model(variant)  # fail fast (503) without a bundle for this user's variant
        result = Recommendation(_request_id(), int(user_id), "", to_utc(when), device, [], variant=variant)
        return _Pending(result, k, sampled=self.served_log.sampled(), keep_rows=keep_rows)

    def _run(self, batch: list[_Pending]) -> None:
        """Process a batch, then finish each request in this worker: metrics, served log."""
        self._process(batch)
        for pending in batch:
            if pending.error is None:
                self._finish(pending)

    def _finish(self, pending: _Pending) -> None:
        result = pending.result
        self._count(result)
        if pending.want_rows:
            result.rows = result.frame_rows()
        if pending.sampled:
            self.served_log.submit(self._log_record(result), result.rows)
        if not pending.keep_rows:
            result.rows = None
        result.row_columns = None

    def _count(self, result: Recommendation) -> None:
        kind = "degraded" if result.degraded else "cold_start" if result.cold_start else "personalized"
        self.metrics.responses.labels(kind).inc()
        experiment = self.variants.experiment
        if experiment is not None:
            self.metrics.variant_responses.labels(experiment.name, result.variant, result.model_version).inc()

    def _process(self, batch: list[_Pending]) -> None:
        """A batch of requests, one group per bundle (a group never mixes bundles). When a group
        fails, its requests are run again one by one, so a failure reaches only the request that
        causes it (`pending.error`)."""
        _limit_threads(self.num_threads)
        groups = self.variants.group_by_holder(p.result.variant for p in batch)
        for positions in groups.values():
            group = [batch[i] for i in positions]
            try:
                self._process_group(self.model(group[0].result.variant), group)
            except Exception as error:  # noqa: BLE001 - isolated below
                if len(group) == 1:
                    group[0].error = group[0].error or error
                    continue
                log.warning("a batch of %d requests failed (%s: %s); running them one by one",
                            len(group), type(error).__name__, error)
                for pending in group:
                    self._process_alone(pending)

    def _process_alone(self, pending: _Pending) -> None:
        _reset(pending.result)
        try:
            self._process_group(self.model(pending.result.variant), [pending])
        except Exception as error:  # noqa: BLE001 - raised to this request's caller
            pending.error = pending.error or error

    def _process_group(self, model: LoadedModel, batch: list[_Pending]) -> None:
        """The request path for requests of one bundle (one call per online lookup)."""
        results = [p.result for p in batch]
        for result in results:
            result.model_version = model.version
        timings: dict[str, float] = {}
        try:
            self._pipeline(model, batch, timings)
        finally:
            for result in results:
                result.timings_ms = {s: round(v * 1000, 3) for s, v in timings.items()}
            for stage, seconds in timings.items():
                for _ in results:
                    self.metrics.stage.labels("recommendations", stage).observe(seconds)

    @staticmethod
    @contextmanager
    def _stage(name: str, timings: dict[str, float]):
        started = time.perf_counter()
        try:
            yield
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - started

    def _pipeline(self, model: LoadedModel, batch: list[_Pending], timings: dict) -> None:
        stage = self._stage
        results = [p.result for p in batch]
        with stage("features", timings):
            users, prefetched = self._user_features(results, self._prefetch_categories(model))
        if users is None:
            with stage("rules", timings):
                for p in batch:
                    self._trending_fallback(model, p.result, p.k, seen=())
            return
        seen: list[list[int]] = []
        for p, user in zip(batch, users):
            history = user.get(HISTORY_COLUMN) or []
            p.result.cold_start = not history and all(
                user.get(c) is None for c in user if c.startswith(USER_DAILY_PREFIX))
            seen.append([int(i) for i in history])

        with stage("retrieval", timings):
            candidates = self._candidates(model, batch, users, seen)
            request_of = candidates["position"]
            bounds = np.searchsorted(request_of, np.arange(len(batch) + 1))  # request i: bounds[i]:bounds[i+1]

        scored = [i for i in range(len(batch)) if bounds[i + 1] > bounds[i]]
        if scored:
            plan = self.plan(model)
            item_idx = candidates["item_idx"]
            item_ids = model.item_ids.to_ids(item_idx)
            with stage("features", timings):
                items = self._item_inputs(model, plan, results, item_idx, item_ids)
                pairs = self._pairs(results, users, request_of, items, plan.blocks[PAIR].inputs, prefetched)
            with stage("ranking", timings):
                requests = self._request_columns(results, users)
                matrix = plan.assemble(candidates, items.block, plan.blocks[REQUEST].rows(requests), request_of,
                                       plan.blocks[PAIR].rows(pairs.columns), pairs.pair_of)
                scores = model.ranker.predict(matrix, self.num_threads)
            rows = None
            if any(p.want_rows for p in batch):
                rows = self._ranking_rows(results, candidates, request_of, item_ids, items, requests, pairs)
        with stage("rules", timings):
            if scored:
                sources_all = primary_source(candidates)
            for i, p in enumerate(batch):
                result = p.result
                start, end = bounds[i], bounds[i + 1]
                if start == end:
                    self._trending_fallback(model, result, p.k, seen=seen[i], degraded=False)
                    continue
                span = slice(start, end)
                embeddings = model.item_embeddings[item_idx[span]] if self.rules.diversity == "mmr" else None
                chosen, final = apply_rules(item_ids[span], scores[span], items.categories[span],
                                            items.is_new[span], p.k, self.rules, seen=seen[i], embeddings=embeddings)
                chosen = chosen + start
                result.items = [
                    {"item_id": int(item_ids[j]), "score": float(s), "ranker_score": float(scores[j]),
                     "source": "trending" if result.cold_start else str(sources_all[j]),
                     "category": _text(items.categories[j]), "is_new": bool(items.is_new[j])}
                    for j, s in zip(chosen, final)
                ]
                result.row_columns, result.row_span = rows, (start, end)
                result.ranker_scores = scores[start:end]
                result.n_candidates = end - start
                self.metrics.candidates.observe(end - start)

    def _candidates(self, model: LoadedModel, batch: list[_Pending], users: list[dict[str, Any]],
                    seen: list[list[int]]) -> dict[str, np.ndarray]:
        """The batch's candidates (`CandidateGenerator` columns, ordered by request position); a
        cold user keeps only trending candidates, at most `cold_start_candidates` of them."""
        columns = {column: [user.get(column) for user in users] for column in model.user_spec.columns}
        columns[HISTORY_COLUMN] = [user.get(HISTORY_COLUMN) for user in users]
        columns["user_id"] = [p.result.user_id for p in batch]
        inputs = user_features(columns, model.user_ids, model.item_ids, model.user_spec)
        exclude = []
        for seen_ids in seen:
            idx = model.item_ids.to_idx(seen_ids) if self.rules.exclude_seen and seen_ids else []
            exclude.append({int(i) for i in idx if i >= 0})
        times = np.array([int(p.result.request_time.timestamp()) for p in batch])
        candidates = model.generator.generate_columns(inputs, times, exclude)
        cold = np.array([p.result.cold_start for p in batch])
        position = candidates["position"]
        if cold.any() and len(position):
            keep = ~cold[position] | (candidates["from_trending"] == 1)
            kept = position[keep]
            rank = np.arange(len(kept)) - np.searchsorted(kept, kept)  # rank within the request (positions sorted)
            keep[keep] = ~cold[kept] | (rank < self.cold_start_candidates)
            candidates = {column: values[keep] for column, values in candidates.items()}
        return candidates

    def _prefetch_categories(self, model: LoadedModel) -> list[str] | None:
        """The catalog's categories, when the (user, category) rows of all of them are worth
        reading with the user's, in the same round trip (a fresh item cache names them, and there
        are few); None otherwise (they are read once the candidates are known)."""
        snapshot = self.cache.snapshot
        if (self.online.via_feast or self.item_feature_source != "cache" or snapshot is None
                or not self.cache.fresh()):
            return None
        names = self.item_table(snapshot, model).inputs.category_names
        return names if 0 < len(names) <= MAX_PREFETCH_CATEGORIES else None

    def _user_features(self, results: list[Recommendation], categories: list[str] | None = None
                       ) -> tuple[list[dict[str, Any]] | None, PrefetchedPairs | None]:
        """One round trip for the batch's users (and their rows for `categories`, if given);
        (None, None) (all degraded) when the store is down."""
        if not self.health.available:
            reason = f"online store unavailable ({self.health.last_error})"
        else:
            user_ids = [r.user_id for r in results]
            try:
                if categories:
                    user_rows, pair_rows = self.online.read_raw(
                        [(USER_KEYS, [(u,) for u in user_ids]),
                         (USER_CATEGORY_KEYS, [(u, c) for u in user_ids for c in categories])])
                    users = [self.online.layouts[USER_KEYS].decode(row) for row in user_rows]
                    prefetched = PrefetchedPairs(categories, pair_rows)
                else:
                    users, prefetched = self.online.users(user_ids), None
            except OnlineStoreUnavailable as error:
                self.health.down(error)
                reason = str(error)
            else:
                if self.health.lost:  # the reads answered from an empty store: say so
                    for result in results:
                        result.degraded = True
                        result.reasons.append(self.health.lost)
                return users, prefetched
        for result in results:
            result.degraded = True
            result.reasons.append(reason)
        return None, None

    # -------------------------------------------------------------------------- ranker inputs

    def plan(self, model: LoadedModel) -> MatrixPlan:
        """Which online source feeds each ranker column of `model` (built once per bundle; a
        bundle whose ranker wants a column serving cannot provide is refused when it loads)."""
        plan = self._plans.get(model.version)
        if plan is None:
            plan = MatrixPlan.build(model.spec, self.item_columns, self.user_columns, self.user_category_columns)
            self._plans = {**{v: p for v, p in self._plans.items() if v in self.variants.versions_in_service()},
                           model.version: plan}
        return plan

    def _request_columns(self, results: list[Recommendation], users: list[dict[str, Any]]) -> dict[str, Any]:
        """One row per request: the user's features, device and request time."""
        columns: dict[str, Any] = {column: self.online.as_array(column, [u.get(column) for u in users])
                                   for column in self.user_columns}
        columns["device"] = np.array([r.device for r in results], dtype=object)
        columns[TIMESTAMP_COLUMN] = pd.DatetimeIndex([r.request_time for r in results])
        return columns

    def _item_inputs(self, model: LoadedModel, plan: MatrixPlan, results: list[Recommendation],
                     item_idx: np.ndarray, item_ids: np.ndarray) -> ItemInputs:
        snapshot = self.cache.snapshot
        if self.item_feature_source == "cache" and snapshot is not None and self.cache.fresh():
            return self.item_table(snapshot, model).take(item_idx)
        return ItemInputs.from_columns(self._item_features(results, item_ids), plan.blocks[ITEM])

    def item_table(self, snapshot: ItemSnapshot, model: LoadedModel) -> ItemTable:
        """`model`'s catalog over `snapshot` with its ranker item block (built once per pair)."""
        return snapshot.derive(("ranker-items", model.version, model.n_items),
                               lambda snap: ItemTable.build(snap, model.item_ids.ids, self.plan(model).blocks[ITEM]))

    def prepare_snapshot(self, snapshot: ItemSnapshot, models: list[LoadedModel] | None = None) -> None:
        """Build the item tables of `models` (default: the bundles in service) over a new snapshot."""
        for model in self.variants.loaded_models() if models is None else models:
            self.item_table(snapshot, model)

    def _item_features(self, results: list[Recommendation], item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Item features read per request: the naive path (`item_feature_source=online`, through
        Feast), a snapshot too old to use, or none at all."""
        snapshot = self.cache.snapshot
        if self.health.available:
            try:
                if self.item_feature_source == "online":
                    return self.online.items_via_feast(item_ids)
                return self.online.items(item_ids)  # exact, uncached (the cache is too old)
            except OnlineStoreUnavailable as error:
                self.health.down(error)
        if snapshot is not None:
            reason = f"item features from a {snapshot.age():.0f}s old cache (online store down)"
            taken = snapshot.take(item_ids)
        else:
            reason = "no item features (online store down, no cache)"
            columns = self.online._columns(self.online.item_refs)  # noqa: SLF001
            taken = {c: self.online.as_array(c, [None] * len(item_ids)) for c in columns}
        for result in results:
            result.degraded = True
            result.reasons.append(reason)
        return taken

    def _pairs(self, results: list[Recommendation], users: list[dict[str, Any]], request_of: np.ndarray,
               items: ItemInputs, inputs: list[str], prefetched: PrefetchedPairs | None = None) -> Pairs:
        """The distinct (request, item category) pairs of the candidates, with their user x category
        features (read with the users' when `prefetched` covers the items' categories, else one
        round trip now) and the user features among the pair block's `inputs` (the denominator of
        the category share)."""
        width = len(items.category_names) + 1
        keys, pair_of = np.unique(request_of * width + items.category_codes + 1, return_inverse=True)
        pair_request, pair_code = keys // width, keys % width - 1
        if prefetched is not None and prefetched.names is items.category_names:
            decode, n = self.online.layouts[USER_CATEGORY_KEYS].decode, len(prefetched.names)
            affinity = [decode(prefetched.rows[r * n + c]) if c >= 0 else {} for r, c in zip(pair_request, pair_code)]
        else:
            lookups = [(int(r), items.category_names[c]) for r, c in zip(pair_request, pair_code) if c >= 0]
            values = iter(self._user_category(results, lookups))
            affinity = [next(values) if c >= 0 else {} for c in pair_code]
        columns = {column: self.online.as_array(column, [a.get(column) for a in affinity])
                   for column in self.user_category_columns}
        for column in set(inputs) & set(self.user_columns):
            columns[column] = self.online.as_array(column, [users[r].get(column) for r in pair_request])
        return Pairs(pair_of.reshape(-1), columns)

    def _user_category(self, results: list[Recommendation], pairs: list[tuple[int, str]]) -> list[dict[str, Any]]:
        """User x category features of (request position, category) pairs, one round trip; empty
        (no features, the requests flagged degraded) when the store fails."""
        if not pairs:
            return []
        if self.health.available:
            try:
                return self.online.user_category_pairs([(results[i].user_id, c) for i, c in pairs])
            except OnlineStoreUnavailable as error:
                self.health.down(error)
                reason = f"user x category features unavailable: {error}"
        else:
            reason = "user x category features unavailable (online store down)"
        for i in sorted({i for i, _ in pairs}):
            results[i].degraded = True
            results[i].reasons.append(reason)
        return [{} for _ in pairs]

    def _ranking_rows(self, results: list[Recommendation], candidates: dict[str, np.ndarray], request_of: np.ndarray,
                      item_ids: np.ndarray, items: ItemInputs, requests: dict[str, Any], pairs: Pairs
                      ) -> dict[str, Any]:
        """The ranker's input rows as columns (what training joins: request, retrieval, item, user
        and user x category columns), for the served-feature log and `keep_rows`. The matrix the
        ranker scores equals `model_array` of these rows (tests/serving/test_ranker_input.py)."""
        per_request = lambda values: np.asarray(values, dtype=object)[request_of]  # noqa: E731
        columns: dict[str, Any] = {
            "request_id": per_request([r.request_id for r in results]),
            "user_id": np.array([r.user_id for r in results], dtype=np.int64)[request_of],
            TIMESTAMP_COLUMN: requests[TIMESTAMP_COLUMN][request_of],
            "device": requests["device"][request_of],
            "item_idx": candidates["item_idx"],
        }
        for column in CANDIDATE_FEATURES:
            if column in candidates:  # ALS_FEATURES: bundles with an ALS source only
                columns[column] = candidates[column]
        columns["item_id"] = item_ids
        columns["category"] = items.categories
        for column in self.user_columns:  # one value per request, repeated over its candidates
            columns[column] = requests[column][request_of]
        columns.update(items.raw())
        for column in self.user_category_columns:
            columns[column] = pairs.columns[column][pairs.pair_of]
        return columns

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
            "variant": result.variant,
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
        _limit_threads(self.num_threads)
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


def _reset(result: Recommendation) -> None:
    """Back to what `Recommender._pending` made, before the request runs again."""
    result.items, result.reasons, result.timings_ms = [], [], {}
    result.cold_start = result.degraded = False
    result.n_candidates, result.rows, result.ranker_scores = 0, None, None
    result.row_columns, result.row_span = None, (0, 0)


def _outcome(pending: _Pending) -> Recommendation:
    if pending.error is not None:
        raise pending.error
    return pending.result


def _finish_all(batch: list[_Pending]) -> None:
    """Mark a batch done; the requests awaited on an event loop are resolved with one wake-up of
    that loop per batch (a `call_soon_threadsafe` costs a write to the loop's wake-up fd)."""
    waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for pending in batch:
        pending.finish()
        if pending.waiter is not None:
            loop, future = pending.waiter
            waiting.setdefault(loop, []).append(future)
    for loop, futures in waiting.items():
        try:
            loop.call_soon_threadsafe(_resolve, futures)
        except RuntimeError:  # the loop was closed (shutdown): nobody waits any more
            pass


def _resolve(futures: list[asyncio.Future]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _not_loaded(variant: str | None, holder: ModelHolder) -> str:
    reason = holder.last_error or "loading"
    if variant is None:
        return f"no model bundle loaded yet ({reason})"
    return f"variant {variant!r}: its bundle {holder.version!r} is not loaded ({reason})"


_thread_settings = threading.local()


def _limit_threads(n: int) -> None:
    """FAISS's OpenMP thread count is per calling thread (an OpenMP ICV), so every thread that
    searches sets it (once). With two or more OpenMP threads per request on a busy machine, one
    small search costs ~15 ms of barrier waiting instead of ~0.3 ms."""
    if getattr(_thread_settings, "omp_threads", None) != n:
        faiss.omp_set_num_threads(n)
        _thread_settings.omp_threads = n


def _request_id() -> str:
    """32 random hex digits, as `uuid4().hex` (which reads the OS's entropy, ~10 us a call here):
    a request id needs uniqueness, not secrecy."""
    return f"{random.getrandbits(128):032x}"


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)
