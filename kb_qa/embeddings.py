"""Compatibility shim: the embedding code now lives in kb_qa/models/ (one backend per file). Import from there;
this module re-exports the public names until every caller has moved."""

from kb_qa.models.backend import EmbeddingBackendUnavailable
from kb_qa.models.cache import ensure_converted, model_cache_dir, model_cache_root
from kb_qa.models.embeddings import SentenceTransformerEmbeddings
from kb_qa.models.resolve import EmbeddingModelNotFound, pick_device, resolve_model, resolve_model_path

__all__ = [
    "EmbeddingBackendUnavailable",
    "EmbeddingModelNotFound",
    "SentenceTransformerEmbeddings",
    "ensure_converted",
    "model_cache_dir",
    "model_cache_root",
    "pick_device",
    "resolve_model",
    "resolve_model_path",
]
