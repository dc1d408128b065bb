"""Every error leaves as JSON `{"error": ..., "details": ..., "request_id": ...}`, never a traceback."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("serving.api")


class ServingError(Exception):
    def __init__(self, status_code: int, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.details = details


def error_body(request: Request, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    return body


def _validation_details(error: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem.get("loc", ()))
        details.append({"field": location, "message": problem.get("msg", "invalid"),
                        **({"input": problem["input"]} if _plain(problem.get("input")) else {})})
    return details


def _plain(value: Any) -> bool:
    """Short, JSON-encodable inputs only: never a non-finite float (JSON cannot carry it) or long text."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= 100
    return isinstance(value, (int, bool))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(request: Request, error: ServingError) -> JSONResponse:
        return JSONResponse(error_body(request, error.message, error.details), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        details = _validation_details(error)
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "invalid request"
        return JSONResponse(error_body(request, f"invalid request: {summary}", details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else "request failed"
        return JSONResponse(error_body(request, message), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(request, f"internal error ({type(error).__name__}); see the server log"),
                            status_code=500)
