"""embedding.backend 'torch': sentence-transformers' own forward pass, on any device. Used instead of the
converted backends whenever embedding.device resolves to something other than the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kb_qa.models.backend import embedding_dimension
from kb_qa.models.resolve import pick_device

if TYPE_CHECKING:
    from kb_qa.settings import EmbeddingSettings


class TorchBackend:
    def __init__(self, model_path: str, settings: EmbeddingSettings):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model_path, device=pick_device(settings.device), local_files_only=True)
        if settings.max_seq_length:
            self.model.max_seq_length = settings.max_seq_length
        self.dimension = embedding_dimension(self.model)
        self.device = str(self.model.device)

    def encode(self, texts: list[str], batch_size: int):
        return self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
