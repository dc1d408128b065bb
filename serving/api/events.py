from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body
from pydantic import Field

from serving.api.deps import ApiKeyRequired, ServicesDep
from serving.api.errors import ServingError
from serving.api.schemas import ErrorResponse, EventBatch, EventIn, EventsResponse
from serving.events import DuplicateInFlight, InvalidEvents
from serving.features import OnlineStoreUnavailable
from serving.recommender import ModelNotReady
from serving.settings import EVENTS_LIMIT

router = APIRouter(tags=["events"])


@router.post("/events", response_model=EventsResponse, dependencies=[ApiKeyRequired],
             responses={401: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
                        422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
def post_events(services: ServicesDep,
                body: EventIn | Annotated[list[EventIn], Field(max_length=EVENTS_LIMIT)] | EventBatch = Body(
                    description="one event, a list of events, or {\"events\": [...]}")) -> EventsResponse:
    """Record interactions: validated, appended durably to the event log (raw events layout) and
    pushed to the online store, so the next recommendation excludes these items and uses the new
    history. Any invalid event rejects the whole batch (422) and nothing is written. More than
    `max_events_per_request` events: 413. An event whose `event_id` was acknowledged before is
    counted in `duplicates` and not written again; one being written by another request right now
    makes this a 409 (retry). With `api_key` set, the key is required (401)."""
    events = body.events if isinstance(body, EventBatch) else body if isinstance(body, list) else [body]
    settings = services.settings
    if len(events) > settings.max_events_per_request:
        raise ServingError(413, f"at most {settings.max_events_per_request} events per request, got {len(events)}")
    try:
        services.recommender.model()
    except ModelNotReady as error:
        raise ServingError(503, str(error)) from error
    rows = [{"user_id": e.user_id, "item_id": e.item_id, "event_type": e.event_type,
             "event_timestamp": e.timestamp or _now(), "device": e.device or settings.default_device,
             "rating": e.rating, "event_id": e.event_id} for e in events]
    known = services.recommender.known_items if settings.events_require_known_item else None
    try:
        result = services.events.ingest(rows, known, push=services.health.available, lost=services.health.lost)
    except InvalidEvents as error:
        services.metrics.events.labels("rejected").inc(len(events))
        raise ServingError(422, str(error), error.details) from error
    except DuplicateInFlight as error:
        raise ServingError(409, str(error)) from error
    except OnlineStoreUnavailable as error:  # event ids cannot be checked: nothing was written
        raise ServingError(503, f"events with an event_id need the online store: {error}") from error
    if not result.online_updated and services.health.available and not services.health.lost:
        services.health.down(result.error or "push failed")
    services.metrics.events.labels("accepted").inc(result.accepted)
    services.metrics.events.labels("duplicate").inc(result.duplicates)
    return EventsResponse(accepted=result.accepted, duplicates=result.duplicates, users=result.users,
                          files=[_in_event_log(path, settings.events_dir) for path in result.files],
                          online_updated=result.online_updated, degraded=not result.online_updated,
                          error=result.error)


def _in_event_log(path: str, events_dir: Path) -> str:
    """A file's path within the event log folder (a response shows no server paths)."""
    try:
        return str(Path(path).relative_to(events_dir))
    except ValueError:
        return Path(path).name


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
