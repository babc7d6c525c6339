"""Any LangChain `Embeddings` object as kb_qa's embedder: `as_embedder(embeddings, model_name)`.

kb_qa's ingest and retrieval use `encode(texts) -> (n, dim) float32 ndarray` (L2-normalised: scores are cosines),
`encode_queries(queries)`, `dimension` and `model_name` (recorded by the knowledge base, which refuses vectors of
another model or width). A plain LangChain `Embeddings` (OpenAIEmbeddings, HuggingFaceEmbeddings, a fake) has only
`embed_documents`/`embed_query`; `LangChainEmbedder` adds the rest. `dimension` is learnt from one probe
embedding on first use. Objects that already have the kb_qa interface (SentenceTransformerEmbeddings) pass through.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

_NATIVE = ("encode", "encode_queries", "dimension", "model_name")


def _normalised(vectors: Any) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"the embedding model returned an array of shape {array.shape}, not (texts, dimension)")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12), dtype=np.float32)


class LangChainEmbedder(Embeddings):
    """kb_qa's embedder interface over a LangChain `Embeddings` (documents via embed_documents, queries via
    embed_query, so asymmetric models keep their query side)."""

    def __init__(self, embeddings: Embeddings, model_name: str | None = None):
        self.embeddings = embeddings
        named = getattr(embeddings, "model", None) or getattr(embeddings, "model_name", None)
        self.model_name = model_name or str(named or type(embeddings).__name__)
        self._dimension: int | None = None
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            with self._lock:
                if self._dimension is None:
                    self._dimension = len(self.embeddings.embed_query("dimension probe"))
        return self._dimension

    def describe(self) -> str:
        return f"{self.model_name} ({self.dimension} dims, LangChain {type(self.embeddings).__name__})"

    def encode(self, texts: list[str], *, show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = _normalised(self.embeddings.embed_documents(list(texts)))
        self._check_width(vectors)
        return vectors

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        if not queries:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = _normalised([self.embeddings.embed_query(q) for q in queries])
        self._check_width(vectors)
        return vectors

    def _check_width(self, vectors: np.ndarray) -> None:
        if vectors.shape[1] != self.dimension:
            raise ValueError(f"the embedding model {self.model_name!r} returned {vectors.shape[1]}-dimensional "
                             f"vectors after {self.dimension}-dimensional ones")

    # LangChain interface (normalised, like SentenceTransformerEmbeddings)
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode_queries([text])[0].tolist()


def as_embedder(embeddings: Any, model_name: str | None = None) -> Any:
    """`embeddings` itself when it already speaks kb_qa's interface, else a `LangChainEmbedder` around it."""
    if all(hasattr(embeddings, name) for name in _NATIVE):
        return embeddings
    if not (hasattr(embeddings, "embed_documents") and hasattr(embeddings, "embed_query")):
        raise TypeError(f"{type(embeddings).__name__} is not a LangChain Embeddings (embed_documents/embed_query)")
    return LangChainEmbedder(embeddings, model_name)
