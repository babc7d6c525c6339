"""THE composition root: one `App` builds every part from settings, once, and holds the use cases every front end
(CLI, web page, HTTP API) calls. Front ends hold no business logic; nothing below this module imports it.

    app = App(settings=None, *, embeddings=None, llm=None)   # settings: load_settings() when None
                                                             # embeddings / llm: injected parts (tests, servers)
Knowledge bases
    app.kb_names() -> [name]              app.kb(name=None, create=False) -> KnowledgeBase (opened once)
    app.delete_kb(name, lock_timeout_s=10)            index and records; the documents folder is kept
Documents (the one behaviour for every front end; kb_qa.documents)
    app.ingest(name, paths, prune=, rebuild=, progress=, lock_timeout_s=, on_file=) -> IngestReport
        Ctrl-C: raises IngestInterrupted (exit 130) carrying what was committed before it
    app.add_uploads(name, [(file name, bytes)], ...) -> IngestReport   rejected uploads are `failed` outcomes
    app.remove_documents(name, [path], lock_timeout_s=10, delete_files=True) -> RemoveReport
    app.remove_document(name, path, ...) -> bool
        removing a document also deletes its file when it lives in knowledge_base/<name>/, so a plain re-ingest
        of that folder does not add it back; files elsewhere (the user's ./docs) are never touched
Models
    app.embeddings                        the embedding model (loaded on first use); app.embeddings_loaded
    app.llm                               the answering model handle, or None = retrieval-only (loads on first use,
                                          never raises); every generation takes app.generation_lock
    app.llm_status() -> LLMStatus         .loaded, .state (loaded|not-loaded|loading|unavailable), .name,
                                          .reason (no weights / no GPU / backend missing / load failed), .configured
    app.reset_llm()                       forget a failed model so the next use retries
    app.tokenizer                         ChatGLM2's tokenizer when a tokenizer.model is configured (even without
                                          weights), else None; app.count_tokens(text) is exact then, else a safe
                                          over-estimate (kb_qa.llm.estimate)
Answering
    app.retriever                         kb_qa.retrieval.retriever.Retriever over these KBs (reranker inside)
    app.search(query, kbs=None, **options) -> list[Source]
    app.chain(llm=...) -> QAChain         app.stream_answer(question, history=(), kbs=None, *, overrides=None,
                                          files=None) -> text pieces, then the Answer; app.answer(...) -> Answer
    app.stream_chat(question, history=(), **sampling) -> text pieces; UnavailableError without a model
Errors: everything a user can cause derives from kb_qa.errors.KbQaError (`exit_code`, one-line `str`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from kb_qa.documents import IngestInterrupted, RemoveReport, add_uploads, ingest, remove_documents
from kb_qa.errors import UnavailableError
from kb_qa.llm.slot import LLMSlot, LLMStatus
from kb_qa.schema import History
from kb_qa.settings import Settings, load_settings
from kb_qa.store import KnowledgeBase
from kb_qa.store.backends import delete_knowledge_base, open_knowledge_base

log = logging.getLogger(__name__)

__all__ = ["App", "IngestInterrupted", "LLMStatus", "RemoveReport"]


class App:
    def __init__(self, settings: Settings | None = None, *, embeddings: Any = None, llm: Any = None):
        self.settings = settings or load_settings()
        self._kbs: dict[str, KnowledgeBase] = {}
        self._lock = threading.Lock()
        self._embeddings_lock = threading.Lock()
        if embeddings is not None:
            from kb_qa.models.langchain_embeddings import as_embedder  # any LangChain Embeddings fits

            self.__dict__["embeddings"] = as_embedder(embeddings, self.settings.embedding.model)  # the cached_property
        self._llm = LLMSlot(lambda: self.settings.llm, injected=llm)

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
                kb = open_knowledge_base(self.settings.store, self.store_root, name, create=create)
                self._kbs[name] = kb
            return kb

    def delete_kb(self, name: str, *, lock_timeout_s: float = 10.0) -> None:
        """Delete a knowledge base's index and records (waiting up to `lock_timeout_s` for a writer)."""
        with self._lock:
            kb = self._kbs.pop(name, None)
            if kb is not None:
                kb.close()
        delete_knowledge_base(self.settings.store, self.store_root, name, lock_timeout_s=lock_timeout_s)

    # -- documents (kb_qa.documents) -----------------------------------------------------------------------
    def ingest(self, name: str | None, paths, *, prune: bool = False, rebuild: bool = False,
               progress: bool = False, lock_timeout_s: float = 10.0, on_file=None):
        return ingest(self, name, paths, prune=prune, rebuild=rebuild, progress=progress,
                      lock_timeout_s=lock_timeout_s, on_file=on_file)

    def add_uploads(self, name: str, files: list[tuple[str, bytes]], *, progress: bool = False,
                    lock_timeout_s: float = 10.0, on_file=None):
        return add_uploads(self, name, files, progress=progress, lock_timeout_s=lock_timeout_s, on_file=on_file)

    def remove_documents(self, name: str, sources: Sequence[str], *, delete_files: bool = True,
                         lock_timeout_s: float = 10.0) -> RemoveReport:
        return remove_documents(self, name, sources, delete_files=delete_files, lock_timeout_s=lock_timeout_s)

    def remove_document(self, name: str, source: str, *, delete_file: bool = True,
                        lock_timeout_s: float = 10.0) -> bool:
        return bool(self.remove_documents(name, [source], delete_files=delete_file,
                                          lock_timeout_s=lock_timeout_s).removed)

    # -- models --------------------------------------------------------------------------------------------
    @cached_property
    def embeddings(self):
        from kb_qa.embeddings import SentenceTransformerEmbeddings

        log.info("loading embedding model %s", self.settings.embedding.model)
        return SentenceTransformerEmbeddings(self.settings.embedding)

    @property
    def embeddings_loaded(self) -> bool:
        return "embeddings" in self.__dict__

    @property
    def llm(self):
        """The answering model's handle (loaded on first use), or None: retrieval-only. See llm_status()."""
        return self._llm.get()

    def llm_status(self) -> LLMStatus:
        return self._llm.status()

    def reset_llm(self) -> None:
        self._llm.reset()

    @property
    def generation_lock(self) -> threading.Lock:
        """Held while any answer is generated (test `.locked()` to show "busy"; never hold it yourself)."""
        return self._llm.lock

    @cached_property
    def tokenizer(self):
        """ChatGLM2's tokenizer from the configured folder's tokenizer.model (weights not needed), else None."""
        from kb_qa.llm.estimate import configured_tokenizer

        return configured_tokenizer(self.settings.llm)

    def count_tokens(self, text: str, *, add_prefix: bool = True) -> int:
        """Exact with a configured tokenizer.model, else a count never below ChatGLM2's (kb_qa.llm.estimate)."""
        from kb_qa.llm.estimate import estimate_tokens

        tok = self.tokenizer
        return tok.count_tokens(text, add_prefix=add_prefix) if tok is not None else estimate_tokens(
            text, add_prefix=add_prefix)

    # -- answering -----------------------------------------------------------------------------------------
    @cached_property
    def retriever(self):
        from kb_qa.retrieval.retriever import Retriever

        return Retriever(self)

    @property
    def reranker(self):
        """The configured cross-encoder (loaded on first use), or None."""
        s = self.settings.retrieval
        if not s.reranker_model:
            return None
        from kb_qa.retrieval.rerank import get_reranker

        return get_reranker(s.reranker_model, self.settings.embedding.device)

    def search(self, query: str, kbs: str | Sequence[str] | None = None, **options):
        return self.retriever.search(query, kbs, **options)

    def chain(self, llm: Any = ...):
        """The QA chain over this app; `llm` defaults to app.llm (pass None for retrieval-only)."""
        from kb_qa.qa.chain import QAChain

        return QAChain(self, self.llm if llm is ... else llm)

    def stream_answer(self, question: str, history: History = (), kbs: str | Sequence[str] | None = None, *,
                      overrides=None, files=None, llm: Any = ...):
        return self.chain(llm).stream_answer(question, history, kbs, overrides=overrides, files=files)

    def answer(self, question: str, history: History = (), kbs: str | Sequence[str] | None = None, **kwargs):
        llm = kwargs.pop("llm", ...)
        return self.chain(llm).answer(question, history, kbs, **kwargs)

    def stream_chat(self, question: str, history: History = (), **sampling) -> Iterator[str]:
        """Plain chat with the model (no knowledge base), ChatGLM2's dialogue format."""
        handle = self.llm
        if handle is None:
            raise UnavailableError(f"no language model to chat with ({self.llm_status().reason})")
        return handle.stream_chat(question, list(history), **sampling)
