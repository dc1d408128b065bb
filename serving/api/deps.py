"""Dependencies: the app's services and validated query parameters (async: they run on the event
loop, so an overloaded thread pool cannot delay validation or load shedding)."""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from core.schema import DEVICES
from core.time_window import time_window
from serving.api.errors import ServingError
from serving.api.schemas import EARLIEST_TIME, ID_MAX, LATEST_TIME, as_utc, representable
from serving.services import Services
from serving.settings import K_LIMIT


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def k_param(services: ServicesDep,
                  k: Annotated[int | None, Query(ge=1, le=K_LIMIT, description=(
                      "number of items (1..max_k, default default_k); /openapi.json gives the served max_k"))] = None
                  ) -> int:
    settings = services.settings
    if k is None:
        return settings.default_k
    if not 1 <= k <= settings.max_k:
        raise ServingError(422, f"k must be between 1 and {settings.max_k}, got {k}",
                           [{"field": "query.k", "message": f"must be in [1, {settings.max_k}]", "input": k}])
    return k


async def device_param(services: ServicesDep,
                       device: Annotated[str | None, Query(max_length=32,
                                                           description=f"request context: one of {list(DEVICES)}")] = None
                       ) -> str:
    if device is None:
        return services.settings.default_device
    if device not in DEVICES:
        raise ServingError(422, f"device must be one of {list(DEVICES)}, got {device!r}",
                           [{"field": "query.device", "message": f"must be one of {list(DEVICES)}",
                             "input": device}])
    return device


# ISO 8601 only: a bare number such as 0.5 is not taken for epoch seconds.
ISO_DATETIME = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:\d{2})?$"


async def time_param(time: Annotated[str | None, Query(
        max_length=40, pattern=ISO_DATETIME,
        description="request context: the request time, ISO 8601 (e.g. 2026-03-01T12:00:00Z; UTC if no "
                    "offset); default now. Within the time window: not before RECSYS_EARLIEST_EVENT_TIME, "
                    "not more than RECSYS_MAX_FUTURE_SKEW ahead of the server's clock")] = None
                     ) -> datetime | None:
    if time is None:
        return None
    try:
        when = datetime.fromisoformat(time)
    except ValueError as error:
        raise _time_error(f"not a valid date and time: {error}") from None
    when = as_utc(when)
    problem = time_window().problem(when)
    if problem:
        raise _time_error(f"is {problem}")
    if not representable(when):  # only where the window is set wider
        raise _time_error(f"must lie between {EARLIEST_TIME:%Y-%m-%d} and {LATEST_TIME:%Y-%m-%d}")
    return when


def _time_error(message: str) -> ServingError:
    return ServingError(422, f"time {message}", [{"field": "query.time", "message": message}])


async def require_api_key(services: ServicesDep,
                          x_api_key: Annotated[str | None, Security(APIKeyHeader(name="X-API-Key", auto_error=False))],
                          bearer: Annotated[HTTPAuthorizationCredentials | None,
                                            Security(HTTPBearer(auto_error=False))]) -> None:
    """With `api_key` set, the request must carry it (X-API-Key, or Authorization: Bearer)."""
    expected = services.settings.api_key
    if expected is None:
        return
    given = x_api_key or (bearer.credentials if bearer is not None else "")
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise ServingError(401, "a valid API key is required (header X-API-Key or Authorization: Bearer)",
                           headers={"WWW-Authenticate": "Bearer"})


KParam = Annotated[int, Depends(k_param)]
DeviceParam = Annotated[str, Depends(device_param)]
TimeParam = Annotated[datetime | None, Depends(time_param)]
UserId = Annotated[int, Path(ge=0, le=ID_MAX, description="user id, 0..2^53-1")]
ItemId = Annotated[int, Path(ge=0, le=ID_MAX, description="item id, 0..2^53-1")]
ApiKeyRequired = Depends(require_api_key)
