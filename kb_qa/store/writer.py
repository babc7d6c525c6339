"""Writing a knowledge base: `Writer`, obtained from `KnowledgeBase.writer()` (which holds the write lock).

A write is one atomic commit (`Writer.commit`): all row changes in one SQLite transaction (the chunks with their
vectors, their keyword rows, the tombstones of removed chunks, the new generation and chunk count). No index file
is written: readers add the new rows to their in-memory index (see live_index), so a commit costs what its batch
costs, not what the KB holds. A crash at any point leaves either the previous or the new version, loadable and
consistent (vector count == chunk rows).
"""

from __future__ import annotations

import functools
import os
import sqlite3
from typing import TYPE_CHECKING

import numpy as np

from kb_qa.naming import validate_doc_path
from kb_qa.schema import Chunk
from kb_qa.store import records, vector_index
from kb_qa.store.errors import (
    EmbeddingMismatch,
    KnowledgeBaseDamaged,
    KnowledgeBaseError,
    KnowledgeBaseNotFound,
    StorageError,
    is_io_error,
    storage_error,
)
from kb_qa.store.errors import is_disk_full as _is_disk_full
from kb_qa.store.terms import ANALYSER_META_KEY, ANALYSER_VERSION, check_analyser, fts_document

if TYPE_CHECKING:
    from kb_qa.store.knowledge_base import KnowledgeBase


def check_embedding(conn, kb_name: str, model: str, dim: int | None) -> None:
    """Refuse to mix embedding models or dimensions in one index. `dim` None: check the model name only (before
    the model is loaded)."""
    built_model = records.get_meta(conn, "embedding_model")
    built_dim = records.get_meta(conn, "embedding_dim")
    if built_model is None or records.chunk_count(conn) == 0:
        return
    if built_model != model or (dim is not None and built_dim is not None and int(built_dim) != dim):
        raise EmbeddingMismatch(
            f"knowledge base {kb_name!r} was built with embedding model {built_model!r} ({built_dim} dims), "
            f"but the configured model is {model!r}{f' ({dim} dims)' if dim else ''}. "
            f"Vectors of different models cannot be mixed: re-ingest with --rebuild to re-embed it with {model!r}, "
            f"or set embedding.model back to {built_model!r}."
        )


# The embedding model's resolved source and weights hash, recorded with the first vectors (kb_qa.models.resolve).
IDENTITY_KEYS = {"source": "embedding_source", "weights_sha256": "embedding_weights_sha256"}


def check_identity(conn, kb_name: str, model: str, identity: dict | None) -> None:
    """Refuse vectors or queries from other weights under the KB's model name (identity: {'source',
    'weights_sha256'} from the embedder; None or a KB without a recorded hash: nothing to compare)."""
    if not identity or not records.has_chunks(conn):
        return
    built = records.get_meta(conn, IDENTITY_KEYS["weights_sha256"])
    if built is not None and built != identity["weights_sha256"]:
        built_source = records.get_meta(conn, IDENTITY_KEYS["source"]) or "?"
        raise EmbeddingMismatch(
            f"knowledge base {kb_name!r} was built with {model!r} from {built_source} (weights sha256 {built[:12]}), "
            f"but {model!r} now resolves to {identity['source']} (weights sha256 {identity['weights_sha256'][:12]}): "
            "other weights under the same name cannot be mixed. Re-ingest with --rebuild, or point embedding.model "
            "at the original folder.")


def _storing(what: str):
    """A Writer method whose disk failure rolls the open transaction back and becomes one `StorageError` line."""
    def decorate(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except (OSError, sqlite3.OperationalError) as exc:
                if not is_io_error(exc):
                    raise
                self._rollback_quietly()
                raise self._storage_error(what, exc) from exc
        return guarded
    return decorate


class Writer:
    """Accumulates changes in one SQLite transaction; `commit()` makes them durable and visible atomically."""

    def __init__(self, kb: KnowledgeBase, embedding_model: str | None, dimension: int | None):
        self.kb = kb
        state = kb._state()
        if state == "missing":
            raise KnowledgeBaseNotFound(f"knowledge base {kb.name!r} does not exist")
        if state is not None:  # never write through a symlink, into a half-made or a foreign file
            raise KnowledgeBaseDamaged(kb._problem_of(state))
        with kb._io("opening the database for writing"):
            self._conn = records.connect(kb._db)
        try:
            # A page damaged on disk is found before anything is written on top of it (O(database size)).
            verdict = [r[0] for r in self._conn.execute("PRAGMA quick_check(5)")]
            if verdict != ["ok"]:
                raise KnowledgeBaseDamaged(
                    f"knowledge base {kb.name!r}: the database failed SQLite's quick_check ({'; '.join(verdict)}); "
                    f"nothing was written. Run `kb-qa kb check {kb.name}` and `kb-qa kb repair {kb.name}`, or "
                    f"re-ingest into a new knowledge base")
            records.init_schema(self._conn)
            ann = records.get_ann(self._conn)
        except sqlite3.DatabaseError as exc:  # "database disk image is malformed" can also come as an exception
            self._conn.close()
            if is_io_error(exc):  # the disk failed (full, I/O error, read-only): says nothing about the file
                raise storage_error(kb.name, "opening the database for writing", exc, kb.path) from exc
            raise KnowledgeBaseDamaged(f"knowledge base {kb.name!r}: the database cannot be read ({exc}); nothing "
                                       f"was written. Run `kb-qa kb check {kb.name}`") from exc
        except BaseException:
            self._conn.close()
            raise
        self.dimension = dimension
        self.embedding_model = embedding_model
        self.embedding_identity: dict | None = None  # set_embedding_identity(), once the model is loaded
        self._added: set[int] = set()  # chunk ids added since the last commit (not after a clear(): all are new)
        self._removed: set[int] = set()  # committed chunk ids removed since the last commit (tombstoned at commit)
        self._in_tx = False
        self._cleared = False
        # leftovers of a crashed writer or compaction (and index files of the earlier one-file-per-commit format)
        vector_index.remove_stale_files(kb.path, ann.generation if ann else 0)

    def _begin(self) -> None:
        self._check_transaction()
        if not self._in_tx:
            self._conn.execute("BEGIN IMMEDIATE")
            self._in_tx = True
            if self.embedding_model is not None and not self._cleared:
                check_embedding(self._conn, self.kb.name, self.embedding_model, self.dimension)
            if not self._cleared:  # new terms must not be mixed into an index cut by another analyser
                check_analyser(self.kb.name, records.get_meta(self._conn, ANALYSER_META_KEY),
                               records.count_chunks(self._conn))
                records.check_keyword_format(self._conn, self.kb.name)  # store format 1: `kb repair` first

    def _check_transaction(self) -> None:
        """SQLite rolls a transaction back by itself after some I/O errors (SQLITE_FULL, SQLITE_IOERR): what this
        writer did since BEGIN is gone, and a statement now would commit on its own, outside any batch. Refuse."""
        if self._in_tx and not self._conn.in_transaction:
            self._rollback_quietly()
            raise StorageError(f"knowledge base {self.kb.name!r}: the batch in progress was lost (SQLite rolled it "
                               f"back after an I/O error). Nothing was lost: the previous version is intact. "
                               f"Run it again")

    # -- reading inside the transaction --------------------------------------------------------------------
    @_storing("reading the records")
    def has_content(self, sha256: str) -> bool:
        self._begin()
        return records.content_exists(self._conn, sha256)

    @_storing("reading the records")
    def document(self, source: str) -> records.DocumentRecord | None:
        self._begin()
        return records.document(self._conn, source)

    @_storing("reading the records")
    def documents(self) -> list[records.DocumentRecord]:
        """Every document as this transaction sees it (its own changes included)."""
        self._begin()
        return records.documents(self._conn)

    # -- changes -------------------------------------------------------------------------------------------
    @_storing("clearing the records for the rebuild")
    def clear(self) -> None:
        """Remove every document (for --rebuild); takes effect at commit, with whatever is added after it."""
        self._cleared = True  # before _begin: a rebuild may switch embedding models
        self._begin()
        self._added.clear()
        self._removed.clear()  # every reader reloads after a rebuild (vectors_rebased_at): no tombstones needed
        if records.has_terms_column(self._conn):
            records.clear_keyword_index(self._conn)  # contentless FTS5: emptied by its own command, not DELETE
        else:  # a rebuild of a KB of store format 1: rebuilt in the new one
            records.upgrade_keyword_index(self._conn)
        for table in ("documents", "chunks", "contents", "tombstones"):
            self._conn.execute(f"DELETE FROM {table}")
        for key in ("embedding_model", "embedding_dim", *IDENTITY_KEYS.values()):
            self._conn.execute("DELETE FROM meta WHERE key = ?", (key,))

    def put_document(self, source: str, sha256: str, size: int, origin: str | None,
                     chunks: list[Chunk] | None = None, vectors: np.ndarray | None = None) -> None:
        """Point `source` at content `sha256`, storing the content's chunks if it is new. Replaces whatever the
        path held before (its old chunks go at commit if nothing else shares them)."""
        try:
            self._put_document(source, sha256, size, origin, chunks, vectors)
        except (OSError, sqlite3.OperationalError) as exc:
            self._rollback_quietly()  # the whole uncommitted batch goes: a half-written one must never commit
            if isinstance(exc, StorageError):
                raise
            raise self._storage_error(f"storing {source}", exc) from exc

    def _put_document(self, source: str, sha256: str, size: int, origin: str | None,
                      chunks: list[Chunk] | None, vectors: np.ndarray | None) -> None:
        source = validate_doc_path(source)
        self._begin()
        if not records.content_exists(self._conn, sha256):
            if chunks is None or vectors is None or len(chunks) != len(vectors) or not chunks:
                raise ValueError(f"{source}: new content needs its chunks and one vector per chunk")
            self._record_embedding(int(vectors.shape[1]))
            terms = [fts_document(c.text) for c in chunks]
            ids = records.insert_content(self._conn, sha256, chunks, vectors, terms)
            if not self._cleared:  # a rebuild counts its rows at commit
                self._added.update(ids)
        previous = records.document(self._conn, source)
        records.upsert_document(self._conn, source, sha256, size, origin)
        if previous is not None and previous.sha256 != sha256:
            self._collect_orphans()

    @_storing("recording the embedding model")
    def set_embedding_identity(self, identity: dict | None) -> None:
        """The loaded model's {'source', 'weights_sha256'}: refused if the KB holds vectors of other weights,
        recorded with the first vectors (or now, for a KB built before identities were recorded)."""
        self.embedding_identity = identity or None
        if not self.embedding_identity or self.embedding_model is None:
            return
        self._begin()
        if not self._cleared:
            check_identity(self._conn, self.kb.name, self.embedding_model, self.embedding_identity)
        if records.has_chunks(self._conn) and records.get_meta(self._conn, IDENTITY_KEYS["weights_sha256"]) is None:
            self._store_identity()

    def _store_identity(self) -> None:
        assert self.embedding_identity is not None
        for field, key in IDENTITY_KEYS.items():
            records.set_meta(self._conn, key, str(self.embedding_identity[field]))

    def _record_embedding(self, dim: int) -> None:
        """The first vectors fix the KB's model and dimension; later ones must match them."""
        if self.embedding_model is None:
            raise ValueError("a writer that adds vectors must be given the embedding model's name")
        if records.get_meta(self._conn, "embedding_model") is None or not records.has_chunks(self._conn):
            records.set_meta(self._conn, "embedding_model", self.embedding_model)
            records.set_meta(self._conn, "embedding_dim", str(dim))
            if self.embedding_identity:
                self._store_identity()
        check_embedding(self._conn, self.kb.name, self.embedding_model, dim)

    @_storing("removing a document")
    def remove_document(self, source: str) -> bool:
        source = validate_doc_path(source)
        self._begin()
        previous = records.document(self._conn, source)
        if previous is None:
            return False
        records.delete_document(self._conn, source)
        self._collect_orphans()
        return True

    def _collect_orphans(self) -> None:
        """Drop every content no document points at any more. A scan of contents (O(KB) per changed or removed
        document, nothing for new or unchanged ones): collecting only the replaced content lost a case the kill
        soak found, not yet understood."""
        for chunk_id in records.delete_orphan_contents(self._conn):
            if chunk_id in self._added:
                self._added.discard(chunk_id)  # added and removed in this transaction: never committed
            elif not self._cleared:
                self._removed.add(chunk_id)

    @property
    def pending(self) -> bool:
        return self._in_tx

    # -- commit --------------------------------------------------------------------------------------------
    def commit(self) -> None:
        """Make every change since the last commit durable and visible, atomically. A disk-full or I/O error
        becomes one `StorageError` line; the transaction is rolled back, so the previous version stays whole."""
        if not self._in_tx:
            return
        try:
            self._commit()
        except (OSError, sqlite3.OperationalError, RuntimeError) as exc:
            if isinstance(exc, StorageError):
                raise
            if isinstance(exc, KnowledgeBaseError) or (isinstance(exc, RuntimeError) and not is_io_error(exc)):
                raise
            self._rollback_quietly()
            raise self._storage_error("committing the changes", exc) from exc

    def _storage_error(self, what: str, exc: BaseException) -> StorageError:
        need = None
        if _is_disk_full(exc):  # the database's journal for a large batch, and SQLite's own headroom
            try:
                need = max(self.kb._db.stat().st_size // 4, 1 << 20)
            except OSError:
                need = None
        return storage_error(self.kb.name, what, exc, self.kb.path, need_bytes=need, outcome=(
            "nothing was lost: the previous version is intact and the temporary files were removed"))

    def _committed_meta(self, key: str) -> str | None:
        try:
            return records.get_meta(self._conn, key)
        except sqlite3.Error:
            return None

    def _commit(self) -> None:
        conn = self._conn
        self._check_transaction()
        new_generation = int(records.get_meta(conn, "index_generation", "0")) + 1
        if self._cleared:
            # A rebuild: every reader reloads from the records, and the approximate index (of the old chunks) goes.
            records.set_meta(conn, "vectors_rebased_at", str(new_generation))
            records.set_ann(conn, None)
            count = records.count_chunks(conn)  # a rebuild's rows are all new: counted once
        else:  # the committed count plus this batch: O(batch), where counting the rows is O(KB)
            recorded = records.get_meta(conn, "chunk_count")
            count = (int(recorded) + len(self._added) - len(self._removed) if recorded is not None
                     else records.count_chunks(conn))  # a KB from before the recorded count: counted once
        if self._removed:
            records.add_tombstones(conn, self._removed, new_generation)
        records.set_meta(conn, "index_generation", str(new_generation))
        self._record_counts(count)
        _crash_point("before-commit")
        conn.execute("COMMIT")
        self._in_tx = False
        _crash_point("after-commit")
        self._added.clear()
        self._removed.clear()
        records.shrink_wal(conn)
        if self._cleared:
            self._cleared = False
            vector_index.remove_stale_files(self.kb.path, 0)

    def _record_counts(self, count: int) -> None:
        """The meta every commit writes, whatever the backend (subclasses call this too): the chunk count
        (readers' O(1) N for IDF, and the vector count check) and the analyser version that cut the FTS terms
        (store.terms)."""
        records.set_meta(self._conn, "chunk_count", str(count))
        records.set_meta(self._conn, ANALYSER_META_KEY, ANALYSER_VERSION)

    def _rollback(self) -> None:
        if self._in_tx:
            self._in_tx = False
            self._conn.execute("ROLLBACK")

    def _rollback_quietly(self) -> None:
        """Roll back whatever is open. After an I/O error SQLite may already have rolled the transaction back
        itself ("cannot rollback - no transaction is active"): that must never replace the original error."""
        self._in_tx = False
        self._added.clear()
        self._removed.clear()
        self._cleared = False
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def close(self) -> None:
        try:
            self._rollback_quietly()
        finally:
            self._conn.close()


def _crash_point(name: str) -> None:
    """Fault injection for the durability tests: KB_QA_CRASH_AT=<name> kills the process here, like a power cut."""
    if os.environ.get("KB_QA_CRASH_AT") == name:
        os._exit(99)
