"""A knowledge base on disk: `vector_store/<name>/` holding `kb.sqlite` (records) and `index-<gen>.faiss`.

Reading needs no lock: SQLite in WAL mode gives each query a consistent snapshot, and the FAISS file of the
committed generation is complete by construction (see vector_index). Writing takes an exclusive file lock
(`write.lock`), so two writers (two CLI runs, or the CLI and the web page) never interleave: the second waits up to
`lock_timeout_s`, then gets `KnowledgeBaseBusy`.

A write is one atomic commit (`Writer.commit`): all row changes in one SQLite transaction, the new FAISS file
written and fsynced before the transaction that names it commits. A crash at any point leaves either the previous
or the new version, loadable and consistent (vector count == chunk rows).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kb_qa.naming import validate_doc_path, validate_kb_name
from kb_qa.retrieval.terms import fts_document, fts_query
from kb_qa.schema import Chunk
from kb_qa.store import records, vector_index

log = logging.getLogger(__name__)

DB_FILE = "kb.sqlite"
LOCK_FILE = "write.lock"


class KnowledgeBaseError(RuntimeError):
    pass


class KnowledgeBaseNotFound(KnowledgeBaseError):
    pass


class KnowledgeBaseBusy(KnowledgeBaseError):
    pass


class EmbeddingMismatch(KnowledgeBaseError):
    pass


@dataclass(frozen=True)
class KnowledgeBaseInfo:
    name: str
    path: Path
    embedding_model: str | None
    dimension: int | None
    documents: int
    chunks: int
    generation: int


class KnowledgeBase:
    """One knowledge base. Cheap to open; the vector index is loaded on first search and reloaded after commits
    (by this or any other process)."""

    def __init__(self, store_root: Path, name: str):
        self.name = validate_kb_name(name)
        self.path = Path(store_root) / self.name
        self._db = self.path / DB_FILE
        self._read_conn = None
        self._index = None
        self._index_generation: int | None = None
        self._load_lock = threading.Lock()

    # -- opening -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, store_root: Path, name: str, *, create: bool = False) -> KnowledgeBase:
        kb = cls(store_root, name)
        if kb.path.is_symlink():
            raise KnowledgeBaseError(f"knowledge base {name!r}: {kb.path} is a symbolic link; refusing to use it")
        if not kb._db.is_file():
            if not create:
                raise KnowledgeBaseNotFound(f"knowledge base {name!r} does not exist (looked in {kb.path})")
            kb.path.mkdir(parents=True, exist_ok=True)
            conn = records.connect(kb._db)
            try:
                records.init_schema(conn)  # idempotent; executescript commits on its own
            finally:
                conn.close()
        return kb

    @staticmethod
    def list_names(store_root: Path) -> list[str]:
        root = Path(store_root)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / DB_FILE).is_file())

    @staticmethod
    def delete(store_root: Path, name: str, *, lock_timeout_s: float = 10.0) -> None:
        kb = KnowledgeBase(store_root, name)
        if not kb._db.is_file():
            raise KnowledgeBaseNotFound(f"knowledge base {name!r} does not exist")
        with kb._write_lock(lock_timeout_s):
            trash = kb.path.with_name(f".{kb.name}.deleting")
            shutil.rmtree(trash, ignore_errors=True)
            kb.path.rename(trash)  # atomic: the KB disappears at once, then the files go
        shutil.rmtree(trash, ignore_errors=True)

    def close(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None
        self._index = None
        self._index_generation = None

    @property
    def conn(self):
        if self._read_conn is None:
            self._read_conn = records.connect(self._db)
        return self._read_conn

    # -- reading -------------------------------------------------------------------------------------------
    def info(self) -> KnowledgeBaseInfo:
        c = self.conn
        dim = records.get_meta(c, "embedding_dim")
        return KnowledgeBaseInfo(
            name=self.name,
            path=self.path,
            embedding_model=records.get_meta(c, "embedding_model"),
            dimension=int(dim) if dim else None,
            documents=c.execute("SELECT COUNT(*) FROM documents").fetchone()[0],
            chunks=records.count_chunks(c),
            generation=int(records.get_meta(c, "index_generation", "0")),
        )

    def documents(self) -> list[records.DocumentRecord]:
        return records.documents(self.conn)

    def document(self, source: str) -> records.DocumentRecord | None:
        return records.document(self.conn, source)

    def has_content(self, sha256: str) -> bool:
        return records.content_exists(self.conn, sha256)

    def get_chunks(self, ids: Iterable[int]) -> dict[int, records.ChunkRecord]:
        return records.get_chunks(self.conn, ids)

    def chunk_ids_for_sources(self, sources: Iterable[str]) -> set[int]:
        return records.chunk_ids_for_sources(self.conn, sources)

    def check_embedding(self, model: str, dim: int | None = None, identity: dict | None = None) -> None:
        """Refuse to mix embedding models or dimensions in one index. `identity` ({'source', 'weights_sha256'},
        from the embedder): also refuse other weights under the same model name."""
        _check_embedding(self.conn, self.name, model, dim)
        _check_identity(self.conn, self.name, model, identity)

    def dense_search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """[(chunk id, cosine similarity)] per query vector, best first."""
        return vector_index.search(self._current_index(), queries, k)

    def keyword_search(self, text: str, k: int) -> list[tuple[int, float]]:
        """[(chunk id, BM25 score)] for the question `text`, best first."""
        match = fts_query(text)
        if match is None:
            return []
        return records.keyword_search(self.conn, match, k)

    def _current_index(self):
        """The FAISS index of the committed generation; reloaded when another commit happened since."""
        with self._load_lock:
            c = self.conn
            for attempt in range(5):
                c.execute("BEGIN")  # one snapshot for meta + count + vectors
                try:
                    generation = int(records.get_meta(c, "index_generation", "0"))
                    if self._index is not None and generation == self._index_generation:
                        return self._index
                    dim = records.get_meta(c, "embedding_dim")
                    if dim is None:
                        return None
                    path = vector_index.index_path(self.path, generation)
                    index = vector_index.read_index(
                        path, records.get_meta(c, "index_sha256"), records.count_chunks(c), int(dim))
                    rebuilt = False
                    if index is None and (path.exists() or attempt == 4):
                        index, rebuilt = self._rebuild_in_memory(c, int(dim)), True
                finally:
                    c.execute("COMMIT")
                if index is None:
                    continue  # the file vanished: a newer generation was committed meanwhile; read meta again
                if rebuilt:
                    self._try_repair(index, generation)
                self._index, self._index_generation = index, generation
                return index
            raise KnowledgeBaseError(f"knowledge base {self.name!r}: index kept changing while loading; try again")

    def _try_repair(self, index, generation: int) -> None:
        """Rewrite a damaged index file from the rebuilt index, if no writer is busy (else the next commit will)."""
        try:
            with self._write_lock(0):
                conn = records.connect(self._db)
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    if int(records.get_meta(conn, "index_generation", "0")) == generation:
                        _path, sha = vector_index.write_index(index, self.path, generation)
                        records.set_meta(conn, "index_sha256", sha)
                    conn.execute("COMMIT")
                finally:
                    conn.close()
            log.warning("knowledge base %r: vector index rebuilt from the records and rewritten", self.name)
        except KnowledgeBaseBusy:
            pass

    @staticmethod
    def _rebuild_in_memory(conn, dim: int):
        index = vector_index.new_index(dim)
        for ids, vecs in records.iter_vectors(conn, dim):
            index.add_with_ids(vecs, ids)
        return index

    # -- writing -------------------------------------------------------------------------------------------
    @contextmanager
    def _write_lock(self, timeout_s: float):
        from filelock import FileLock, Timeout

        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK_FILE), timeout=timeout_s)
        try:
            lock.acquire()
        except Timeout:
            raise KnowledgeBaseBusy(
                f"knowledge base {self.name!r} is busy: another ingest or edit is running (waited {timeout_s:g} s)"
            ) from None
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def writer(self, *, embedding_model: str | None = None, dimension: int | None = None,
               lock_timeout_s: float = 10.0):
        """Exclusive write access. Changes become visible only at `Writer.commit()`; leaving the block without
        committing discards them."""
        with self._write_lock(lock_timeout_s):
            w = Writer(self, embedding_model, dimension)
            try:
                yield w
            finally:
                w.close()


def _check_embedding(conn, kb_name: str, model: str, dim: int | None) -> None:
    """`dim` None: check the model name only (before the model is loaded)."""
    built_model = records.get_meta(conn, "embedding_model")
    built_dim = records.get_meta(conn, "embedding_dim")
    if built_model is None or records.count_chunks(conn) == 0:
        return
    if built_model != model or (dim is not None and int(built_dim) != dim):
        raise EmbeddingMismatch(
            f"knowledge base {kb_name!r} was built with embedding model {built_model!r} ({built_dim} dims), "
            f"but the configured model is {model!r}{f' ({dim} dims)' if dim else ''}. Vectors of different models cannot be "
            f"mixed: re-ingest with --rebuild to re-embed it with {model!r}, or set embedding.model back to "
            f"{built_model!r}."
        )


# The embedding model's resolved source and weights hash, recorded with the first vectors (kb_qa.models.resolve).
_IDENTITY_KEYS = {"source": "embedding_source", "weights_sha256": "embedding_weights_sha256"}


def _check_identity(conn, kb_name: str, model: str, identity: dict | None) -> None:
    if not identity or records.count_chunks(conn) == 0:
        return
    built = records.get_meta(conn, _IDENTITY_KEYS["weights_sha256"])
    if built is not None and built != identity["weights_sha256"]:
        built_source = records.get_meta(conn, _IDENTITY_KEYS["source"]) or "?"
        raise EmbeddingMismatch(
            f"knowledge base {kb_name!r} was built with {model!r} from {built_source} (weights sha256 {built[:12]}), "
            f"but {model!r} now resolves to {identity['source']} (weights sha256 {identity['weights_sha256'][:12]}): "
            "other weights under the same name cannot be mixed. Re-ingest with --rebuild, or point embedding.model "
            "at the original folder.")


class Writer:
    """Accumulates changes in one SQLite transaction; `commit()` makes them durable and visible atomically."""

    def __init__(self, kb: KnowledgeBase, embedding_model: str | None, dimension: int | None):
        self.kb = kb
        self.conn = records.connect(kb._db)
        records.init_schema(self.conn)
        self.dimension = dimension
        self.embedding_model = embedding_model
        self.embedding_identity: dict | None = None  # set_embedding_identity(), once the model is loaded
        self._added: dict[int, np.ndarray] = {}  # chunk id -> vector, since the last commit
        self._removed: set[int] = set()
        self._in_tx = False
        self._cleared = False
        generation = int(records.get_meta(self.conn, "index_generation", "0"))
        vector_index.remove_stale_files(kb.path, generation)  # leftovers of a crashed writer

    def _begin(self) -> None:
        if not self._in_tx:
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_tx = True
            if self.embedding_model is not None and not self._cleared:
                _check_embedding(self.conn, self.kb.name, self.embedding_model, self.dimension)

    # -- changes -------------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Remove every document (for --rebuild); takes effect at commit, with whatever is added after it."""
        self._cleared = True  # before _begin: a rebuild may switch embedding models
        self._begin()
        self._removed.update(r[0] for r in self.conn.execute("SELECT id FROM chunks"))
        self._added.clear()
        self.conn.execute("DELETE FROM documents")
        self.conn.execute("DELETE FROM chunk_terms")
        self.conn.execute("DELETE FROM chunks")
        self.conn.execute("DELETE FROM contents")
        for key in ("embedding_model", "embedding_dim", *_IDENTITY_KEYS.values()):
            self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))

    def has_content(self, sha256: str) -> bool:
        self._begin()
        return records.content_exists(self.conn, sha256)

    def document(self, source: str) -> records.DocumentRecord | None:
        self._begin()
        return records.document(self.conn, source)

    def put_document(self, source: str, sha256: str, size: int, origin: str | None,
                     chunks: list[Chunk] | None = None, vectors: np.ndarray | None = None) -> None:
        """Point `source` at content `sha256`, storing the content's chunks if it is new. Replaces whatever the
        path held before (its old chunks go at commit if nothing else shares them)."""
        source = validate_doc_path(source)
        self._begin()
        if not records.content_exists(self.conn, sha256):
            if chunks is None or vectors is None or len(chunks) != len(vectors) or not chunks:
                raise ValueError(f"{source}: new content needs its chunks and one vector per chunk")
            self._record_embedding(int(vectors.shape[1]))
            terms = [fts_document(c.text) for c in chunks]
            ids = records.insert_content(self.conn, sha256, chunks, vectors, terms)
            for chunk_id, vec in zip(ids, vectors):
                self._added[chunk_id] = vec
        records.upsert_document(self.conn, source, sha256, size, origin)
        self._collect_orphans()

    def set_embedding_identity(self, identity: dict | None) -> None:
        """The loaded model's {'source', 'weights_sha256'}: refused if the KB holds vectors of other weights,
        recorded with the first vectors (or now, for a KB built before identities were recorded)."""
        self.embedding_identity = identity or None
        if not self.embedding_identity or self.embedding_model is None:
            return
        self._begin()
        if not self._cleared:
            _check_identity(self.conn, self.kb.name, self.embedding_model, self.embedding_identity)
        if records.count_chunks(self.conn) and records.get_meta(self.conn, _IDENTITY_KEYS["weights_sha256"]) is None:
            self._store_identity()

    def _store_identity(self) -> None:
        for field, key in _IDENTITY_KEYS.items():
            records.set_meta(self.conn, key, str(self.embedding_identity[field]))

    def _record_embedding(self, dim: int) -> None:
        """The first vectors fix the KB's model and dimension; later ones must match them."""
        if self.embedding_model is None:
            raise ValueError("a writer that adds vectors must be given the embedding model's name")
        if records.get_meta(self.conn, "embedding_model") is None or records.count_chunks(self.conn) == 0:
            records.set_meta(self.conn, "embedding_model", self.embedding_model)
            records.set_meta(self.conn, "embedding_dim", str(dim))
            if self.embedding_identity:
                self._store_identity()
        _check_embedding(self.conn, self.kb.name, self.embedding_model, dim)

    def remove_document(self, source: str) -> bool:
        source = validate_doc_path(source)
        self._begin()
        if records.document(self.conn, source) is None:
            return False
        records.delete_document(self.conn, source)
        self._collect_orphans()
        return True

    def _collect_orphans(self) -> None:
        for chunk_id in records.delete_orphan_contents(self.conn):
            if self._added.pop(chunk_id, None) is None:
                self._removed.add(chunk_id)

    @property
    def pending(self) -> bool:
        return self._in_tx

    # -- commit --------------------------------------------------------------------------------------------
    def commit(self) -> None:
        """Make every change since the last commit durable and visible, atomically."""
        if not self._in_tx:
            return
        conn = self.conn
        dim_text = records.get_meta(conn, "embedding_dim")
        generation = int(records.get_meta(conn, "index_generation", "0"))
        new_generation = generation + 1
        if dim_text is None:  # nothing was ever embedded (e.g. only removals on an empty KB)
            index = None
        else:
            dim = int(dim_text)
            index = self._next_index(generation, dim)
        if index is not None:
            _crash_point("before-index-write")
            _path, sha = vector_index.write_index(index, self.kb.path, new_generation)
            _crash_point("after-index-write")
            records.set_meta(conn, "index_generation", str(new_generation))
            records.set_meta(conn, "index_sha256", sha)
            count = records.count_chunks(conn)
            if index.ntotal != count:  # should be impossible; refuse to commit an inconsistent pair
                conn.execute("ROLLBACK")
                self._in_tx = False
                raise KnowledgeBaseError(f"internal error: index has {index.ntotal} vectors, records {count}")
        conn.execute("COMMIT")
        self._in_tx = False
        _crash_point("after-commit")
        self._added.clear()
        self._removed.clear()
        self._cleared = False
        if index is not None:
            vector_index.remove_stale_files(self.kb.path, new_generation)

    def _next_index(self, generation: int, dim: int):
        """The committed index with this transaction's removals and additions applied (a fresh copy)."""
        sha = records.get_meta(self.conn, "index_sha256")
        path = vector_index.index_path(self.kb.path, generation)
        # The committed count is what the index file must hold: the records now include our uncommitted rows.
        committed_count = records.count_chunks(self.conn) - len(self._added) + len(self._removed)
        index = vector_index.read_index(path, sha, committed_count, dim) if generation else None
        if index is None:
            # First commit, or the committed file is damaged: derive it from the (uncommitted) records directly.
            return KnowledgeBase._rebuild_in_memory(self.conn, dim)
        if self._removed:
            index.remove_ids(np.fromiter(self._removed, dtype=np.int64))
        if self._added:
            ids = np.fromiter(self._added.keys(), dtype=np.int64)
            index.add_with_ids(np.stack(list(self._added.values())).astype(np.float32), ids)
        return index

    def close(self) -> None:
        if self._in_tx:
            self.conn.execute("ROLLBACK")
            self._in_tx = False
        self.conn.close()


def _crash_point(name: str) -> None:
    """Fault injection for the durability tests: KB_QA_CRASH_AT=<name> kills the process here, like a power cut."""
    import os

    if os.environ.get("KB_QA_CRASH_AT") == name:
        os._exit(99)
