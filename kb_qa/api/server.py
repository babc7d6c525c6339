"""`create_app()`: the FastAPI application over one `kb_qa.app.App`.

Layers, outermost first: CORS (only when `api.cors_origins` is set) -> API key (every path but /health, when
`api.api_key` is set) -> request-body limit (`api.max_request_mb`, 413) -> routes. Every error is JSON
`{"detail": ...}`: the store's and the naming module's exceptions map to 400/404/409, a full generation queue to
503, anything unexpected to 500 (logged; the process keeps serving).
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from kb_qa.api.capacity import Overloaded
from kb_qa.api.context import ApiContext
from kb_qa.api.engine import BadRequest, Engine, LLMUnavailable
from kb_qa.api.middleware import OPEN_PATHS, APIKeyMiddleware, BodyLimitMiddleware
from kb_qa.api.models import errors
from kb_qa.api.routes import chat, health, knowledge_bases
from kb_qa.app import App
from kb_qa.naming import InvalidName
from kb_qa.settings import Settings, load_settings
from kb_qa.store import EmbeddingMismatch, KnowledgeBaseBusy, KnowledgeBaseError, KnowledgeBaseNotFound

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

    api.openapi = openapi
    return api


# Errors of modules the API does not import up front (they pull in torch), by qualified class name.
LAZY_ERRORS = {
    "kb_qa.qa.packing.ContextTooLong": 400,
    "pydantic_core._pydantic_core.ValidationError": 422,
    "kb_qa.llm.generation.PromptTooLongError": 400,
    "kb_qa.llm.generation.GenerationOOMError": 503,
    "kb_qa.llm.generation.GenerationError": 500,
}


def _preload(ctx: ApiContext) -> None:
    try:
        ctx.app.embeddings  # noqa: B018 - loads the cached model
    except Exception:
        log.exception("loading the embedding model failed")
    ctx.engine.llm()


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _handler(status: int):
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        return _error(status, str(exc))

    return handle


def _add_error_handlers(api: FastAPI) -> None:
    from kb_qa.embeddings import EmbeddingModelNotFound
    from kb_qa.uploads import UploadRejected

    status_of = [
        (KnowledgeBaseNotFound, 404),
        (KnowledgeBaseBusy, 409),
        (EmbeddingMismatch, 409),
        (InvalidName, 400),
        (UploadRejected, 400),
        (BadRequest, 400),
        (LLMUnavailable, 503),
        (EmbeddingModelNotFound, 503),
    ]
    for exc_type, status in status_of:
        api.add_exception_handler(exc_type, _handler(status))

    @api.exception_handler(Overloaded)
    async def overloaded(_request: Request, exc: Overloaded):
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after_s)})

    @api.exception_handler(KnowledgeBaseError)
    async def kb_error(_request: Request, exc: KnowledgeBaseError):
        log.error("knowledge base error: %s", exc)
        return _error(500, str(exc))

    @api.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        for cls in type(exc).__mro__:  # errors of lazily imported modules (torch-heavy), matched by name
            status = LAZY_ERRORS.get(f"{cls.__module__}.{cls.__qualname__}")
            if status is not None:
                if status >= 500:
                    log.error("%s %s: %s", request.method, request.url.path, exc)
                return _error(status, str(exc))
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")
