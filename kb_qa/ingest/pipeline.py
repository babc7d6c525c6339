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
from kb_qa.store import KnowledgeBase

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
        lines += [f"  {self.ocr.summary()}"] if self.ocr.summary() else []
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
    `dimension`; it is called only if something new has to be embedded."""
    started = time.perf_counter()
    report = IngestReport(kb.name)
    candidates, missing = collect_files(paths, settings.extensions)
    report.outcomes.extend(missing)
    max_bytes = int(settings.max_file_mb * 1024 * 1024)
    embedder = None
    ocr_progress = _OcrProgress() if progress else None
    if not rebuild:
        kb.check_embedding(embedding_model)  # fail before any work if the KB was built with another model

    def emit(outcome: FileOutcome) -> None:
        report.outcomes.append(outcome)
        if on_file is not None:
            on_file(outcome)

    with kb.writer(embedding_model=embedding_model, lock_timeout_s=lock_timeout_s) as writer:
        if rebuild:
            writer.clear()
        batch: list[_Pending] = []
        batch_chunks = 0
        pending_by_sha: dict[str, _Pending] = {}

        def flush() -> None:
            nonlocal embedder, batch, batch_chunks
            new = [p for p in batch if p.chunks]
            if new:
                if embedder is None:
                    embedder = embedder_factory()
                    writer.set_embedding_identity(getattr(embedder, "identity", None))  # same name, other weights?
                texts = [c.text for p in new for c in p.chunks]
                vectors = _encode_sorted(embedder, texts, progress=progress)
                offset = 0
                for p in new:
                    n = len(p.chunks)
                    writer.put_document(p.source, p.sha256, p.size, p.origin, p.chunks, vectors[offset:offset + n])
                    offset += n
                report.chunks_embedded += len(texts)
            for p in batch:
                if not p.chunks:  # same bytes as content stored earlier in this run or before
                    writer.put_document(p.source, p.sha256, p.size, p.origin)
            if not rebuild:
                # A rebuild commits once, at the end: the new version is built beside the old one (in the open
                # transaction; readers keep answering from the old one) and a killed rebuild leaves the old whole.
                writer.commit()
            for p in batch:
                emit(FileOutcome(p.source, p.status, len(p.chunks),
                                 None if p.chunks else "same content as a document already stored"))
            batch, batch_chunks = [], 0
            pending_by_sha.clear()

        files = _progress(candidates, progress, "files")
        for cand in files:
            try:
                pending = _prepare(cand, writer, max_bytes, pending_by_sha, settings, ocr_progress)
            except LoadError as exc:
                emit(FileOutcome(cand.source, FAILED, reason=exc.reason))
                continue
            except Exception as exc:  # noqa: BLE001 - a parser bug on one file must not sink the batch
                log.exception("unexpected error loading %s", cand.path)
                emit(FileOutcome(cand.source, FAILED, reason=f"{type(exc).__name__}: {exc}"))
                continue
            if pending is None:
                emit(FileOutcome(cand.source, UNCHANGED))
                continue
            report.ocr.add(pending.ocr)
            batch.append(pending)
            batch_chunks += len(pending.chunks)
            if pending.chunks:
                pending_by_sha[pending.sha256] = pending
            if batch_chunks >= settings.commit_every_chunks:
                flush()
        if batch or writer.pending:
            flush()
        if rebuild:
            writer.commit()

        if prune:
            for doc in kb_documents_gone(writer):
                writer.remove_document(doc)
                emit(FileOutcome(doc, REMOVED, reason="file is gone"))
            writer.commit()

    report.seconds = time.perf_counter() - started
    return report


def kb_documents_gone(writer) -> list[str]:
    """Documents whose original file no longer exists (documents without a recorded origin are kept)."""
    return [d.source for d in writer.documents() if d.origin and not Path(d.origin).exists()]


def _prepare(cand: _Candidate, writer, max_bytes: int, pending_by_sha: dict[str, _Pending],
             settings: IngestSettings, on_ocr_page: Callable[[int, int, str], None] | None = None
             ) -> _Pending | None:
    """Read, hash and (if new) load + split one file. None = unchanged. Raises LoadError."""
    source = validate_doc_path(cand.source)
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
    sha = _sha256(data)
    existing = writer.document(source)
    if existing is not None and existing.sha256 == sha:
        if existing.origin != str(cand.path):
            writer.put_document(source, sha, size, str(cand.path))  # moved folder: remember where it is now
        return None
    status = UPDATED if existing is not None else ADDED
    pending = _Pending(source, str(cand.path), sha, size, status)
    if writer.has_content(sha) or sha in pending_by_sha:
        return pending  # identical bytes already stored (or queued): link, don't embed again
    options = ParseOptions.from_settings(settings)
    with collect_cost() as pending.ocr:  # OCR pages/pictures and seconds, for the summary
        sections = parse_file(cand.path, options, name=cand.path.name, on_progress=on_ocr_page)  # bounded worker
    chunks = split_sections(sections, source, chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap)
    if not chunks:
        raise LoadError(cand.path, "no text to index")
    check_chunks(len(chunks), cand.path, options.limits)
    pending.chunks = chunks
    return pending


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
