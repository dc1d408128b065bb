"""The FastAPI application: `create_app(settings)`; `python -m serving` runs it under uvicorn.

Endpoints (OpenAPI docs at /docs):
  GET  /recommendations/{user_id}?k=10&device=&time=   ranked items, sources, model version
  GET  /similar-items/{item_id}?k=10                   FAISS neighbours + co-visitation
  POST /events                                         log events, push the recent history online
  GET  /healthz  /readyz  /metrics  /model             operations
  GET  /ui  /ui/api/*  /reports/*                      the recommendation explorer (RECSYS_SERVING_UI_ENABLED)

The lifespan builds `serving.services.Services` (Feast store, item cache, model holder, served
log), loads the bundle and starts the background threads; shutdown stops them and flushes the log.
"""

from __future__ import annotations

import gc
import sys
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api import events, items, ops, recommendations
from serving.api.errors import install_error_handlers
from serving.api.explorer import install_explorer
from serving.api.middleware import BodySizeLimit, CatchAll
from serving.redact import get_logger
from serving.services import Services
from serving.settings import ServingSettings, get_serving_settings

log = get_logger("serving")
for _server_logger in ("uvicorn.error", "uvicorn.access"):  # their records are redacted too
    get_logger(_server_logger)


class RequestMetrics:
    """Counts every HTTP request and observes its latency, per route template and status (a pure
    ASGI middleware: Starlette's `BaseHTTPMiddleware` costs a task and a stream per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")  # set by the router on a match
            endpoint = getattr(route, "path", None) or "unmatched"
            state = scope.get("app").state if scope.get("app") is not None else None
            services = getattr(state, "services", None)
            if services is not None:
                services.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
                services.metrics.latency.labels(endpoint, scope["method"]).observe(time.perf_counter() - started)


def _freeze_startup_objects() -> None:
    """A full collection walks every tracked object: ~430k after importing Feast, torch and pandas,
    measured at 260 ms here, during which the process answers nothing. What start-up built lives
    as long as the process, so it is frozen (the use of gc.freeze Python's docs give for servers)."""
    gc.collect()
    gc.freeze()
    log.info("%d start-up objects frozen out of garbage collection", gc.get_freeze_count())


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    settings = settings or get_serving_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.gil_switch_interval_ms is not None:
            sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
        services = Services(settings)
        app.state.services = services
        services.start()
        if settings.gc_freeze:
            _freeze_startup_objects()
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
    _state_max_k(app, settings.max_k)
    if settings.ui_enabled:
        install_explorer(app)

    # Outermost last: metrics see every answer, 413s and last-resort 500s included.
    app.add_middleware(CatchAll)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics)
    return app


def _state_max_k(app: FastAPI, max_k: int) -> None:
    """/openapi.json gives k's bound as served (the setting max_k, not the schema's K_LIMIT)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for operation in (op for path in schema.get("paths", {}).values() for op in path.values()):
                for parameter in operation.get("parameters", []):
                    if parameter.get("name") == "k":
                        _set_maximum(parameter.get("schema", {}), max_k)
        return app.openapi_schema

    app.openapi = openapi


def _set_maximum(schema: dict, maximum: int) -> None:
    if "maximum" in schema:
        schema["maximum"] = maximum
    for option in schema.get("anyOf", []):
        _set_maximum(option, maximum)
