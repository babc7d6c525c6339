"""Ingestion: files -> load -> split -> content hash -> embed (batched across files) -> one atomic commit per batch.

Incremental by content hash (SHA-256 of the file's bytes):
  - a path whose bytes are unchanged costs a hash and nothing more (the embedding model is not even loaded);
  - a changed path (even with the same name and size) has its old chunks replaced;
  - bytes already stored under another path are linked, not embedded again;
  - `prune` removes documents whose original files are gone; `rebuild` re-embeds everything from scratch.
A file that fails to load is reported with its reason; the rest of the batch is committed and nothing already
stored is touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kb_qa.ingest.discover import discover
from kb_qa.ingest.limits import ParseOptions, check_chunks
from kb_qa.ingest.loaders import SUPPORTED_EXTENSIONS, LoadError
from kb_qa.ingest.ocr import OcrCost, collect_cost
from kb_qa.ingest.splitter import split_sections
from kb_qa.ingest.worker import parse_file
from kb_qa.naming import validate_doc_path
from kb_qa.schema import Chunk
from kb_qa.settings import IngestSettings
from kb_qa.store import KnowledgeBase, KnowledgeBaseError
from kb_qa.store.errors import StorageError

log = logging.getLogger(__name__)

ADDED, UPDATED, UNCHANGED, FAILED, REMOVED = "added", "updated", "unchanged", "failed", "removed"


@dataclass
class FileOutcome:
    source: str
    status: str  # added | updated | unchanged | failed | removed
    chunks: int = 0
    reason: str | None = None  # why it failed, or a note (e.g. "same content as a.txt")


@dataclass
class IngestReport:
    kb: str
    outcomes: list[FileOutcome] = field(default_factory=list)
    chunks_embedded: int = 0
    seconds: float = 0.0
    ocr: OcrCost = field(default_factory=OcrCost)  # pages/pictures OCR'd while parsing the files loaded

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    def summary(self) -> str:
        parts = [f"{s} {self.count(s)}" for s in (ADDED, UPDATED, UNCHANGED, FAILED, REMOVED)]
        lines = [f"knowledge base {self.kb!r}: " + ", ".join(parts)
                 + f"; {self.chunks_embedded} chunks embedded in {self.seconds:.1f} s"]
        ocr = self.ocr.summary()
        lines += [f"  {ocr}"] if ocr else []
        lines += [f"  failed: {o.source}: {o.reason}" for o in self.failed]
        return "\n".join(lines)


@dataclass
class _Candidate:
    path: Path  # absolute
    source: str  # relative to the knowledge base


@dataclass
class _Pending:
    source: str
    origin: str
    sha256: str
    size: int
    status: str
    chunks: list[Chunk] = field(default_factory=list)
    vectors: np.ndarray | None = None  # one per chunk, once embedded
    ocr: OcrCost = field(default_factory=OcrCost)


def collect_files(paths: Iterable[str | os.PathLike], extensions: Iterable[str] | None = None
                  ) -> tuple[list[_Candidate], list[FileOutcome]]:
    """Files to ingest under `paths` (folders recursively, hidden entries skipped), with their KB-relative
    source paths; plus failures for paths that do not exist. A folder's files are named relative to it; a file
    given directly is named by its file name."""
    found, refused = discover(paths, extensions or SUPPORTED_EXTENSIONS)  # never leaves the given folders
    failures = [FileOutcome(r.path, FAILED, reason=r.reason) for r in refused]
    return [_Candidate(f.path, f.source) for f in found], failures


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ingest(
    kb: KnowledgeBase,
    paths: Iterable[str | os.PathLike],
    settings: IngestSettings,
    embedder_factory: Callable[[], object],
    *,
    embedding_model: str,
    prune: bool = False,
    rebuild: bool = False,
    progress: bool = False,
    lock_timeout_s: float = 10.0,
    on_file: Callable[[FileOutcome], None] | None = None,
) -> IngestReport:
    """Ingest `paths` into `kb`. `embedder_factory()` returns an object with `encode(texts) -> ndarray` and
    `dimension`; it is called only if something new has to be embedded.

    The KB's write lock is never held while a file is parsed (a hostile file may take up to
    `ingest.max_parse_seconds`): which files changed is decided from the committed records without the lock,
    new ones are parsed, split and embedded, and only then is the lock taken for one batch, the records
    re-checked (another writer may have stored the same path or bytes meanwhile) and the batch committed. A
    rebuild parses everything first, then clears, embeds and commits once under the lock."""
    started = time.perf_counter()
    report = IngestReport(kb.name)
    candidates, missing = collect_files(paths, settings.extensions)
    report.outcomes.extend(missing)
    ocr_progress = _OcrProgress() if progress else None
    if not rebuild:
        kb.check_embedding(embedding_model)  # fail before any work if the KB was built with another model
    run = _Run(kb, settings, embedder_factory, embedding_model, lock_timeout_s, progress, rebuild, report, on_file)

    batch: list[_Pending] = []
    batch_chunks = 0
    for cand in _progress(candidates, progress, "files"):
        try:
            pending = _prepare(cand, kb, run.options, run.queued, settings, rebuild=rebuild,
                               on_ocr_page=ocr_progress)  # no lock held
        except LoadError as exc:
            run.emit(FileOutcome(cand.source, FAILED, reason=exc.reason))
            continue
        except (KnowledgeBaseError, StorageError):
            raise  # the store failed, not this file: the run stops (what was committed stays committed)
        except Exception as exc:  # noqa: BLE001 - a parser bug on one file must not sink the batch
            log.exception("unexpected error loading %s", cand.path)
            run.emit(FileOutcome(cand.source, FAILED, reason=f"{type(exc).__name__}: {exc}"))
            continue
        if pending is None:
            run.emit(FileOutcome(cand.source, UNCHANGED))
            continue
        report.ocr.add(pending.ocr)
        batch.append(pending)
        batch_chunks += len(pending.chunks)
        if pending.chunks:
            run.queued[pending.sha256] = pending
        if not rebuild and batch_chunks >= settings.commit_every_chunks:
            run.commit_batch(batch)
            batch, batch_chunks = [], 0
    if rebuild:
        run.rebuild(batch)
    elif batch:
        run.commit_batch(batch)

    if prune:
        with kb.writer(embedding_model=embedding_model, lock_timeout_s=lock_timeout_s) as writer:
            for doc in kb_documents_gone(writer):
                writer.remove_document(doc)
                run.emit(FileOutcome(doc, REMOVED, reason="file is gone"))
            writer.commit()

    report.seconds = time.perf_counter() - started
    return report


class _Run:
    """One ingest's state between batches: the embedder (loaded on first need) and what is queued."""

    def __init__(self, kb: KnowledgeBase, settings: IngestSettings, embedder_factory: Callable[[], object],
                 embedding_model: str, lock_timeout_s: float, progress: bool, rebuild: bool,
                 report: IngestReport, on_file: Callable[[FileOutcome], None] | None):
        self.kb, self.settings, self.embedding_model = kb, settings, embedding_model
        self.embedder_factory = embedder_factory
        self.embedder: Any = None  # an object with encode(texts) and dimension, loaded on first need
        self.lock_timeout_s, self.progress, self.rebuilding = lock_timeout_s, progress, rebuild
        self.report, self.on_file = report, on_file
        self.options = ParseOptions.from_settings(settings)
        # sha256 -> the pending file whose chunks will store these bytes: later copies in the same batch (the
        # whole run for a rebuild) are linked to it instead of parsed again.
        self.queued: dict[str, _Pending] = {}

    def emit(self, outcome: FileOutcome) -> None:
        self.report.outcomes.append(outcome)
        if self.on_file is not None:
            self.on_file(outcome)

    def _identity(self) -> dict | None:
        return getattr(self.embedder, "identity", None)

    def embed(self, batch: list[_Pending]) -> None:
        """Vectors for the batch's new chunks (no lock needed: nothing is written)."""
        new = [p for p in batch if p.chunks and p.vectors is None]
        if not new:
            return
        if self.embedder is None:
            self.embedder = self.embedder_factory()
            if not self.rebuilding:  # other weights under the same name: refuse before spending time embedding
                self.kb.check_embedding(self.embedding_model, identity=self._identity())
        texts = [c.text for p in new for c in p.chunks]
        vectors = _encode_sorted(self.embedder, texts, progress=self.progress)
        offset = 0
        for p in new:
            p.vectors = vectors[offset:offset + len(p.chunks)]
            offset += len(p.chunks)
        self.report.chunks_embedded += len(texts)

    def commit_batch(self, batch: list[_Pending]) -> None:
        """Embed, then under the write lock re-check each file against the records and commit the batch."""
        self.embed(batch)
        with self.kb.writer(embedding_model=self.embedding_model, lock_timeout_s=self.lock_timeout_s) as writer:
            if self.embedder is not None:
                writer.set_embedding_identity(self._identity())
            outcomes = self._store(writer, batch, recheck=True)
            writer.commit()
        self.queued.clear()  # committed now: later copies find them in the records
        for outcome in outcomes:
            self.emit(outcome)

    def rebuild(self, pending: list[_Pending]) -> None:
        """Clear the KB and store everything parsed, in one commit (a killed rebuild leaves the old version)."""
        step = self.settings.commit_every_chunks
        with self.kb.writer(embedding_model=self.embedding_model, lock_timeout_s=self.lock_timeout_s) as writer:
            writer.clear()
            outcomes: list[FileOutcome] = []
            batch: list[_Pending] = []
            count = 0
            for p in [*pending, None]:
                if p is not None:
                    batch.append(p)
                    count += len(p.chunks)
                if batch and (p is None or count >= step):
                    # The new version is built beside the old one in the open transaction (readers keep
                    # answering from the old one); vectors are written batch by batch, not kept in memory.
                    self.embed(batch)
                    if self.embedder is not None:
                        writer.set_embedding_identity(self._identity())
                    outcomes += self._store(writer, batch, recheck=False)
                    for q in batch:
                        q.chunks, q.vectors = [], None
                    batch, count = [], 0
            writer.commit()
        for outcome in outcomes:
            self.emit(outcome)

    def _store(self, writer, batch: list[_Pending], *, recheck: bool) -> list[FileOutcome]:
        """Write the batch into the writer's transaction; the outcomes to report once it commits. `recheck`:
        the decisions were made without the lock, so each file is checked against the records again."""
        outcomes: dict[int, FileOutcome] = {}
        for p in sorted(batch, key=lambda p: not p.chunks):  # content first, then the links to it
            outcomes[id(p)] = self._store_one(writer, p, recheck=recheck)
        return [outcomes[id(p)] for p in batch]

    @staticmethod
    def _store_one(writer, p: _Pending, *, recheck: bool) -> FileOutcome:
        existing = writer.document(p.source) if recheck else None
        if existing is not None and existing.sha256 == p.sha256:
            # Unchanged (or another ingest stored these bytes under this path meanwhile): at most its origin.
            if existing.origin != p.origin:
                writer.put_document(p.source, p.sha256, p.size, p.origin)
            return FileOutcome(p.source, UNCHANGED)
        if not p.chunks and not writer.has_content(p.sha256):
            # Linked to bytes that were stored when we looked and removed by another writer since.
            return FileOutcome(p.source, FAILED, reason="its content was removed by another ingest meanwhile; "
                                                        "run the ingest again")
        status = p.status if not recheck else (UPDATED if existing is not None else ADDED)
        writer.put_document(p.source, p.sha256, p.size, p.origin, p.chunks or None, p.vectors)
        return FileOutcome(p.source, status, len(p.chunks),
                           None if p.chunks else "same content as a document already stored")


def kb_documents_gone(writer) -> list[str]:
    """Documents whose original file no longer exists (documents without a recorded origin are kept)."""
    return [d.source for d in writer.documents() if d.origin and not Path(d.origin).exists()]


def _prepare(cand: _Candidate, kb: KnowledgeBase, options: ParseOptions, queued: dict[str, _Pending],
             settings: IngestSettings, *, rebuild: bool,
             on_ocr_page: Callable[[int, int, str], None] | None = None) -> _Pending | None:
    """Read, hash and (if new) load + split one file, from the committed records and without the write lock.
    None = unchanged. Raises LoadError."""
    source = validate_doc_path(cand.source)
    max_bytes = options.limits.max_file_bytes
    sha, size = _hash_file(cand, max_bytes)
    existing = None if rebuild else kb.document(source)
    if existing is not None and existing.sha256 == sha:
        if existing.origin == str(cand.path):
            return None
        return _Pending(source, str(cand.path), sha, size, UNCHANGED)  # moved folder: remember where it is now
    status = UPDATED if existing is not None else ADDED
    pending = _Pending(source, str(cand.path), sha, size, status)
    if sha in queued or (not rebuild and kb.has_content(sha)):
        return pending  # identical bytes already stored (or queued): link, don't embed again
    with collect_cost() as pending.ocr:  # OCR pages/pictures and seconds, for the summary
        sections = parse_file(cand.path, options, name=cand.path.name, on_progress=on_ocr_page)  # bounded worker
    if _hash_file(cand, max_bytes)[0] != sha:  # the chunks must be those of the bytes recorded as their hash
        raise LoadError(cand.path, "the file changed while it was being read; run the ingest again")
    chunks = split_sections(sections, source, chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap)
    if not chunks:
        raise LoadError(cand.path, "no text to index")
    check_chunks(len(chunks), cand.path, options.limits)
    pending.chunks = chunks
    return pending


def _hash_file(cand: _Candidate, max_bytes: int) -> tuple[str, int]:
    """(SHA-256 of the file's bytes, size); refused over `max_bytes` before reading."""
    try:
        size = cand.path.stat().st_size
    except OSError as exc:
        raise LoadError(cand.path, f"cannot read: {exc.strerror or exc}") from exc
    if size > max_bytes:
        raise LoadError(cand.path, f"file is {size / 2**20:.1f} MiB, over the limit of "
                                   f"{max_bytes / 2**20:.1f} MiB (ingest.max_file_mb)")
    try:
        data = cand.path.read_bytes()
    except OSError as exc:
        raise LoadError(cand.path, f"cannot read: {exc.strerror or exc}") from exc
    return _sha256(data), len(data)


def _encode_sorted(embedder, texts: list[str], *, progress: bool) -> np.ndarray:
    """Embed in length order (less padding per batch), in slices so a progress bar can follow; original order
    out."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    step = 512
    bar = _progress(None, progress, "chunks", total=len(texts))
    for start in range(0, len(order), step):
        idx = order[start:start + step]
        out[idx] = embedder.encode([texts[i] for i in idx])
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return out


class _OcrProgress:
    """A progress bar per file for OCR pages (`on_progress(done, total, unit)` from the parser)."""

    def __init__(self) -> None:
        self._bar: Any = None  # a tqdm bar while a file's OCR is under way

    def __call__(self, done: int, total: int, unit: str) -> None:
        bar = self._bar if self._bar is not None else _progress(None, True, unit, total=total)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            bar = None
        self._bar = bar


def _progress(iterable, enabled: bool, unit: str, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, unit=" " + unit, desc=f"{unit:>6}", leave=False, dynamic_ncols=True)
