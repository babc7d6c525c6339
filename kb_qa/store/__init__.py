"""Knowledge-base storage: SQLite records (source of truth) + a FAISS index file, committed atomically."""

from kb_qa.store.knowledge_base import (
    EmbeddingMismatch,
    KnowledgeBase,
    KnowledgeBaseBusy,
    KnowledgeBaseError,
    KnowledgeBaseInfo,
    KnowledgeBaseNotFound,
)

__all__ = [
    "EmbeddingMismatch",
    "KnowledgeBase",
    "KnowledgeBaseBusy",
    "KnowledgeBaseError",
    "KnowledgeBaseInfo",
    "KnowledgeBaseNotFound",
]
