from __future__ import annotations

from fastapi import APIRouter, Request, Response

from serving.api.deps import DeviceParam, KParam, ServicesDep, TimeParam, UserId
from serving.api.errors import ServingError
from serving.api.schemas import ErrorResponse, RecommendationResponse
from serving.recommender import ModelNotReady, Overloaded

router = APIRouter(tags=["recommendations"])


@router.get("/recommendations/{user_id}", response_model=RecommendationResponse,
            responses={422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
async def recommendations(request: Request, services: ServicesDep, k: KParam, device: DeviceParam,
                          time: TimeParam, user_id: UserId) -> Response:
    """Top-k items for a user: two-tower + trending + co-visitation candidates, LightGBM ranking,
    business rules. Unknown users get context-aware trending (`cold_start: true`); when the
    online store is down, the trending list (`degraded: true`). When more than `max_pending`
    requests are in flight, 503 at once (load shedding) instead of a queue that only grows."""
    limit = services.settings.max_pending
    if limit and services.inflight >= limit:
        services.metrics.responses.labels("shed").inc()
        raise ServingError(503, f"overloaded: {services.inflight} requests in flight; try again shortly")
    services.inflight += 1  # only touched on the event loop
    try:
        result = await services.recommender.recommend_async(user_id, k, device, time)
    except ModelNotReady as error:
        raise ServingError(503, str(error)) from error
    except Overloaded as error:
        services.metrics.responses.labels("shed").inc()
        raise ServingError(503, f"overloaded: {error}") from error
    finally:
        services.inflight -= 1
    request.state.request_id = result.request_id
    body = RecommendationResponse(
        request_id=result.request_id, user_id=result.user_id, model_version=result.model_version,
        variant=result.variant, k=k,
        items=result.items, cold_start=result.cold_start, degraded=result.degraded, reasons=result.reasons,
        n_candidates=result.n_candidates, timings_ms=result.timings_ms)
    # Validated once, above; returning the model would have FastAPI validate it again (response_model).
    return Response(body.model_dump_json(), media_type="application/json")
