"""Request and response models (they document the API in /docs)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.schema import EVENT_TYPES
from core.time_window import time_window
from serving.settings import EVENTS_LIMIT

# Ids through the API (paths and bodies): 0..2^53-1. Tighter than the raw schema's int64 because
# JSON numbers are doubles for most clients (and in the OpenAPI bounds): larger ids would not
# round-trip exactly.
ID_MAX = 2**53 - 1
# The times the request path can represent (pandas' nanosecond timestamps end in 2262); the
# window allowed within them is the event-time rule's.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST_TIME = datetime(2262, 1, 1, tzinfo=timezone.utc)


def as_utc(when: datetime) -> datetime:
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def representable(when: datetime) -> bool:
    return EARLIEST_TIME <= as_utc(when) < LATEST_TIME


class ErrorResponse(BaseModel):
    error: str = Field(description="what went wrong, in words")
    details: list[dict[str, Any]] | None = Field(None, description="per-field or per-event problems")
    request_id: str | None = None


class RecommendedItem(BaseModel):
    item_id: int
    score: float = Field(description="final score, after business rules (e.g. freshness boost)")
    ranker_score: float | None = Field(description="the LightGBM ranker's score (null in the trending fallback)")
    source: str = Field(description="candidate source: two_tower | trending | covisit | als | sasrec | item_knn | "
                                    "content")
    category: str | None = None
    is_new: bool = False


class RecommendationResponse(BaseModel):
    request_id: str
    user_id: int
    model_version: str
    variant: str | None = Field(None, description="the user's A/B variant (null without an experiment)")
    k: int
    items: list[RecommendedItem]
    cold_start: bool = Field(description="the user has no online history: context-aware trending items")
    degraded: bool = Field(description="part of the online store did not answer: a fallback was used")
    reasons: list[str] = Field(default_factory=list, description="why the response is degraded, if it is")
    n_candidates: int
    timings_ms: dict[str, float]


class SimilarItem(BaseModel):
    item_id: int
    score: float
    source: str
    category: str | None = None


class SimilarItemsResponse(BaseModel):
    item_id: int
    model_version: str
    k: int
    embedding_neighbours: list[SimilarItem] = Field(description="FAISS neighbours of the item's two-tower embedding")
    covisitation: list[SimilarItem] = Field(description="items most co-visited with it (training events)")


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "user_id": 42, "item_id": 1234, "event_type": "click", "timestamp": "2026-03-01T12:00:00Z",
        "device": "mobile", "event_id": "3f2a9c1e-0b7d-4c55-9a61-2e8d7f4b1c20"}})

    user_id: int = Field(ge=0, le=ID_MAX, description="0..2^53-1 (exact as a JSON number)")
    item_id: int = Field(ge=0, le=ID_MAX, description="0..2^53-1 (exact as a JSON number)")
    event_type: Literal[EVENT_TYPES] = Field(description="the kind of interaction")  # type: ignore[valid-type]
    timestamp: datetime | None = Field(None, description="UTC if no offset is given; default: now. Within the "
                                       "time window: not before RECSYS_EARLIEST_EVENT_TIME, not more than "
                                       "RECSYS_MAX_FUTURE_SKEW ahead of the server's clock")
    device: str | None = Field(None, max_length=32, description="mobile | desktop | tablet; default from settings")
    rating: float | None = Field(None, ge=1, le=5, allow_inf_nan=False, description="1..5, optional")
    event_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$",
                                 description="idempotency key: an event whose id was acknowledged before "
                                             "(within idempotency_ttl_s) is not written again")

    @field_validator("timestamp")
    @classmethod
    def _within_time_window(cls, value: datetime | None) -> datetime | None:
        problem = None if value is None else time_window().problem(value)
        if problem:
            raise ValueError(problem)
        if value is not None and not representable(value):  # only where the window is set wider
            raise ValueError(f"timestamp must lie between {EARLIEST_TIME:%Y-%m-%d} and {LATEST_TIME:%Y-%m-%d}")
        return value


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(max_length=EVENTS_LIMIT)


class EventsResponse(BaseModel):
    accepted: int = Field(description="events written (duplicates not included)")
    duplicates: int = Field(0, description="events whose event_id was acknowledged before: not written again")
    users: list[int]
    files: list[str] = Field(description="event-log parquet files written, relative to the event log folder "
                                         "(raw events layout)")
    online_updated: bool = Field(description="the users' recent history was pushed to the online store")
    degraded: bool
    error: str | None = None


class VariantInfo(BaseModel):
    weight: float
    share: float = Field(description="the variant's share of the users")
    bundle: str = Field(description="the configured bundle: 'latest' or a version directory")
    version: str | None = Field(description="the bundle version in service (null: not loaded)")
    loaded: bool
    last_reload_error: str | None = None


class ExperimentInfo(BaseModel):
    name: str
    control: str
    variants: dict[str, VariantInfo]


class ModelResponse(BaseModel):
    version: str = Field(description="the bundle in service (the control's, with an experiment)")
    bundle_dir: str = Field(description="the bundle's directory name under models_dir (no filesystem path)")
    loaded_at: datetime
    manifest: dict[str, Any]
    last_reload_error: str | None = None
    rejected_bundles: dict[str, str] = Field(default_factory=dict)
    experiment: ExperimentInfo | None = Field(None, description="the A/B test, if one is configured")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    model_loaded: bool
    model_version: str | None
    variants: dict[str, VariantInfo] | None = Field(None, description="per A/B variant (null without an experiment)")
    redis_reachable: bool
    item_cache_age_s: float | None
    worker_pid: int = Field(description="the server process that answered (one of RECSYS_SERVING_WORKERS)")
    details: dict[str, Any] = Field(default_factory=dict)
