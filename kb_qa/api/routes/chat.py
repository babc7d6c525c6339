"""Answering endpoints: ChatGLM2's own `api.py` contract (`POST /`) and the OpenAI-compatible chat completions
(`POST /v1/chat/completions`, streamed as server-sent events or not; `GET /v1/models`).

Which knowledge base: `knowledge_base` in the body, or (OpenAI) a model named `kb:<name>`; otherwise plain chat
with the LLM, which needs one loaded (503 in retrieval-only mode). Answers that run the LLM hold its generation
slot (`kb_qa.api.capacity`) for as long as the model works, streams included; retrieval-only answers do not.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import anyio.to_thread
from fastapi import APIRouter

from kb_qa.api.capacity import GenerationGate
from kb_qa.api.context import ApiContext, Ctx
from kb_qa.api.convert import GuardedStream, iterate_blocking, run_blocking, sources_out
from kb_qa.api.engine import GenParams, LLMUnavailable
from kb_qa.api.models import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ChatGLMRequest,
    ChatGLMResponse,
    Choice,
    ModelCard,
    ModelList,
    Usage,
    errors,
)
from kb_qa.naming import InvalidName
from kb_qa.schema import Answer

router = APIRouter(tags=["chat"])

KB_MODEL_PREFIX = "kb:"
_ERRORS = errors(400, 404, 409, 503)


async def _prepare(ctx: ApiContext, kb: str | None) -> tuple[str | None, GenerationGate | None]:
    """Validates the knowledge base (404 before queueing), and returns the gate to hold if the LLM will run."""
    if kb is not None:
        kb = ctx.checked_kb_name(kb)
        await anyio.to_thread.run_sync(ctx.app.kb, kb)  # KnowledgeBaseNotFound -> 404
    generating = await anyio.to_thread.run_sync(ctx.engine.generating)
    if kb is None and not generating:
        info = ctx.engine.llm_info()
        raise LLMUnavailable(f"no language model loaded ({info.detail}); name a knowledge base for "
                             "retrieval-only answers")
    return kb, (ctx.gate(ctx.engine.llm_name() or "llm") if generating else None)


def _producer(ctx: ApiContext, question: str, history, kb: str | None, params: GenParams,
              top_k: int | None) -> Iterator[str | Answer]:
    if kb is None:
        return ctx.engine.stream_chat(question, history, params)
    return ctx.engine.stream_answer(question, history, kb, params, top_k)


def _complete(ctx: ApiContext, question: str, history, kb: str | None, params: GenParams,
              top_k: int | None) -> Answer:
    if kb is None:
        return ctx.engine.chat(question, history, params)
    return ctx.engine.answer(question, history, kb, params, top_k)


# -- ChatGLM2 api.py ---------------------------------------------------------------------------------------------
@router.post("/", response_model=ChatGLMResponse, response_model_exclude_none=True, responses=_ERRORS,
             summary="ChatGLM2 api.py contract",
             description="ChatGLM2's own `api.py` request and response. Without `knowledge_base`: plain chat with "
                         "the LLM. With it: an answer from that knowledge base, plus `sources`.")
async def chatglm(body: ChatGLMRequest, ctx: Ctx):
    history = [(q, a) for q, a in (body.history or [])]
    kb, gate = await _prepare(ctx, body.knowledge_base)
    params = GenParams(temperature=body.temperature, top_p=body.top_p, max_length=body.max_length)
    answer: Answer = await run_blocking(gate, _complete, ctx, body.prompt, history, kb, params, body.top_k)
    return ChatGLMResponse(
        response=answer.text, history=[*history, (body.prompt, answer.text)], status=200,
        time=time.strftime("%Y-%m-%d %H:%M:%S"), mode=answer.mode,
        sources=sources_out(answer.sources) if kb is not None else None)


# -- OpenAI ------------------------------------------------------------------------------------------------------
@router.get("/v1/models", response_model=ModelList, summary="Models: the LLM (plain chat) and kb:<name> per KB")
def list_models(ctx: Ctx):
    now = int(time.time())
    cards = []
    if (llm := ctx.engine.llm_name()) is not None:
        cards.append(ModelCard(id=llm, created=now))
    for name in ctx.app.kb_names():
        try:
            cards.append(ModelCard(id=KB_MODEL_PREFIX + ctx.checked_kb_name(name), created=now))
        except InvalidName:  # a symlinked folder: not one of ours
            continue
    return ModelList(data=cards)


def _dialogue(body: ChatCompletionRequest, kb: str | None) -> tuple[str, list[tuple[str, str]]]:
    """(question, history) from OpenAI messages, as ChatGLM2's own openai_api.py reads them: system text goes in
    front of the question for plain chat (ChatGLM2 has no system role) and is left out of knowledge-base answers
    (it would pollute retrieval); user/assistant pairs become history; tool messages are ignored."""
    *prior, last = body.messages
    question = last.text()
    system = [m.text() for m in prior if m.role in ("system", "developer")]
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for m in prior:
        if m.role == "user":
            pending = m.text() if pending is None else pending + "\n" + m.text()
        elif m.role == "assistant" and pending is not None:
            history.append((pending, m.text()))
            pending = None
    if pending is not None:  # consecutive user messages: fold into the question
        question = pending + "\n" + question
    if kb is None and system:
        question = "\n\n".join([*system, question])
    return question, history


def _params(body: ChatCompletionRequest) -> GenParams:
    temperature, top_p = body.temperature, body.top_p
    if top_p == 0:  # OpenAI allows 0, nucleus sampling does not: the closest meaning is greedy decoding
        temperature, top_p = 0.0, None
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return GenParams(temperature=temperature, top_p=top_p,
                     max_new_tokens=body.max_completion_tokens or body.max_tokens, stop=stop)


def _usage(ctx: ApiContext, question: str, history, text: str) -> Usage | None:
    """Plain chat only: the prompt as ChatGLM2 sees it, the answer re-encoded (so within a token or two of what
    was generated). Knowledge-base answers have no usage: their packed prompt is the chain's business."""
    try:
        prompt = ctx.engine.count_prompt_tokens(question, history)
        completion = ctx.engine.count_tokens(text)
    except Exception:  # noqa: BLE001 - usage is informative only
        return None
    if prompt is None or completion is None:
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


@router.post("/v1/chat/completions", response_model=ChatCompletion, response_model_exclude_none=True,
             summary="OpenAI-compatible chat completions",
             description="`model`: the LLM's id for plain chat, or `kb:<name>` to answer from a knowledge base (or "
                         "the extra field `knowledge_base`). `stream: true` sends server-sent events "
                         "(`chat.completion.chunk`, then `data: [DONE]`); the last chunk carries `sources`. "
                         "`temperature`, `top_p`, `max_tokens` and `stop` are honoured.",
             responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}})
async def chat_completions(body: ChatCompletionRequest, ctx: Ctx):
    kb = body.knowledge_base
    if kb is None and body.model.startswith(KB_MODEL_PREFIX):
        kb = body.model[len(KB_MODEL_PREFIX):]
    question, history = _dialogue(body, kb)
    kb, gate = await _prepare(ctx, kb)
    params = _params(body)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not body.stream:
        answer: Answer = await run_blocking(gate, _complete, ctx, question, history, kb, params, body.top_k)
        return ChatCompletion(
            id=completion_id, created=created, model=body.model,
            choices=[Choice(message=AssistantMessage(content=answer.text),
                            finish_reason=getattr(answer, "finish_reason", None) or "stop")],
            usage=None if kb is not None else await anyio.to_thread.run_sync(_usage, ctx, question, history,
                                                                              answer.text),
            sources=sources_out(answer.sources) if kb is not None else None, mode=answer.mode)

    if gate is not None:
        await gate.acquire()
    try:
        producer = await anyio.to_thread.run_sync(_producer, ctx, question, history, kb, params, body.top_k)
    except BaseException:
        if gate is not None:
            gate.release()
        raise

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> bytes:
        obj = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
        return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        answer = None
        try:
            async for piece in iterate_blocking(producer):
                if isinstance(piece, Answer):
                    answer = piece
                elif piece:
                    yield chunk({"content": piece})
        except Exception as exc:  # noqa: BLE001 - the status line is sent; report in-band, as OpenAI does
            error = {"message": f"generation failed: {exc}", "type": "server_error", "code": 500}
            yield b"data: " + json.dumps({"error": error}, ensure_ascii=False).encode("utf-8") + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        extra = {}
        if answer is not None:
            extra["mode"] = answer.mode
            if kb is not None:
                extra["sources"] = [s.model_dump() for s in sources_out(answer.sources)]
        yield chunk({}, getattr(answer, "finish_reason", None) or "stop", **extra)
        yield b"data: [DONE]\n\n"

    return GuardedStream(events(), producer=producer, gate=gate, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
