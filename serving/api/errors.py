"""Every error leaves as JSON `{"error": ..., "details": ..., "request_id": ...}`, never a traceback."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.redact import get_logger

log = get_logger("serving.api")


class ServingError(Exception):
    def __init__(self, status_code: int, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.details = details
        self.headers = headers


def error_body(request: Request, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    return body


MAX_ECHO_CHARS = 64  # of a client's input quoted back in an error
MAX_PROBLEMS = 20  # validation problems listed in one error body


def _validation_details(error: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for problem in error.errors()[:MAX_PROBLEMS]:
        location = ".".join(str(part) for part in problem.get("loc", ()))[:MAX_ECHO_CHARS]
        echo = _short_echo(problem.get("input"))
        details.append({"field": location, "message": str(problem.get("msg", "invalid"))[:200],
                        **({"input": echo} if echo is not None else {})})
    return details


def _short_echo(value: Any) -> str | int | float | bool | None:
    """A scalar input short enough to quote back (strings cut), or None: a body, a list, a
    non-finite number (not valid JSON) or an integer too long to be useful are not echoed."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10 ** 20 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= MAX_ECHO_CHARS else value[:MAX_ECHO_CHARS] + "..."
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(request: Request, error: ServingError) -> JSONResponse:
        return JSONResponse(error_body(request, error.message, error.details), status_code=error.status_code,
                            headers=error.headers)

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
