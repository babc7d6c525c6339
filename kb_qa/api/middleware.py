"""Two pure-ASGI guards that wrap the whole API: the bearer API key and the request-body size limit.

Both sit outside routing, so no endpoint can forget them (unknown paths and the OpenAPI document included); both
answer in OpenAI's error shape like every other error (kb_qa.api.errors). CORS (Starlette's middleware, only when
origins are configured) wraps these two, so a browser's preflight is answered without a key and error replies carry
the CORS headers the browser needs to read them.

Deliberately not here: per-file upload limits (the upload route counts each file as it reads it) and generation
capacity (`kb_qa.api.capacity`).
"""

from __future__ import annotations

import secrets
import sys

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kb_qa.api.errors import error_bytes, type_of

if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup
else:  # pragma: no cover - anyio brings the backport on 3.10
    from exceptiongroup import BaseExceptionGroup

OPEN_PATHS = frozenset({"/health"})  # reachable without the API key


async def send_json_error(send: Send, status: int, detail: str, headers: dict[str, str] | None = None,
                          code: str | None = None) -> None:
    body = error_bytes(detail, type_of(status), code=code)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class APIKeyMiddleware:
    """Requires `Authorization: Bearer <key>` on every HTTP request except OPEN_PATHS. Constant-time comparison."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self._key = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        supplied = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    supplied = token.strip()
                break
        if supplied and secrets.compare_digest(supplied, self._key):
            return await self.app(scope, receive, send)
        detail = "invalid API key" if supplied else "missing API key: send 'Authorization: Bearer <key>'"
        await send_json_error(send, 401, detail, {"WWW-Authenticate": "Bearer"}, code="invalid_api_key")


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the body passes the limit. An HTTPException, so FastAPI's body parsing re-raises
    it unchanged (other exceptions there become 400) and the API's handler turns it into a JSON 413."""

    def __init__(self, detail: str):
        super().__init__(status_code=413, detail=detail, headers={"Connection": "close"})


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413: at once when Content-Length says so, otherwise as soon as
    the bytes received pass the limit (chunked uploads), before the application sees more than the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int, setting: str = "api.max_request_mb"):
        self.app = app
        self.max_bytes = max_bytes
        self._detail = f"request body over the limit of {max_bytes / 2**20:g} MiB ({setting})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await send_json_error(send, 400, "invalid Content-Length header")
                if declared > self.max_bytes:
                    return await send_json_error(send, 413, self._detail, {"Connection": "close"}, "request_too_large")
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self._detail)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_json_error(send, 413, self._detail, {"Connection": "close"}, "request_too_large")
        except BaseExceptionGroup as group:  # raised inside a task group (e.g. a streaming response)
            rest = group.split(BodyTooLarge)[1]
            if rest is not None:
                raise
            if not started:
                await send_json_error(send, 413, self._detail, {"Connection": "close"}, "request_too_large")
