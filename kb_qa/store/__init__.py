"""Knowledge-base storage: SQLite records (source of truth) + a FAISS index file, committed atomically.

The store owns every SQL statement and the keyword analyser (`terms`); nothing outside it opens the database.
It imports nothing from the layers above it (retrieval, qa, front ends)."""

from kb_qa.store.errors import (
    AnalyserMismatch,
    EmbeddingMismatch,
    KnowledgeBaseBusy,
    KnowledgeBaseDamaged,
    KnowledgeBaseError,
    KnowledgeBaseNotFound,
)
from kb_qa.store.knowledge_base import KnowledgeBase, KnowledgeBaseInfo

__all__ = [
    "AnalyserMismatch",
    "EmbeddingMismatch",
    "KnowledgeBase",
    "KnowledgeBaseBusy",
    "KnowledgeBaseDamaged",
    "KnowledgeBaseError",
    "KnowledgeBaseInfo",
    "KnowledgeBaseNotFound",
]
