"""What the embedding backends share: the error for a backend that cannot run, the one place optional backend
packages are imported (`require`), and the `Backend` protocol: `encode(texts, batch_size)` -> (n, dim) float32,
not yet normalised, plus `dimension` and `device` (a label for describe())."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol

from kb_qa.errors import UnavailableError

# What to install for each optional backend (pins: openvino in requirements.txt, onnx* in requirements-bench.txt).
PACKAGES = {
    "openvino": "pip install openvino==2026.4.1",
    "onnx": "pip install onnxruntime==1.32.0 onnx==1.23.2",
    "onnx-int8": "pip install onnxruntime==1.32.0 onnx==1.23.2",
}


class EmbeddingBackendUnavailable(UnavailableError):
    """The configured backend cannot run here (package missing, model not convertible)."""


class Backend(Protocol):
    dimension: int
    device: str

    def encode(self, texts: list[str], batch_size: int): ...


def embedding_dimension(model) -> int:
    """A SentenceTransformer's output dimension (the method was renamed in sentence-transformers 5)."""
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = get_dim()
    if dimension is None:
        raise EmbeddingBackendUnavailable("the embedding model does not declare its output dimension")
    return int(dimension)


def unavailable(backend: str, missing: str | None) -> EmbeddingBackendUnavailable:
    needs = f"needs {missing}" if missing else "cannot run"
    return EmbeddingBackendUnavailable(
        f"embedding.backend {backend!r} {needs}: {PACKAGES.get(backend, 'see requirements-bench.txt')} "
        "(or set embedding.backend: torch)")


def require(module: str, backend: str) -> ModuleType:
    """`import module`, or the actionable EmbeddingBackendUnavailable naming what to install for `backend`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise unavailable(backend, exc.name or module) from exc
