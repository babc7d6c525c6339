"""Sentence-transformers embeddings behind LangChain's `Embeddings` interface, run by torch, OpenVINO or ONNX Runtime.

Vectors are L2-normalised float32, so inner product = cosine similarity (what the FAISS index relies on).
The model name resolves offline, in the order kb_qa.models.resolve documents; `identity` (resolved source and
weights hash) is what a knowledge base records with its vectors so that other weights under the same name are
refused. The backend (`embedding.backend`) is chosen by one `match`, each branch importing its module lazily:
openvino (CPU default), torch (any device; used whenever the device is not the CPU), onnx, onnx-int8 (CPU).
Measured speed and retrieval quality: bench/README.md (python bench/bench_ingest.py --quality).

Deliberately not here: sentence-transformers' own `backend="onnx"/"openvino"` (they need optimum-onnx /
optimum-intel; optimum-onnx pins transformers < 4.58, a downgrade from this project's transformers 5), and GPUs
for the converted backends (use torch on a GPU).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings

from kb_qa.models import resolve

if TYPE_CHECKING:
    import numpy as np

    from kb_qa.models.backend import Backend
    from kb_qa.settings import EmbeddingSettings

log = logging.getLogger(__name__)


def _make_backend(backend: str, path: str, settings: EmbeddingSettings) -> Backend:
    match backend:
        case "torch":
            from kb_qa.models.torch_backend import TorchBackend

            return TorchBackend(path, settings)
        case "openvino":
            from kb_qa.models.openvino_backend import OpenVINOBackend

            return OpenVINOBackend(path, settings)
        case "onnx" | "onnx-int8":
            from kb_qa.models.onnx_backend import OnnxBackend

            return OnnxBackend(path, settings)
        case other:
            raise ValueError(f"unknown embedding.backend {other!r}")


class SentenceTransformerEmbeddings(Embeddings):
    """LangChain `Embeddings` over a sentence-transformers model; thread-safe (one forward pass at a time)."""

    def __init__(self, settings: EmbeddingSettings):
        self.settings = settings
        self.model_name = settings.model
        self.resolved = resolve.resolve_model(settings.model)
        backend = settings.backend
        if backend != "torch" and (device := resolve.pick_device(settings.device)) != "cpu":
            log.warning("embedding.backend %r runs on the CPU only; using torch on %s (embedding.device)",
                        backend, device)
            backend = "torch"
        self.backend = backend
        self._backend = _make_backend(backend, str(self.resolved.path), settings)
        self.dimension: int = self._backend.dimension
        self._lock = threading.Lock()

    @property
    def identity(self) -> dict[str, str]:
        """{'source': where the model was found, 'weights_sha256': ...}: recorded by the knowledge base."""
        return self.resolved.identity

    def describe(self) -> str:
        return f"{self.model_name} ({self.dimension} dims, {self._backend.device}, {self.backend})"

    def encode(self, texts: list[str], *, show_progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised. (`show_progress` is accepted for compatibility; the ingest
        pipeline draws its own bar.)"""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = np.asarray(self._backend.encode(list(texts), self.settings.batch_size), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.encode([self.settings.query_prefix + q for q in queries])

    # LangChain interface
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode_queries([text])[0].tolist()
