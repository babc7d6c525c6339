"""The store's errors, each one of `kb_qa.errors`' families (so every front end shows it as one line with its exit
code). I/O failures (disk full, unreadable file) are `kb_qa.errors.StorageError` itself: an `OSError`, which cannot
share a base with these `RuntimeError`s."""

from __future__ import annotations

from kb_qa.errors import BusyError, KbQaError, NotFoundError, StorageError, UsageError


class KnowledgeBaseError(KbQaError, RuntimeError):
    """Something about one knowledge base is wrong; the message names it and, where there is one, the fix."""


class KnowledgeBaseNotFound(KnowledgeBaseError, NotFoundError):
    pass


class KnowledgeBaseBusy(KnowledgeBaseError, BusyError):
    pass


class EmbeddingMismatch(KnowledgeBaseError, UsageError):
    pass


class AnalyserMismatch(KnowledgeBaseError, UsageError):
    """The KB's keyword index was cut by another version of `kb_qa.store.terms`: re-ingest with --rebuild."""


class KnowledgeBaseDamaged(KnowledgeBaseError):
    """The KB's files are not a usable knowledge base (no schema, not a database, a symlink, failed integrity
    check). Others in the same store are unaffected; `kb-qa kb check/repair NAME` or `kb delete NAME` is the fix."""


__all__ = ["AnalyserMismatch", "EmbeddingMismatch", "KnowledgeBaseBusy", "KnowledgeBaseDamaged", "KnowledgeBaseError",
           "KnowledgeBaseNotFound", "StorageError"]
