"""`GET /health`: which models are loaded (embedding model, LLM or retrieval-only and why) and the generation
queue. Open without the API key, so it says nothing about knowledge bases or documents."""

from __future__ import annotations

from fastapi import APIRouter

from kb_qa.api.context import Ctx
from kb_qa.api.models import Health, ModelState, QueueState

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Models loaded, mode, generation queue")
def health(ctx: Ctx):
    emb, llm = ctx.engine.embedding_info(), ctx.engine.llm_info()
    gate = ctx.gates.get(ctx.engine.llm_name() or "llm")
    queue = None
    if gate is not None:
        s = gate.status()
        queue = QueueState(model=s.model, busy=s.busy, waiting=s.waiting, max_queue=s.max_queue)
    return Health(
        mode={"loaded": "llm", "unavailable": "retrieval-only"}.get(llm.state, "starting"),
        embedding=ModelState(name=emb.name, state=emb.state, detail=emb.detail),
        llm=ModelState(name=llm.name, state=llm.state, detail=llm.detail),
        generation=queue,
    )
