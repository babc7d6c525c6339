"""OpenAI-compatible chat: `POST /v1/chat/completions` (server-sent events or not), `GET /v1/models[/{id}]`.

`model` is the LLM's id (plain chat), `kb:<name>` (answer from that knowledge base, with `sources`), or anything
with the extra field `knowledge_base`; any other id is a 404 `model_not_found`. Every reply carries `usage`
(ChatGLM2 tokens) and a `finish_reason` that says `length` when the answer hit max_tokens or the window; streams
end with a usage chunk when `stream_options.include_usage` is set, as OpenAI's do.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import APIRouter

from kb_qa.api.context import ApiContext, Ctx
from kb_qa.api.convert import GuardedStream, iterate_blocking, run_blocking, sources_out
from kb_qa.api.engine import Generation
from kb_qa.api.errors import ApiError, error_body
from kb_qa.api.models import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelCard,
    ModelList,
    Usage,
    errors,
)
from kb_qa.api.openai_format import (
    KB_MODEL_PREFIX,
    check_supported,
    dialogue,
    fingerprint,
    params_of,
    requested_kb,
    sources_block,
)
from kb_qa.api.routes.chat import ERRORS, complete, prepare, producer
from kb_qa.api.routes.embeddings import embedding_model_id
from kb_qa.naming import InvalidName
from kb_qa.schema import Answer

router = APIRouter(tags=["openai"])


def _cards(ctx: ApiContext) -> list[ModelCard]:
    now = int(time.time())
    cards = []
    if (llm := ctx.engine.llm_name()) is not None:
        cards.append(ModelCard(id=llm, created=now, kind="chat"))
    for name in ctx.app.kb_names():
        try:
            cards.append(ModelCard(id=KB_MODEL_PREFIX + ctx.checked_kb_name(name), created=now,
                                   kind="knowledge_base"))
        except InvalidName:  # a symlinked folder: not one of ours
            continue
    cards.append(ModelCard(id=embedding_model_id(ctx), created=now, kind="embedding"))
    return cards


@router.get("/v1/models", response_model=ModelList, response_model_exclude_none=True,
            summary="Models: the LLM (plain chat), kb:<name> per knowledge base, the embedding model")
def list_models(ctx: Ctx):
    return ModelList(data=_cards(ctx))


@router.get("/v1/models/{model_id}", response_model=ModelCard, response_model_exclude_none=True,
            summary="One model", responses=errors(404))
def get_model(model_id: str, ctx: Ctx):
    for card in _cards(ctx):
        if card.id == model_id:
            return card
    raise _model_not_found(ctx, model_id)


def _model_not_found(ctx: ApiContext, model: str) -> ApiError:
    llm = ctx.engine.llm_name()
    if llm is None:
        fix = (f"no language model is loaded ({ctx.engine.llm_info().detail}); set llm.model_path, or ask a "
               "knowledge base with model 'kb:<name>' for retrieval-only answers")
    else:
        fix = f"use {llm!r} for plain chat or 'kb:<name>' for a knowledge base"
    return ApiError(404, f"the model {model!r} does not exist: {fix}; see GET /v1/models", param="model",
                    code="model_not_found")


def _usage(stats: Generation) -> Usage:
    return Usage(prompt_tokens=stats.prompt_tokens, completion_tokens=stats.completion_tokens,
                 total_tokens=stats.prompt_tokens + stats.completion_tokens)


@router.post("/v1/chat/completions", response_model=ChatCompletion, response_model_exclude_none=True,
             summary="OpenAI-compatible chat completions",
             description="`model`: the LLM's id for plain chat, or `kb:<name>` to answer from a knowledge base (or "
                         "the extra field `knowledge_base`). `stream: true` sends server-sent events "
                         "(`chat.completion.chunk`, then `data: [DONE]`); the last content chunk carries `sources`, "
                         "and with `stream_options.include_usage` a final chunk carries `usage`. `system` messages, "
                         "`temperature`, `top_p`, `max_tokens`, `stop` and `seed` are honoured; `n` > 1, `tools`, "
                         "structured `response_format`, `logprobs` and non-text content parts are a 400. Extra "
                         "`include_sources: true` (default: the api.sources_block setting) appends a Markdown "
                         "'Sources' block to the answer.",
             responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}})
async def chat_completions(body: ChatCompletionRequest, ctx: Ctx):
    check_supported(body)
    kb = requested_kb(body)
    if kb is None:
        generating = await anyio.to_thread.run_sync(ctx.engine.generating)
        if not generating or body.model != ctx.engine.llm_name():
            raise _model_not_found(ctx, body.model)
    question, history, system = dialogue(body)
    if not question.strip():
        raise ApiError(400, "messages: the last user message is empty", param="messages", code="invalid_value")
    kb, gate = await prepare(ctx, kb)
    params = params_of(body)
    stats = Generation()
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    system_fingerprint = fingerprint(ctx.engine.llm_info().detail)
    show_sources = ctx.app.settings.api.sources_block if body.include_sources is None else body.include_sources
    if not body.stream:
        answer: Answer = await run_blocking(gate, complete, ctx, question, history, kb, params, body.top_k, stats,
                                            system)
        text = answer.text + (sources_block(answer.sources) if show_sources else "")
        return ChatCompletion(
            id=completion_id, created=created, model=body.model, system_fingerprint=system_fingerprint,
            choices=[Choice(message=AssistantMessage(content=text), finish_reason=stats.finish_reason)],
            usage=_usage(stats), sources=sources_out(answer.sources) if kb is not None else None, mode=answer.mode)

    if gate is not None:
        await gate.acquire()
    try:
        pieces = await anyio.to_thread.run_sync(producer, ctx, question, history, kb, params, body.top_k, stats,
                                                system)
    except BaseException:
        if gate is not None:
            gate.release()
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def event(obj: dict) -> bytes:
        return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> bytes:
        obj = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
               "system_fingerprint": system_fingerprint,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
               **({"usage": None} if include_usage else {}), **extra}
        return event(obj)

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        answer = None
        try:
            async for piece in iterate_blocking(pieces):
                if isinstance(piece, Answer):
                    answer = piece
                elif piece:
                    yield chunk({"content": piece})
        except Exception as exc:  # noqa: BLE001 - the status line is sent; report in-band, as OpenAI does
            yield event(error_body(f"generation failed: {exc}", "server_error", code="generation_failed"))
            yield b"data: [DONE]\n\n"
            return
        extra: dict[str, Any] = {}
        if answer is not None:
            extra["mode"] = answer.mode
            if kb is not None:
                extra["sources"] = [s.model_dump() for s in sources_out(answer.sources)]
            if show_sources and answer.sources:
                yield chunk({"content": sources_block(answer.sources)})
        yield chunk({}, stats.finish_reason, **extra)
        if include_usage:
            yield event({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                         "model": body.model, "system_fingerprint": system_fingerprint, "choices": [],
                         "usage": _usage(stats).model_dump()})
        yield b"data: [DONE]\n\n"

    return GuardedStream(events(), producer=pieces, gate=gate, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
