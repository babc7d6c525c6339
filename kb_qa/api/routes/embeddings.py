"""`POST /v1/embeddings`: OpenAI's embeddings endpoint over the knowledge bases' own embedding model, so Open WebUI,
Dify or LangChain's `OpenAIEmbeddings` get exactly the vectors kb_qa stores (L2-normalised, as the index holds
them; cosine = dot product).

`model` is the embedding model's id as GET /v1/models lists it (e.g. `all-MiniLM-L6-v2`), or `kb:<name>` for the
model that knowledge base was built with (refused, 409, if that is not the model loaded). Texts are embedded as
documents (no query prefix). `encoding_format: base64` is the little-endian float32 bytes, which the official SDK
asks for by default. Does not queue behind generation: embedding has its own lock in the embedder.
"""

from __future__ import annotations

import base64

import anyio.to_thread
import numpy as np
from fastapi import APIRouter

from kb_qa.api.context import ApiContext, Ctx
from kb_qa.api.errors import ApiError
from kb_qa.api.models import EmbeddingItem, EmbeddingList, EmbeddingRequest, EmbeddingUsage, _valid_unicode, errors

router = APIRouter(tags=["embeddings"])

KB_MODEL_PREFIX = "kb:"


def embedding_model_id(ctx: ApiContext) -> str:
    """The id clients use for the embedding model: the name in the settings (embedding.model)."""
    return str(ctx.app.settings.embedding.model)


def _texts(body: EmbeddingRequest) -> list[str]:
    items = [body.input] if isinstance(body.input, str) else list(body.input)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ApiError(400, "input: only text is accepted (a string or a list of strings); token-id arrays "
                                "would be another tokenizer's ids (with langchain-openai's OpenAIEmbeddings set "
                                "check_embedding_ctx_length=False)", param=f"input[{i}]", code="invalid_input")
        if not item:
            raise ApiError(400, f"input[{i}] is empty", param=f"input[{i}]", code="invalid_input")
        try:
            _valid_unicode(item)
        except ValueError as exc:
            raise ApiError(400, f"input[{i}]: {exc}", param=f"input[{i}]", code="invalid_input") from None
        if len(item) > 200_000:
            raise ApiError(400, f"input[{i}] is over 200000 characters", param=f"input[{i}]", code="invalid_input")
    return items


def _check_model(ctx: ApiContext, model: str) -> None:
    loaded = embedding_model_id(ctx)
    if model.startswith(KB_MODEL_PREFIX):
        name = ctx.checked_kb_name(model[len(KB_MODEL_PREFIX):])
        built_with = ctx.app.kb(name).info().embedding_model  # KnowledgeBaseNotFound -> 404
        if built_with and built_with != loaded:
            raise ApiError(409, f"knowledge base {name!r} was built with {built_with!r}, but the loaded embedding "
                                f"model is {loaded!r} (embedding.model)", param="model", code="embedding_mismatch")
        return
    if model != loaded:
        raise ApiError(404, f"the model {model!r} does not exist: the embedding model is {loaded!r} (or use "
                            "'kb:<name>'); see GET /v1/models", param="model", code="model_not_found")


def _tokenizer(embedder):
    """The embedding model's own tokenizer, wherever the embedder keeps it (None if it exposes none)."""
    for owner in (embedder, getattr(embedder, "_backend", None)):
        tokenizer = getattr(owner, "tokenizer", None)
        if tokenizer is None:
            tokenizer = getattr(getattr(owner, "model", None), "tokenizer", None)
        if callable(tokenizer):
            return tokenizer
    return None


def count_tokens(embedder, texts: list[str]) -> int:
    """Tokens the model reads (special tokens included, before truncation). Without a tokenizer to ask: an
    estimate of one token per 4 characters."""
    tokenizer = _tokenizer(embedder)
    if tokenizer is None:
        return sum(max(1, len(t) // 4) for t in texts)
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"])


def embed(embedder, texts: list[str]) -> np.ndarray:
    """(len(texts), dim) float32: kb_qa's embedder (`encode`, normalised as stored) or any LangChain Embeddings."""
    encode = getattr(embedder, "encode", None)
    if encode is not None:
        return np.asarray(encode(texts), dtype=np.float32)
    return np.asarray(embedder.embed_documents(texts), dtype=np.float32)


@router.post("/v1/embeddings", response_model=EmbeddingList, summary="OpenAI-compatible embeddings",
             description="The knowledge bases' embedding model: `model` is its id (GET /v1/models) or "
                         "`kb:<name>`; `input` a string or a list of strings; `encoding_format` float or base64. "
                         "Vectors are L2-normalised, identical to the ones the index stores.",
             responses=errors(400, 404, 409))
async def create_embeddings(body: EmbeddingRequest, ctx: Ctx):
    texts = _texts(body)
    await anyio.to_thread.run_sync(_check_model, ctx, body.model)
    embedder = await anyio.to_thread.run_sync(lambda: ctx.app.embeddings)
    vectors = await anyio.to_thread.run_sync(embed, embedder, texts)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise ApiError(400, f"dimensions: the model gives {vectors.shape[1]}-dimensional vectors; leave "
                            "dimensions out or set it to that", param="dimensions", code="invalid_value")
    tokens = await anyio.to_thread.run_sync(count_tokens, embedder, texts)
    if body.encoding_format == "base64":
        data = [EmbeddingItem(index=i, embedding=base64.b64encode(v.astype("<f4").tobytes()).decode("ascii"))
                for i, v in enumerate(vectors)]
    else:
        data = [EmbeddingItem(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)]
    return EmbeddingList(data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))
