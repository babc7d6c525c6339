"""The document use cases behind `App`: ingest, add uploads, remove documents. One behaviour for every front end.

- ingest: the pipeline (kb_qa.ingest.pipeline) with the app's embedder and the KB's own chunk sizes when it was
  created with options (kb_qa.kb_options; a KB made for another embedding model is refused); Ctrl-C stops it
  between files and raises `IngestInterrupted`, which names what was committed (batches commit atomically: the
  one in progress is rolled back, everything reported before it is stored).
- add_uploads: each (file name, bytes) is sanitised and saved atomically into knowledge_base/<kb>/
  (kb_qa.ingest.uploads), then ingested; a rejected upload is a `failed` outcome with its reason.
- remove_documents: every path is validated before anything changes (a bad path removes nothing); the records go
  in one commit; then each removed document's file is deleted when it lives in knowledge_base/<kb>/ (a regular
  file, not a symlink), so a plain re-ingest of that folder does not bring it back. Files elsewhere are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kb_qa.errors import EXIT_INTERRUPTED, KbQaError


class IngestInterrupted(KbQaError):
    """Ctrl-C during ingest. `committed`: the outcomes stored before it (FileOutcome list)."""

    exit_code = EXIT_INTERRUPTED
    details: list[str]  # optional extra lines the CLI prints under the message (set by kb_qa/cli/ingest.py)

    def __init__(self, kb: str, committed: list):
        self.kb, self.committed = kb, committed
        stored = [o for o in committed if o.status in ("added", "updated", "removed")]
        super().__init__(f"interrupted: {len(stored)} document(s) of knowledge base {kb!r} were committed before "
                         "Ctrl-C; the batch in progress was rolled back (run the same command again to finish)")


@dataclass
class RemoveReport:
    kb: str
    removed: list[str] = field(default_factory=list)  # document paths removed from the index
    missing: list[str] = field(default_factory=list)  # not in the knowledge base
    deleted_files: list[str] = field(default_factory=list)  # files deleted from knowledge_base/<kb>/


def ingest(app, name: str | None, paths, *, prune: bool = False, rebuild: bool = False, progress: bool = False,
           lock_timeout_s: float = 10.0, on_file=None):
    from kb_qa.ingest.pipeline import ingest as run_pipeline
    from kb_qa.kb_options import check_model, ingest_settings_for

    kb = app.kb(name, create=True)
    check_model(kb, app.settings.embedding.model)  # a KB made for another model: refused before any work
    seen: list = []

    def record(outcome) -> None:
        seen.append(outcome)
        if on_file is not None:
            on_file(outcome)

    try:
        return run_pipeline(kb, paths, ingest_settings_for(kb, app.settings.ingest), lambda: app.embeddings,
                            embedding_model=app.settings.embedding.model, prune=prune, rebuild=rebuild,
                            progress=progress, lock_timeout_s=lock_timeout_s, on_file=record)
    except KeyboardInterrupt as exc:
        raise IngestInterrupted(kb.name, seen) from exc


def add_uploads(app, name: str, files: list[tuple[str, bytes]], *, progress: bool = False,
                lock_timeout_s: float = 10.0, on_file=None):
    """Store uploaded (file name, bytes) pairs in knowledge_base/<name>/ and ingest them."""
    from kb_qa.ingest.loaders import SUPPORTED_EXTENSIONS
    from kb_qa.ingest.pipeline import FAILED, FileOutcome
    from kb_qa.ingest.uploads import UploadRejected, save_upload

    max_bytes = int(app.settings.ingest.max_file_mb * 2**20)
    saved, rejected = [], []
    for filename, data in files:
        try:
            saved.append(save_upload(app.docs_root, name, filename, data, max_bytes=max_bytes,
                                     extensions=SUPPORTED_EXTENSIONS))
        except UploadRejected as exc:
            rejected.append(FileOutcome(str(filename), FAILED, reason=str(exc)))
    report = ingest(app, name, [s.path for s in saved], progress=progress, lock_timeout_s=lock_timeout_s,
                    on_file=on_file)
    report.outcomes[:0] = rejected
    return report


def remove_documents(app, name: str, sources: Sequence[str], *, delete_files: bool = True,
                     lock_timeout_s: float = 10.0) -> RemoveReport:
    from kb_qa.paths import validate_doc_path

    paths = [validate_doc_path(s) for s in sources]  # raises before anything is touched
    kb = app.kb(name)
    report = RemoveReport(kb.name)
    origins: dict[str, str | None] = {}
    with kb.writer(lock_timeout_s=lock_timeout_s) as writer:
        for path in dict.fromkeys(paths):
            record = writer.document(path)
            if record is not None and writer.remove_document(path):
                report.removed.append(path)
                origins[path] = record.origin
            else:
                report.missing.append(path)
        writer.commit()
    if delete_files:
        folder = (app.docs_root / kb.name).resolve()
        undeletable: list[tuple[Path, OSError]] = []
        for path in report.removed:
            target = _file_inside(folder, origins.get(path))
            if target is not None:
                try:
                    target.unlink()
                    report.deleted_files.append(str(target))
                except FileNotFoundError:
                    pass  # gone already: nothing to bring it back
                except OSError as exc:
                    undeletable.append((target, exc))
        if undeletable:
            from kb_qa.errors import StorageError

            first, failure = undeletable[0]
            more = f" (and {len(undeletable) - 1} more)" if len(undeletable) > 1 else ""
            raise StorageError(
                f"knowledge base {kb.name!r}: {len(report.removed)} document(s) were removed from the knowledge "
                f"base, but deleting the file {first}{more} failed: {failure.strerror or failure}. Delete it by "
                f"hand, or a re-ingest of {folder} brings it back")
    return report


def _file_inside(folder: Path, origin: str | None) -> Path | None:
    """`origin` when it is a regular file (not a symlink) inside `folder`; else None."""
    if not origin:
        return None
    path = Path(origin)
    if path.is_symlink() or not path.is_file():
        return None
    resolved = path.resolve()
    return resolved if folder in resolved.parents else None
