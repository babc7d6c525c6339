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

    def add_uploads(self, name: str, files: list[tuple[str, bytes]], *, progress: bool = False,
                    lock_timeout_s: float = 10.0, on_file=None):
        """Store uploaded (file name, bytes) pairs in knowledge_base/<name>/ and ingest them. Rejected uploads
        appear in the report as failed, with the reason; the others are stored and ingested."""
        from kb_qa.ingest.loaders import SUPPORTED_EXTENSIONS
        from kb_qa.ingest.pipeline import FAILED, FileOutcome
        from kb_qa.uploads import UploadRejected, save_upload

        max_bytes = int(self.settings.ingest.max_file_mb * 2**20)
        saved, rejected = [], []
        for filename, data in files:
            try:
                saved.append(save_upload(self.docs_root, name, filename, data, max_bytes=max_bytes,
                                         extensions=SUPPORTED_EXTENSIONS))
            except UploadRejected as exc:
                rejected.append(FileOutcome(str(filename), FAILED, reason=str(exc)))
        report = self.ingest(name, [s.path for s in saved], progress=progress, lock_timeout_s=lock_timeout_s,
                             on_file=on_file)
        report.outcomes[:0] = rejected
        return report

    def remove_document(self, name: str, source: str, *, delete_file: bool = True,
                        lock_timeout_s: float = 10.0) -> bool:
        """Remove one document from the index (and, for files kept in knowledge_base/<name>/, the file)."""
        from kb_qa.naming import safe_join

        kb = self.kb(name)
        with kb.writer(lock_timeout_s=lock_timeout_s) as writer:
            record = writer.document(source)
            removed = writer.remove_document(source)
            writer.commit()
        if removed and delete_file and record is not None and record.origin:
            folder = (self.docs_root / kb.name).resolve()
            target = safe_join(folder, source)
            if str(target) == record.origin and target.is_file():
                target.unlink()
        return removed
