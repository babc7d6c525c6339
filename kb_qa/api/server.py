"""`create_app()`: the FastAPI application over one `kb_qa.app.App`.

Layers, outermost first: CORS (only when `api.cors_origins` is set) -> API key (every path but /health, when
`api.api_key` is set) -> request-body limit (`api.max_request_mb`, 413) -> routes. Every error is OpenAI's
`{"error": {"message", "type", "param", "code"}}` (kb_qa.api.errors): validation 400 naming the parameter, the
store's and the naming module's exceptions 400/404/409 by class, a full generation queue 429 and a timed-out wait
503 (both with Retry-After), anything unexpected 500 (logged; the process keeps serving).
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from kb_qa.api.context import ApiContext
from kb_qa.api.engine import Engine
from kb_qa.api.errors import ApiError, classify, error_response, param_of
from kb_qa.api.middleware import OPEN_PATHS, APIKeyMiddleware, BodyLimitMiddleware
from kb_qa.api.models import errors
from kb_qa.api.routes import chat, embeddings, health, knowledge_bases, openai_chat
from kb_qa.app import App
from kb_qa.errors import KbQaError
from kb_qa.settings import Settings, load_settings
from kb_qa.store import KnowledgeBaseError

log = logging.getLogger(__name__)


def create_app(app: App | None = None, settings: Settings | None = None, *, lock_timeout_s: float = 5.0,
               wait_timeout_s: float = 300.0, preload: bool = True) -> FastAPI:
    """The HTTP API over `app` (built from `settings`, or the default settings, when not given).

    `lock_timeout_s`: how long a write waits for a busy knowledge base before 409. `wait_timeout_s`: how long a
    generation request may wait for the model before 503. `preload`: load the models in the background at
    startup (so /health shows 'loading' and the first question does not pay for it)."""
    if app is None:
        app = App(settings or load_settings())
    api_settings = app.settings.api
    ctx = ApiContext(app=app, engine=Engine(app), lock_timeout_s=lock_timeout_s, wait_timeout_s=wait_timeout_s)

    @asynccontextmanager
    async def lifespan(_api: FastAPI):
        if preload:
            threading.Thread(target=_preload, args=(ctx,), name="kb_qa-preload", daemon=True).start()
        yield

    api = FastAPI(
        title="kb_qa",
        version="0.1.0",
        summary="Question answering over your documents with ChatGLM2: ChatGLM2 api.py, OpenAI-compatible "
                "chat completions, knowledge-base management.",
        lifespan=lifespan,
        redirect_slashes=False,  # an API answers the path it was asked, not a 307 a client may follow elsewhere
    )
    api.state.ctx = ctx
    common = errors(*([401] if api_settings.api_key else []), 413, 500)  # from the middleware / any route
    api.include_router(health.router)
    api.include_router(chat.router, responses=common)
    api.include_router(openai_chat.router, responses=common)
    api.include_router(embeddings.router, responses=common)
    api.include_router(knowledge_bases.router, responses=common)
    _add_error_handlers(api)

    # add_middleware puts each one outside the ones added before it.
    api.add_middleware(BodyLimitMiddleware, max_bytes=int(api_settings.max_request_mb * 2**20))
    if api_settings.api_key:
        api.add_middleware(APIKeyMiddleware, api_key=api_settings.api_key)
    if api_settings.cors_origins:
        api.add_middleware(CORSMiddleware, allow_origins=api_settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=False)

    def openapi() -> dict:
        if api.openapi_schema is None:
            schema = get_openapi(title=api.title, version=api.version, summary=api.summary, routes=api.routes)
            if api_settings.api_key:
                schema.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"}}
                schema["security"] = [{"bearer": []}]
                for path in OPEN_PATHS:
                    for operation in schema["paths"].get(path, {}).values():
                        operation["security"] = []
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema
    return api


def _preload(ctx: ApiContext) -> None:
    try:
        ctx.app.embeddings  # noqa: B018 - loads the cached model
    except Exception:
        log.exception("loading the embedding model failed")
    ctx.engine.llm()


def _add_error_handlers(api: FastAPI) -> None:
    """Every error leaves in OpenAI's shape (kb_qa.api.errors): validation as 400 naming the parameter, HTTP
    errors with their status, known exceptions by class, anything else a logged 500."""

    @api.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = param_of(first.get("loc", ()))
        message = first.get("msg", "invalid request")
        message = f"{param}: {message}" if param else message
        return error_response(ApiError(400, message, param=param, code=first.get("type", "invalid_value")))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        return error_response(ApiError(exc.status_code, str(exc.detail), code=code,
                                       headers=dict(exc.headers or {})))

    async def by_class(request: Request, exc: Exception):
        error = classify(exc)
        if error is None:
            log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            error = ApiError(500, f"internal error ({type(exc).__name__}); see the server log", code="internal_error")
        elif error.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(error)

    # The exception families routes raise are handled inside the app (answered, logged once); `Exception` is the
    # last resort, which Starlette also re-raises to the server after answering.
    for family in (ApiError, KbQaError, KnowledgeBaseError, ValueError, RuntimeError, OSError, Exception):
        api.add_exception_handler(family, by_class)
