"""ChatGLM2's own `api.py` contract (`POST /`), and the answering plumbing the OpenAI routes share
(openai_chat.py): which knowledge base, which generation slot, the blocking producers.

Which knowledge base: `knowledge_base` in the body, or (OpenAI) a model named `kb:<name>`; otherwise plain chat
with the LLM, which needs one loaded (400 in retrieval-only mode: a configuration to fix, not a retry). Answers that
run the LLM hold its generation slot (`kb_qa.api.capacity`) for as long as the model works, streams included;
retrieval-only answers do not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio.to_thread
from fastapi import APIRouter

from kb_qa.api.capacity import GenerationGate
from kb_qa.api.context import ApiContext, Ctx
from kb_qa.api.convert import run_blocking, sources_out
from kb_qa.api.engine import Generation, GenParams, LLMUnavailable, last_answer
from kb_qa.api.models import ChatGLMRequest, ChatGLMResponse, errors
from kb_qa.schema import Answer

router = APIRouter(tags=["chat"])

ERRORS = errors(400, 404, 409, 429, 503)


async def prepare(ctx: ApiContext, kb: str | None) -> tuple[str | None, GenerationGate | None]:
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


def producer(ctx: ApiContext, question: str, history, kb: str | None, params: GenParams, top_k: int | None,
             stats: Generation | None = None, system: str | None = None) -> Iterator[str | Answer]:
    """Pieces then the Answer. Plain chat puts `system` in front of the question (ChatGLM2 has no system role);
    knowledge-base answers put it in front of the packed turn (kept out of retrieval)."""
    if kb is None:
        if system:
            question = f"{system}\n\n{question}"
        return ctx.engine.stream_chat(question, history, params, stats=stats)
    return ctx.engine.stream_answer(question, history, kb, params, top_k, stats=stats, system=system)


def complete(ctx: ApiContext, question: str, history, kb: str | None, params: GenParams, top_k: int | None,
             stats: Generation | None = None, system: str | None = None) -> Answer:
    return last_answer(producer(ctx, question, history, kb, params, top_k, stats, system))


# -- ChatGLM2 api.py ---------------------------------------------------------------------------------------------
@router.post("/", response_model=ChatGLMResponse, response_model_exclude_none=True, responses=ERRORS,
             summary="ChatGLM2 api.py contract",
             description="ChatGLM2's own `api.py` request and response. Without `knowledge_base`: plain chat with "
                         "the LLM. With it: an answer from that knowledge base, plus `sources`.")
async def chatglm(body: ChatGLMRequest, ctx: Ctx):
    history = [(q, a) for q, a in (body.history or [])]
    kb, gate = await prepare(ctx, body.knowledge_base)
    params = GenParams(temperature=body.temperature, top_p=body.top_p, max_length=body.max_length)
    answer: Answer = await run_blocking(gate, complete, ctx, body.prompt, history, kb, params, body.top_k)
    return ChatGLMResponse(
        response=answer.text, history=[*history, (body.prompt, answer.text)], status=200,
        time=time.strftime("%Y-%m-%d %H:%M:%S"), mode=answer.mode,
        sources=sources_out(answer.sources) if kb is not None else None)
