"""Optional second stage: a sentence-transformers `CrossEncoder` re-scores the fused candidates, question and
passage read together.

The model is named by `retrieval.reranker_model` (a local folder or a name in the local Hugging Face cache, never
downloaded) and loaded once per process (`get_reranker` caches it by name). Its score is the model's relevance
probability, sigmoid(logit) in [0, 1]; when a reranker is configured that probability is the `score` the threshold
is compared with (see kb_qa.retrieval.retriever).

Deliberately not here: choosing which candidates to rerank (the retriever passes the fused top candidates).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

log = logging.getLogger(__name__)

_cache: dict[tuple[str, str], Reranker] = {}
_cache_lock = threading.Lock()


class Reranker:
    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32):
        import torch
        from sentence_transformers import CrossEncoder

        from kb_qa.embeddings import pick_device, resolve_model_path

        self.name = model
        path = resolve_model_path(model)
        self._torch = torch
        self._model = CrossEncoder(path, device=pick_device(device), local_files_only=True)
        self._batch_size = batch_size
        self._lock = threading.Lock()  # one forward pass at a time (the model is shared by every request)

    def describe(self) -> str:
        return f"{self.name} ({self._model.device})"

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """Relevance probability of each passage for `query`, in [0, 1]."""
        if not passages:
            return []
        torch = self._torch
        with self._lock:
            logits = self._model.predict([(query, p) for p in passages], batch_size=self._batch_size,
                                         activation_fn=torch.nn.Identity(), convert_to_numpy=False,
                                         convert_to_tensor=True, show_progress_bar=False)
        logits = logits.float()
        if logits.ndim == 2 and logits.shape[1] > 1:  # a classifier with several labels: P(last label = relevant)
            probs = torch.softmax(logits, dim=1)[:, -1]
        else:
            probs = torch.sigmoid(logits.reshape(-1))
        return [float(p) for p in probs.cpu()]


def get_reranker(model: str, device: str = "cpu") -> Reranker:
    """The reranker `model`, loaded on first use and shared afterwards."""
    key = (model, device)
    with _cache_lock:
        reranker = _cache.get(key)
        if reranker is None:
            log.info("loading reranker %s", model)
            reranker = _cache[key] = Reranker(model, device)
        return reranker
