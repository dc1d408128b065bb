"""Prometheus metrics of one app instance (own registry, so several apps can live in one process).

With several worker processes (`RECSYS_SERVING_WORKERS` > 1), `python -m serving` points
prometheus_client's multiprocess folder at a fresh directory (`SHARED_METRICS_ENV`) before the
workers start: every process writes its values there and `/metrics`, whichever worker answers,
reports the sum over workers (counters, histograms) or the worst live value (gauges: the oldest
item cache, any worker without Redis, the bundles in service). Our own variable says so, because
importing Feast sets `PROMETHEUS_MULTIPROC_DIR` in every process, one worker or several.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

SHARED_METRICS_ENV = "RECSYS_SERVING_SHARED_METRICS_DIR"
PROMETHEUS_DIR_ENVS = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")  # both names are read


def share_metrics_between_workers(directory: str) -> None:
    """Before the workers start (they inherit the environment): one metrics folder for all."""
    os.environ[SHARED_METRICS_ENV] = directory
    for name in PROMETHEUS_DIR_ENVS:
        os.environ[name] = directory

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
                   0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
STAGES = ("retrieval", "features", "ranking", "rules")


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._model_versions: set[str] = set()  # marked 1 in recsys_model_info
        r = self.registry
        self.requests = Counter("recsys_http_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("recsys_http_request_duration_seconds", "HTTP request latency by endpoint",
                                 ["endpoint", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("recsys_stage_duration_seconds",
                               "Recommendation stage latency (retrieval, features, ranking, rules)",
                               ["endpoint", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.candidates = Histogram("recsys_candidates", "Candidates scored per recommendation",
                                    buckets=(0, 10, 50, 100, 200, 300, 400, 500, 600, 800, 1000, 2000),
                                    registry=r)
        self.responses = Counter("recsys_recommendations_total", "Recommendations by kind",
                                 ["kind"], registry=r)  # personalized | cold_start | degraded
        self.variant_responses = Counter("recsys_experiment_recommendations_total",
                                         "Recommendations per A/B variant (only with an experiment configured)",
                                         ["experiment", "variant", "model_version"], registry=r)
        self.events = Counter("recsys_events_total", "Events accepted by POST /events", ["outcome"], registry=r)
        self.model_info = Gauge("recsys_model_info", "Bundles loaded: 1 for those in service (one per "
                                "distinct variant bundle), 0 for earlier ones",
                                ["version"], registry=r, multiprocess_mode="livemax")
        self.reloads = Counter("recsys_model_reloads_total", "Bundle reload attempts", ["result"], registry=r)
        self.redis_up = Gauge("recsys_online_store_up", "1 when Redis answered the last health check",
                              registry=r, multiprocess_mode="livemin")
        self.online_store_lost = Counter("recsys_online_store_lost_total", "Health checks that found Redis "
                                         "answering without the materialization marker (store lost)", registry=r)
        self.online_store_materialized = Gauge("recsys_online_store_materialized", "1 when the last health "
                                               "check found the materialization marker", registry=r,
                                               multiprocess_mode="livemin")
        self.item_cache_age = Gauge("recsys_item_cache_age_seconds", "Age of the item feature snapshot",
                                    registry=r, multiprocess_mode="livemax")
        self.item_cache_refresh = Histogram("recsys_item_cache_refresh_seconds", "Item cache refresh duration",
                                            ["outcome"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                            registry=r)
        self.new_items = Gauge("recsys_new_items", "Items created after the bundle and served without a "
                               "retrain, per bundle in service", ["bundle"], registry=r, multiprocess_mode="livemax")
        self.served_log = Counter("recsys_served_log_records_total", "Served-log records",
                                  ["outcome"], registry=r)  # queued | written | dropped | failed

    def exposition(self) -> bytes:
        """The Prometheus text format: this app's registry, or every worker's values."""
        shared = os.environ.get(SHARED_METRICS_ENV)
        if shared:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=shared)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def close(self) -> None:
        """This process stops serving: its live gauges leave the workers' aggregate."""
        shared = os.environ.get(SHARED_METRICS_ENV)
        if shared:
            multiprocess.mark_process_dead(os.getpid(), path=shared)

    @contextmanager
    def time_stage(self, stage: str, timings: dict[str, float], endpoint: str = "recommendations") -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            timings[stage] = timings.get(stage, 0.0) + seconds
            self.stage.labels(endpoint, stage).observe(seconds)

    def set_models(self, versions: set[str]) -> None:
        """Mark exactly `versions` as in service (1); bundles served earlier drop to 0."""
        for previous in self._model_versions - versions:
            self.model_info.labels(previous).set(0)
        self._model_versions = set(versions)
        for version in versions:
            self.model_info.labels(version).set(1)
