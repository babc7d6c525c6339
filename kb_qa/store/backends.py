"""Which store backs a knowledge base (`store.backend`): the local SQLite + FAISS store, or Milvus.

The composition root (`kb_qa.app`) opens and deletes knowledge bases through these two functions, so the rest of the
system sees one `KnowledgeBase` interface whatever the backend."""

from __future__ import annotations

from pathlib import Path

from kb_qa.store.knowledge_base import KnowledgeBase


def open_knowledge_base(store_settings, store_root: Path, name: str, *, create: bool = False) -> KnowledgeBase:
    if store_settings is not None and store_settings.backend == "milvus":
        from kb_qa.store.milvus import MilvusKnowledgeBase

        return MilvusKnowledgeBase.open(store_root, name, create=create, uri=store_settings.milvus_uri,
                                        token=store_settings.milvus_token)
    kb = KnowledgeBase.open(store_root, name, create=create)
    if store_settings is not None:  # past this size a keyword top k may be approximate (store.keyword_topk)
        kb.keyword_approximate_from = store_settings.ann_min_chunks
    return kb


def delete_knowledge_base(store_settings, store_root: Path, name: str, *, lock_timeout_s: float = 10.0) -> None:
    if store_settings is not None and store_settings.backend == "milvus":
        from kb_qa.store.milvus import MilvusKnowledgeBase

        MilvusKnowledgeBase.delete_milvus(store_root, name, uri=store_settings.milvus_uri,
                                          token=store_settings.milvus_token, lock_timeout_s=lock_timeout_s)
        return
    KnowledgeBase.delete(store_root, name, lock_timeout_s=lock_timeout_s)
