"""Pure ASGI middleware (Starlette's `BaseHTTPMiddleware` costs a task and a stream per request):
the request body's size limit, and the last-resort JSON 500 that keeps the connection alive."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.redact import get_logger

log = get_logger("serving.api")


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes the limit. An HTTPException, so FastAPI's
    body reading passes it on (it turns other exceptions into a 400) to the 413 JSON handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


async def send_json(send: Send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class BodySizeLimit:
    """413 for a body over `max_bytes`, before it is read: at once from Content-Length, else
    (chunked) as soon as the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, streamed = _declared_length(scope)
        if length is not None and length > self.max_bytes:
            await send_json(send, 413, {"error": f"request body larger than {self.max_bytes} bytes"})
            return
        if not streamed:
            await self.app(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


def _declared_length(scope: Scope) -> tuple[int | None, bool]:
    """(Content-Length or None, whether the body must be counted as it streams). The server
    delivers no more than a declared Content-Length, so only bodies without one are counted."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value), False
            except ValueError:
                return None, True
        if name == b"transfer-encoding":
            return None, True
    return None, False


class CatchAll:
    """An exception no handler took becomes a JSON 500 here. Starlette's own last resort
    (`ServerErrorMiddleware`) re-raises after answering, and uvicorn then closes the connection,
    so a keep-alive client's next request would fail too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:  # noqa: BLE001 - the last resort
            if started:
                raise
            log.exception("unhandled error on %s %s", scope["method"], scope["path"][:200])
            await send_json(send, 500, {"error": f"internal error ({type(error).__name__}); see the server log"})
