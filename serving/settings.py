"""Serving settings: every field can be set as `RECSYS_SERVING_<FIELD>` in the environment (or `.env`).

Paths default to the training layout (`core.settings.Settings`), so `python -m serving` on the
machine that trained serves the latest bundle against the same Feast repository and event log.

An A/B experiment is one JSON value (`ExperimentSettings`), e.g.

    RECSYS_SERVING_EXPERIMENT='{"name": "ranker-v2", "variants": {
        "control": {"weight": 50, "bundle": "latest"},
        "treatment": {"weight": 50, "bundle": "20261122T031500Z-1a2b3c"}}}'
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.schema import DEVICES
from core.settings import get_settings as get_training_settings

DiversityMode = Literal["none", "category_cap", "mmr"]
K_LIMIT = 1_000  # the largest max_k (a request's k is bounded by max_k)
EVENTS_LIMIT = 10_000  # the largest max_events_per_request (the events list's bound in the schema)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
LATEST_BUNDLE = "latest"
# Experiment and variant names end up in `python -m monitoring ab --variants name=weight,...` and in
# metric labels.
Slug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]


class VariantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(ge=0, allow_inf_nan=False, description="relative share of the users "
                                                                 "(50/50 and 1/1 are the same split)")
    bundle: str | None = Field(None, description="a version directory under models_dir, or 'latest' "
                                                 "(hot-reloaded); default: the service's bundle_version")

    @field_validator("bundle")
    @classmethod
    def _bundle_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or value.startswith(".") or "/" in value or "\\" in value):
            raise ValueError(f"bundle must be {LATEST_BUNDLE!r} or a version directory name, got {value!r}")
        return value


class ExperimentSettings(BaseModel):
    """An A/B test: users are hashed into variants (`core.experiment.assign_variant`), each variant
    is served by its own bundle and logged with the served lists."""

    model_config = ConfigDict(extra="forbid")

    name: Slug = Field(description="experiment name (the report title; the default salt)")
    salt: str | None = Field(None, min_length=1, description="hash salt; default: the name. A new salt "
                                                             "reshuffles the users between variants")
    control: Slug = Field("control", description="the variant the others are compared with")
    variants: dict[Slug, VariantSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_split(self) -> ExperimentSettings:
        if self.control not in self.variants:
            raise ValueError(f"control variant {self.control!r} is not one of the variants {sorted(self.variants)}")
        if not any(v.weight > 0 for v in self.variants.values()):
            raise ValueError("variant weights must not all be 0")
        return self

    @property
    def weights(self) -> dict[str, float]:
        return {name: variant.weight for name, variant in self.variants.items()}

    def split(self) -> str:
        """The split as `python -m monitoring ab --variants` takes it: `control=50,treatment=50`."""
        return ",".join(f"{name}={weight:.12g}" for name, weight in sorted(self.weights.items()))


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_SERVING_", env_file=".env", extra="ignore")

    # -- process --------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="address to bind (a non-loopback one needs api_key, see the README)")
    port: int = Field(8000, ge=1, le=65535, description="port to listen on")
    log_level: str = Field("info", description="uvicorn and serving log level")
    num_threads: int = Field(1, ge=1, description="FAISS / LightGBM threads per request (the process "
                                                  "serves requests from a thread pool)")
    # Measured (benchmarks/serving_load.py, 2 workers, 200 req/s for 30 s): p99 369 ms with
    # Python's default 5 ms, 121 ms with 1 ms.
    gil_switch_interval_ms: float | None = Field(
        1.0, gt=0, description="Python's thread switch interval (None: Python's 5 ms). Lower lets the event loop "
                               "take new requests while a batch computes, at some switching cost")
    gc_freeze: bool = Field(True, description="after start-up, move everything alive (Feast, the bundle) out of "
                                              "the cyclic garbage collector's sight (gc.freeze), so its full "
                                              "collections walk only what requests allocate")
    workers: int = Field(1, ge=1, description="server processes (uvicorn workers) sharing the port, each with "
                                              "its own bundle, item cache and batcher: one Python process "
                                              "computes on one core at a time; metrics cover all of them")

    # -- where things are -----------------------------------------------------------------------
    feature_repo: Path = Field(default_factory=lambda: get_training_settings().repo_root,
                               description="directory holding feature_store.yaml")
    models_dir: Path = Field(default_factory=lambda: get_training_settings().models_dir,
                             description="where bundles are published (default: <artifacts_dir>/models)")
    bundle_version: str = Field(LATEST_BUNDLE, description="a version directory, or 'latest' (hot-reloaded)")
    events_dir: Path = Field(default_factory=lambda: get_training_settings().events_dir,
                             description="event log the next training run reads (raw events layout)")
    log_dir: Path = Field(default_factory=lambda: get_training_settings().serving_log_dir,
                          description="served feature vectors and lists, for monitoring")

    # -- online store ---------------------------------------------------------------------------
    redis_url: str | None = Field(None, description="overrides feature_store.yaml's online_store "
                                                    "connection string (Feast format host:port[,k=v])")
    redis_connect_timeout_s: float = Field(0.25, gt=0, description="Redis connect timeout per call")
    redis_socket_timeout_s: float = Field(0.5, gt=0, description="Redis read/write timeout per call")
    health_check_interval_s: float = Field(1.0, gt=0, description="background Redis ping period")

    online_reads: Literal["direct", "feast"] = Field(
        "direct", description="direct: user, user x category and item-cache reads straight from the hashes "
                              "Feast's Redis store writes (one pipelined round trip each); feast: Feast's "
                              "public get_online_features (~2 ms more per read; the switch back for a Feast "
                              "upgrade that changes its Redis internals)")

    # -- item feature cache ---------------------------------------------------------------------
    item_feature_source: Literal["cache", "online"] = Field(
        "cache", description="cache: the local catalog snapshot; online: a Feast call for all candidates "
                             "per request (the naive path, for comparison)")
    item_cache_refresh_s: float = Field(20.0, gt=0, description="period of the background refresh "
                                        "(each sweep is spread over half of it)")
    item_cache_max_staleness_s: float = Field(60.0, gt=0, description="older snapshots are not used "
                                              "while the online store answers (direct reads instead)")
    item_cache_full_sweep_s: float = Field(600.0, gt=0, description="a refresh reads every item's write "
                                           "stamps at least this often, even when the views' write tokens "
                                           "say nothing was written")
    item_cache_batch_size: int = Field(250, ge=1, description="items per Feast read of a refresh")
    item_cache_pause_s: float = Field(0.002, ge=0, description="pause between refresh batches, so "
                                      "request threads are not starved of the GIL")

    # -- candidates: unset = the bundle's own settings (manifest "candidates"), i.e. those its
    # ranker was trained with; retrieval_rank and friends would drift otherwise.
    n_ann: int | None = Field(None, ge=1, description="FAISS top-N per request (bundle default: 500)")
    n_trending: int | None = Field(None, ge=0, description="trending candidates per request (bundle default)")
    n_covisit: int | None = Field(None, ge=0, description="co-visitation candidates per request (bundle default)")
    covisit_seeds: int | None = Field(None, ge=0, description="recent items seeding co-visitation (bundle default)")
    n_als: int | None = Field(None, ge=0, description="ALS candidates per request, for bundles with the ALS source "
                                                     "(bundle default)")
    n_sasrec: int | None = Field(None, ge=0, description="SASRec candidates per request, for bundles with the "
                                                         "SASRec source (bundle default)")
    n_item_knn: int | None = Field(None, ge=0, description="item-kNN candidates per request, for bundles with the "
                                                           "item-kNN source (bundle default)")
    n_content: int | None = Field(None, ge=0, description="content candidates per request, for bundles with the "
                                                          "content source (bundle default)")
    cold_start_candidates: int = Field(200, ge=1, description="trending items re-ranked for a cold user")

    def candidate_overrides(self) -> dict[str, int]:
        """The candidate settings given explicitly; the rest come from each bundle's manifest."""
        names = ("n_ann", "n_trending", "n_covisit", "covisit_seeds", "n_als", "n_sasrec", "n_item_knn", "n_content")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    # -- micro-batching ---------------------------------------------------------------------------
    max_batch: int = Field(16, ge=1, description="requests scored together when they queue up (1: off)")
    batch_workers: int = Field(2, ge=1, description="threads running batches (one can wait on Redis "
                                                    "while another computes)")
    max_pending: int = Field(64, ge=0, description="requests allowed to wait for a batch; more are "
                                                    "answered 503 at once (load shedding; 0: unbounded)")

    # -- request bounds -------------------------------------------------------------------------
    default_k: int = Field(10, ge=1, description="list length when a request gives no k")
    max_k: int = Field(100, ge=1, le=K_LIMIT, description=f"largest k a request may ask for (at most {K_LIMIT}); "
                                                          "/openapi.json states it")
    default_device: str = Field("mobile", description="device context when a request gives none")
    max_body_bytes: int = Field(2_000_000, ge=1, description="request bodies above this many bytes are "
                                "answered 413 before they are read (Content-Length, or counted as they stream)")

    # -- access ---------------------------------------------------------------------------------
    api_key: SecretStr | None = Field(None, description="when set, POST /events requires it (header X-API-Key "
                                      "or Authorization: Bearer); reads are never authenticated")
    allow_unauthenticated: bool = Field(False, description="start on a non-loopback host without api_key "
                                        "(refused otherwise)")
    bundle_check_timeout_s: float = Field(120.0, gt=0, description="a bundle is loaded and smoke-scored in a "
                                          "child process before it is served; longer than this rejects it")

    # -- business rules -------------------------------------------------------------------------
    exclude_seen: bool = Field(True, description="leave out items in the user's recent history")
    dedup: bool = Field(True, description="one entry per item in a list")
    diversity: DiversityMode = Field("category_cap", description="category_cap, mmr or none")
    max_per_category: int = Field(4, ge=1, description="category_cap: at most this many per category")
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0, description="mmr: relevance weight")
    freshness_boost: float = Field(0.5, ge=0.0, description="added to a new item's score, in units "
                                   "of the request's ranker-score standard deviation")

    # -- served log -----------------------------------------------------------------------------
    log_sample_rate: float = Field(0.01, ge=0.0, le=1.0, description="share of requests whose features and "
                                   "lists go to the served log (monitoring)")
    log_queue_size: int = Field(1_000, ge=1, description="served-log records waiting to be written (more are dropped "
                                "and counted)")
    log_flush_s: float = Field(2.0, gt=0, description="served-log write period")
    log_max_rows_per_request: int | None = Field(None, ge=1, description="None: every scored candidate")

    # -- hot reload / events --------------------------------------------------------------------
    reload_interval_s: float = Field(15.0, gt=0, description="how often `latest` is checked for a new bundle")
    new_items_check_s: float = Field(30.0, ge=0, description="how often the online store is asked for items "
                                     "created after the bundle, which are then served without a retrain "
                                     "(bundles with a content source; 0: never)")
    new_items_max: int = Field(10_000, ge=0, le=1_000_000, description="at most this many items are added to "
                               "a bundle's catalog (the highest ids)")
    events_require_known_item: bool = Field(True, description="POST /events rejects items not in the bundle's "
                                            "catalog")
    max_events_per_request: int = Field(1_000, ge=1, le=EVENTS_LIMIT, description="events per POST /events "
                                        f"(at most {EVENTS_LIMIT}, the schema's bound); more are answered 413")
    event_log_group_wait_ms: float = Field(2.0, ge=0, le=1_000, description="the event-log writer waits this "
                                           "long for more requests to put in the same file (0: only those "
                                           "already queued)")
    idempotency_ttl_s: int = Field(86_400, ge=1, description="how long an acknowledged event_id is remembered "
                                   "(in Redis) to answer its retries as duplicates")

    # -- explorer -------------------------------------------------------------------------------
    ui_enabled: bool = Field(True, description="serve the recommendation explorer at /ui and the reports "
                                               "folder, read-only, at /reports")
    reports_dir: Path = Field(default_factory=lambda: get_training_settings().reports_dir,
                              description="the training and monitoring reports the explorer links to")

    # -- A/B test -------------------------------------------------------------------------------
    experiment: ExperimentSettings | None = Field(None, description="JSON; None: one bundle "
                                                  "(bundle_version) for everybody, variant null")

    @field_validator("default_device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in DEVICES:
            raise ValueError(f"default_device must be one of {DEVICES}")
        return value

    @model_validator(mode="after")
    def _k_bounds(self) -> ServingSettings:
        if self.default_k > self.max_k:
            raise ValueError("default_k must not exceed max_k")
        return self

    def variant_bundles(self) -> dict[str | None, str]:
        """Variant -> bundle version it is served by ({None: bundle_version} without an experiment)."""
        if self.experiment is None:
            return {None: self.bundle_version}
        return {name: variant.bundle or self.bundle_version for name, variant in self.experiment.variants.items()}

    def check_exposure(self) -> None:
        """Refuse to serve a non-loopback host without an API key, unless told to."""
        if self.host in LOOPBACK_HOSTS or self.host.startswith("127.") or self.api_key is not None:
            return
        if not self.allow_unauthenticated:
            raise ValueError(f"refusing to listen on {self.host} without RECSYS_SERVING_API_KEY: anyone who can "
                             "reach it could write events; set a key, or RECSYS_SERVING_ALLOW_UNAUTHENTICATED=true")

    def online_connection_string(self, configured: str) -> str:
        """The Feast Redis connection string with socket timeouts, so a dead or hung Redis costs a
        bounded time per call instead of blocking a request."""
        base = self.redis_url or configured
        options = {part.split("=", 1)[0] for part in base.split(",")[1:] if "=" in part}
        extra = []
        if "socket_connect_timeout" not in options:
            extra.append(f"socket_connect_timeout={self.redis_connect_timeout_s}")
        if "socket_timeout" not in options:
            extra.append(f"socket_timeout={self.redis_socket_timeout_s}")
        return ",".join([base, *extra])


@lru_cache(maxsize=1)
def get_serving_settings() -> ServingSettings:
    return ServingSettings()
