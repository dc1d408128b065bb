"""Dependencies: the app's services and validated query parameters (async: they run on the event
loop, so an overloaded thread pool cannot delay validation or load shedding)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Query, Request

from serving.api.errors import ServingError
from serving.services import Services
from training.data.schema import DEVICES
from training.data.time_window import time_window


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def k_param(services: ServicesDep,
            k: Annotated[int | None, Query(description="number of items (1..max_k, default default_k)")] = None) -> int:
    settings = services.settings
    if k is None:
        return settings.default_k
    if not 1 <= k <= settings.max_k:
        raise ServingError(422, f"k must be between 1 and {settings.max_k}, got {k}",
                           [{"field": "query.k", "message": f"must be in [1, {settings.max_k}]", "input": k}])
    return k


async def device_param(services: ServicesDep,
                 device: Annotated[str | None, Query(description=f"request context: one of {list(DEVICES)}")] = None
                 ) -> str:
    if device is None:
        return services.settings.default_device
    if device not in DEVICES:
        raise ServingError(422, f"device must be one of {list(DEVICES)}, got {device!r}",
                           [{"field": "query.device", "message": f"must be one of {list(DEVICES)}",
                             "input": device}])
    return device


async def time_param(time: Annotated[datetime | None, Query(
        description="request context: the request time (ISO 8601, UTC if no offset); default now. Within "
                    "the time window: not before RECSYS_EARLIEST_EVENT_TIME, not more than "
                    "RECSYS_MAX_FUTURE_SKEW ahead of the server's clock")] = None
               ) -> datetime | None:
    problem = None if time is None else time_window().problem(time)
    if problem:
        raise ServingError(422, f"time is {problem}", [{"field": "query.time", "message": problem}])
    return time


KParam = Annotated[int, Depends(k_param)]
DeviceParam = Annotated[str, Depends(device_param)]
TimeParam = Annotated[datetime | None, Depends(time_param)]
