"""Builds the application's parts from settings, once; the CLI, the web page and the HTTP API all start here.

Heavy parts (embedding model, LLM) load lazily on first use and are shared by every caller of this object.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from pathlib import Path

from kb_qa.settings import Settings, load_settings
from kb_qa.store import KnowledgeBase

log = logging.getLogger(__name__)


class App:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load_settings()
        self._kbs: dict[str, KnowledgeBase] = {}
        self._lock = threading.Lock()

    # -- knowledge bases -----------------------------------------------------------------------------------
    @property
    def store_root(self) -> Path:
        return Path(self.settings.paths.vector_store_root)

    @property
    def docs_root(self) -> Path:
        return Path(self.settings.paths.knowledge_base_root)

    def kb_names(self) -> list[str]:
        return KnowledgeBase.list_names(self.store_root)

    def kb(self, name: str | None = None, *, create: bool = False) -> KnowledgeBase:
        """The knowledge base `name` (default: settings.default_kb), opened once per process."""
        name = name or self.settings.default_kb
        with self._lock:
            kb = self._kbs.get(name)
            if kb is None or not (kb.path / "kb.sqlite").is_file():
                kb = KnowledgeBase.open(self.store_root, name, create=create)
                self._kbs[name] = kb
            return kb

    def delete_kb(self, name: str) -> None:
        with self._lock:
            kb = self._kbs.pop(name, None)
            if kb is not None:
                kb.close()
        KnowledgeBase.delete(self.store_root, name)

    # -- models --------------------------------------------------------------------------------------------
    @cached_property
    def embeddings(self):
        from kb_qa.embeddings import SentenceTransformerEmbeddings

        log.info("loading embedding model %s", self.settings.embedding.model)
        return SentenceTransformerEmbeddings(self.settings.embedding)

    # -- ingestion -----------------------------------------------------------------------------------------
    def ingest(self, name: str | None, paths, *, prune: bool = False, rebuild: bool = False,
               progress: bool = False, lock_timeout_s: float = 10.0, on_file=None):
        from kb_qa.ingest.pipeline import ingest

        kb = self.kb(name, create=True)
        return ingest(
            kb, paths, self.settings.ingest, lambda: self.embeddings,
            embedding_model=self.settings.embedding.model, prune=prune, rebuild=rebuild, progress=progress,
            lock_timeout_s=lock_timeout_s, on_file=on_file,
        )
