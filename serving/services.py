"""Everything a running server holds, wired together, with its background threads.

Background threads (all daemons, stopped by `stop()`):
* bundle reloaders - one per distinct bundle of the A/B variants (one without an experiment),
  each checks its version (`latest` moves) every `reload_interval_s` (see `serving.model.ModelHolder`,
  `serving.experiment.VariantRouter`);
* item feature cache refresh - every `item_cache_refresh_s` (see `serving.features`);
* new items - every `new_items_check_s`, items created after a bundle are added to its catalog
  (see `serving.new_items`);
* Redis health check - a PING every `health_check_interval_s`, marks the store up/down;
* served-log writer - drains the sampled request records to parquet (see `serving.served_log`);
* event-log writer - group commits of the events of `POST /events` (see `serving.event_log`).

The health check also reads the materialization marker (`core.online_marker`): Redis that
answers without it was emptied (no persistence), and the service says so (`/readyz` 503,
responses `degraded`) until `python -m training restore-online` has run.
"""

from __future__ import annotations

import os
import threading
import time
from functools import partial

import faiss
import numpy as np

from core.loops import PeriodicTask
from core.online_marker import marker_key, missing_marker_reason
from core.settings import get_settings as get_training_settings
from feast_ext.online_history import OnlineHistory
from serving.event_log import EventLog
from serving.events import EventIngestor
from serving.experiment import VariantRouter
from serving.features import ItemFeatureCache, OnlineFeatures, OnlineStoreUnavailable, make_feature_store
from serving.metrics import ServingMetrics
from serving.model import LoadedModel, ModelHolder
from serving.new_items import NewItems
from serving.recommender import Recommender, StoreHealth
from serving.redact import get_logger, redact
from serving.rules import RuleConfig
from serving.served_log import ServedLog
from serving.settings import ServingSettings

log = get_logger("serving")


class Services:
    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        faiss.omp_set_num_threads(settings.num_threads)
        self.metrics = ServingMetrics()
        self.store = make_feature_store(settings)
        self.online = OnlineFeatures(self.store, via_feast=settings.online_reads == "feast")
        self.health = StoreHealth()
        self.cache = ItemFeatureCache(self.online, settings, on_refresh=self._cache_refreshed)
        self.candidates = settings.candidate_overrides()
        self.new_items = NewItems(self.online, settings.new_items_max if settings.new_items_check_s else 0)
        self._catalog_lock = threading.Lock()
        self.variants = VariantRouter(settings.experiment, settings.variant_bundles(), self._make_holder)
        self.holder = self.variants.primary  # the control's (or the only) bundle
        self.rules = RuleConfig(exclude_seen=settings.exclude_seen, dedup=settings.dedup,
                                diversity=settings.diversity, max_per_category=settings.max_per_category,
                                mmr_lambda=settings.mmr_lambda, freshness_boost=settings.freshness_boost)
        self.served_log = ServedLog(settings.log_dir, settings.log_sample_rate, settings.log_queue_size,
                                    settings.log_flush_s, settings.log_max_rows_per_request,
                                    count=lambda outcome, n: self.metrics.served_log.labels(outcome).inc(n))
        self.recommender = Recommender(self.variants, self.online, self.cache, self.health, self.rules,
                                       self.metrics, self.served_log, settings.cold_start_candidates,
                                       settings.item_feature_source, settings.max_batch,
                                       settings.batch_workers, settings.num_threads, settings.max_pending)
        self.cache.on_snapshot = self.recommender.prepare_snapshot
        self.event_log = EventLog(settings.events_dir, settings.event_log_group_wait_ms / 1000.0)
        self.events = EventIngestor(self.online, self.event_log,
                                    OnlineHistory(self.store, get_training_settings().recent_history_length),
                                    settings.idempotency_ttl_s)
        self.inflight = 0  # recommendation requests admitted and not answered (event-loop only)
        self._health_loop: PeriodicTask | None = None
        self._new_items_loop: PeriodicTask | None = None

    # -- wiring ---------------------------------------------------------------------------------

    def _expected_features(self) -> list[str]:
        from core.contracts import RANKING_SERVICE, service_features

        return service_features(self.store, RANKING_SERVICE).columns

    def _make_holder(self, bundle: str) -> ModelHolder:
        return ModelHolder(self.settings.models_dir, bundle, self._expected_features, self.candidates,
                           prepare=partial(self._prepare, bundle), on_change=self._model_changed,
                           check_timeout_s=self.settings.bundle_check_timeout_s, extend=self.new_items.extend)

    def _prepare(self, bundle: str, model: LoadedModel) -> None:
        """Before a bundle is swapped in: every ranker column must have an online source, and the
        item cache must cover its catalog."""
        self.recommender.plan(model)
        self._cover_catalogs(model, replacing=bundle)
        if self.cache.snapshot is not None:
            self.recommender.prepare_snapshot(self.cache.snapshot, [model])

    def _cover_catalogs(self, incoming: LoadedModel | None = None, replacing: str | None = None) -> None:
        """Make the item cache cover the catalogs of every bundle in service (plus `incoming`,
        which replaces the holder of bundle `replacing`). Serialized, and repeated after each swap,
        so holders reloading at the same time cannot leave a catalog out."""
        with self._catalog_lock:
            catalogs = [] if incoming is None else [incoming.item_ids.ids]
            catalogs += [holder.current.item_ids.ids for bundle, holder in self.variants.holders.items()
                         if bundle != replacing and holder.current is not None]
            distinct = [c for i, c in enumerate(catalogs) if not any(np.array_equal(c, d) for d in catalogs[:i])]
            if distinct:  # one catalog keeps its order; a union is sorted, so it compares equal when unchanged
                self.cache.ensure(distinct[0] if len(distinct) == 1 else np.unique(np.concatenate(distinct)))

    def _model_changed(self, event: str, version: str) -> None:
        self.metrics.reloads.labels(event).inc()
        if event == "loaded":
            self._cover_catalogs()
            self.metrics.set_models(self.variants.versions_in_service())

    def add_new_items(self) -> int:
        """Serve the items created after each bundle in service (`serving.new_items`); returns how
        many bundles changed. The item cache covers an extended catalog before it is swapped in."""
        swapped = 0
        for bundle, holder in self.variants.holders.items():
            current = holder.current
            if current is None:
                continue
            extended = self.new_items.extend(current)
            if extended is current:
                continue
            self._prepare(bundle, extended)
            if holder.replace(current, extended):
                swapped += 1
                self.metrics.new_items.labels(bundle).set(len(extended.added_ids))
        if swapped:
            self._cover_catalogs()
        return swapped

    def _new_items_round(self) -> None:
        try:
            self.add_new_items()
        except OnlineStoreUnavailable as error:
            log.warning("new items not checked: %s", error)

    def _cache_refreshed(self, outcome: str, seconds: float) -> None:
        self.metrics.item_cache_refresh.labels(outcome).observe(seconds)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.check_store()
        self.update_gauges()
        self.variants.check()
        self.variants.start(self.settings.reload_interval_s)
        self.cache.start()
        self.served_log.start()
        self._health_loop = PeriodicTask("redis-health", self.settings.health_check_interval_s, self._health_round,
                                         log).start()
        if self.settings.new_items_check_s:
            self._new_items_loop = PeriodicTask("new-items", self.settings.new_items_check_s, self._new_items_round,
                                                log).start()

    def stop(self) -> None:
        if self._health_loop is not None:  # first: no health round during the teardown
            self._health_loop.stop()
        if self._new_items_loop is not None:
            self._new_items_loop.stop()
        self.recommender.stop()
        self.variants.stop()
        self.cache.stop()
        self.served_log.close()
        self.event_log.close()
        self.metrics.close()

    def check_store(self) -> bool:
        if self.online.ping():
            self.health.up()
            self.check_materialized()
        else:
            self.health.down(f"Redis PING failed ({redact(self.store.config.online_store.connection_string)})")
        return self.health.available

    def check_materialized(self) -> None:
        """Redis without persistence comes back empty: the materialization marker tells."""
        try:
            present = bool(self.online._client().exists(marker_key(self.store.config.project)))  # noqa: SLF001
        except Exception:  # noqa: BLE001 - Redis went away between the PING and here
            return
        if not present:
            if self.health.lost is None:
                log.error("%s", missing_marker_reason(self.store.config.project))
            self.health.lost = missing_marker_reason(self.store.config.project)
            self.metrics.online_store_lost.inc()
        elif self.health.lost is not None:
            log.info("online store materialized again")
            self.health.lost = None

    def _health_round(self) -> None:
        was_available = self.health.available
        if self.check_store() and not was_available and self.cache.snapshot is None:
            threading.Thread(target=self._retry_cache, daemon=True).start()
        self.update_gauges()

    def update_gauges(self) -> None:
        """Set the state gauges (Redis up, item cache age): after each health check and before
        `/metrics` answers (values, not callbacks: they must reach other workers' scrapes too)."""
        self.metrics.redis_up.set(1.0 if self.health.available else 0.0)
        self.metrics.online_store_materialized.set(0.0 if self.health.lost else 1.0)
        snapshot = self.cache.snapshot
        self.metrics.item_cache_age.set(snapshot.age() if snapshot is not None else float("nan"))

    def _retry_cache(self) -> None:
        try:
            self.cache.refresh()
        except Exception as error:  # noqa: BLE001
            log.warning("item cache load after Redis recovery failed: %s", error)

    def readiness(self) -> dict:
        """Ready when every variant's bundle is loaded and Redis answers with a materialization in it."""
        model = self.holder.current
        snapshot = self.cache.snapshot
        redis_ok = self.online.ping()
        if redis_ok:
            self.health.up()
            self.check_materialized()
        else:
            self.health.down("Redis PING failed")
        models_ok = self.variants.ready
        return {
            "ready": models_ok and redis_ok and self.health.lost is None,
            "model_loaded": models_ok,
            "model_version": model.version if model else None,
            "variants": self.variants.describe(),
            "redis_reachable": redis_ok,
            "item_cache_age_s": round(snapshot.age(), 3) if snapshot else None,
            "worker_pid": os.getpid(),
            "details": {k: v for k, v in {"model_error": self._model_error(),
                                          "redis_error": self.health.last_error,
                                          "online_store_error": self.health.lost,
                                          "item_cache_error": self.cache.last_error}.items() if v},
        }

    def _model_error(self) -> str | None:
        if self.variants.experiment is None:
            return self.holder.last_error
        problems = self.variants.problems()
        return "; ".join(f"variant {variant!r}: {why}" for variant, why in sorted(problems.items())) or None

    def wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.variants.ready:
                return True
            time.sleep(0.1)
        return self.variants.ready
