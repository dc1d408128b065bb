"""The FastAPI application: `create_app(settings)`; `python -m serving` runs it under uvicorn.

Endpoints (OpenAPI docs at /docs):
  GET  /recommendations/{user_id}?k=10&device=&time=   ranked items, sources, model version
  GET  /similar-items/{item_id}?k=10                   FAISS neighbours + co-visitation
  POST /events                                         log events, push the recent history online
  GET  /healthz  /readyz  /metrics  /model             operations

The lifespan builds `serving.services.Services` (Feast store, item cache, model holder, served
log), loads the bundle and starts the background threads; shutdown stops them and flushes the log.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from serving.api import events, items, ops, recommendations
from serving.api.errors import install_error_handlers
from serving.services import Services
from serving.settings import ServingSettings, get_serving_settings

log = logging.getLogger("serving")


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    settings = settings or get_serving_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services = Services(settings)
        app.state.services = services
        services.start()
        for variant, why in services.variants.problems().items():
            log.error("serving without a model for %s: %s", variant, why)
        try:
            yield
        finally:
            services.stop()

    app = FastAPI(
        title="recsys serving",
        version="1.0",
        description="Two-stage recommendations (two-tower + FAISS retrieval, LightGBM ranking) over "
                    "Feast online features.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in (recommendations.router, items.router, events.router, ops.router):
        app.include_router(router)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            services = getattr(request.app.state, "services", None)
            if services is not None:
                metrics = services.metrics
                metrics.requests.labels(endpoint, request.method, str(status)).inc()
                metrics.latency.labels(endpoint, request.method).observe(time.perf_counter() - started)

    return app
