"""Every error the HTTP API sends, in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

OpenAI clients (the official SDK, langchain-openai, Open WebUI, Dify) read `error.message` and decide whether to
retry from the status alone: they retry 408/409/429/5xx, so a problem the user must fix (no model configured, a
bad name) is a 4xx that is not retried, and only capacity is 429/503 with `Retry-After`.

`ApiError` is what routes raise when they know the status; `classify()` maps every other exception (kb_qa's
`KbQaError` family and the store's/naming module's errors) by class. Nothing here formats tracebacks.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

# OpenAI's `type` per status family.
INVALID = "invalid_request_error"
AUTH = "authentication_error"
NOT_FOUND = "not_found_error"
CONFLICT = "conflict_error"
RATE_LIMIT = "rate_limit_error"
SERVER = "server_error"

_TYPE_OF_STATUS = {400: INVALID, 401: AUTH, 403: "permission_error", 404: NOT_FOUND, 405: INVALID, 409: CONFLICT,
                   413: INVALID, 415: INVALID, 422: INVALID, 429: RATE_LIMIT}


class ApiError(Exception):
    """An error with its HTTP status and OpenAI fields. `param`: the request field at fault (dotted path)."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or type_of(status)
        self.headers = headers or {}


def type_of(status: int) -> str:
    return _TYPE_OF_STATUS.get(status, SERVER if status >= 500 else INVALID)


def clean(text: str) -> str:
    """`text` made encodable as UTF-8 (a lone surrogate from a client's JSON would make the reply itself fail)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(message: str, type: str, *, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": clean(message), "type": type, "param": clean(param) if param else None,
                      "code": code}}


def error_bytes(message: str, type: str, *, param: str | None = None, code: str | int | None = None) -> bytes:
    return json.dumps(error_body(message, type, param=param, code=code), ensure_ascii=False).encode("utf-8")


def error_response(error: ApiError) -> Response:
    return Response(error_bytes(error.message, error.type, param=error.param, code=error.code),
                    status_code=error.status, media_type="application/json", headers=error.headers)


def param_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """'messages[0].content' from pydantic's ('body', 'messages', 0, 'content')."""
    parts: list[str] = []
    for item in loc:
        if item in ("body", "query", "path", "header") and not parts:
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or None


def classify(exc: BaseException) -> ApiError | None:
    """The `ApiError` for a known exception class, or None (an unexpected error: a 500)."""
    from kb_qa.api.capacity import Overloaded
    from kb_qa.errors import BusyError, ConfigError, NotFoundError, UnavailableError, UsageError
    from kb_qa.naming import InvalidName
    from kb_qa.store import EmbeddingMismatch, KnowledgeBaseBusy, KnowledgeBaseNotFound
    from kb_qa.uploads import UploadRejected

    if isinstance(exc, ApiError):
        return exc
    message = str(exc)
    if isinstance(exc, Overloaded):
        # 429 when the waiting room is full (come back soon), 503 when the wait itself timed out.
        status = 429 if exc.queue_full else 503
        return ApiError(status, message, code="server_busy", type=RATE_LIMIT if status == 429 else SERVER,
                        headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, KnowledgeBaseNotFound):
        return ApiError(404, message, code="knowledge_base_not_found")
    if isinstance(exc, (KnowledgeBaseBusy, BusyError)):
        return ApiError(409, message, code="knowledge_base_busy")
    if isinstance(exc, EmbeddingMismatch):
        return ApiError(409, message, code="embedding_mismatch")
    if isinstance(exc, (InvalidName, UploadRejected)):
        return ApiError(400, message, code="invalid_name")
    if isinstance(exc, NotFoundError):
        return ApiError(404, message, code="not_found")
    if isinstance(exc, ConfigError):
        return ApiError(400, message, code="configuration_error")
    if isinstance(exc, UsageError):
        return ApiError(400, message, code="invalid_request")
    from kb_qa.llm.openai_backend import OpenAIBackendError

    if isinstance(exc, OpenAIBackendError):  # the upstream model server failed (after its retries)
        return ApiError(502, message, code="upstream_error")
    if isinstance(exc, UnavailableError):
        # A part that is not loaded or installed: fixable by the operator, not by retrying.
        return ApiError(400, message, code="unavailable")
    return _lazy(exc)


def _lazy(exc: BaseException) -> ApiError | None:
    """Errors of the torch-heavy modules, matched by class once those modules are imported (never imported here:
    if the module is not loaded, the error cannot come from it)."""
    import sys

    packing = sys.modules.get("kb_qa.qa.packing")
    if packing is not None and isinstance(exc, getattr(packing, "ContextTooLong", ())):
        return ApiError(400, str(exc), code="context_length_exceeded", param="messages")
    generation = sys.modules.get("kb_qa.llm.generation")
    if generation is not None:
        if isinstance(exc, generation.PromptTooLongError):
            return ApiError(400, str(exc), code="context_length_exceeded", param="messages")
        if isinstance(exc, generation.GenerationOOMError):
            return ApiError(503, str(exc), code="out_of_memory", headers={"Retry-After": "5"})
    from kb_qa.embeddings import EmbeddingModelNotFound

    if isinstance(exc, EmbeddingModelNotFound):
        return ApiError(400, f"{exc} (embedding.model)", code="embedding_model_not_found")
    return None
