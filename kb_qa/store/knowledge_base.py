"""A knowledge base on disk: `vector_store/<name>/` holding `kb.sqlite` (records, vectors included) and, for large
KBs after `kb compact`, one approximate index file `index-<gen>.faiss`.

Reading needs no lock: SQLite in WAL mode gives each query a consistent snapshot, each reader keeps its vector
index current from that snapshot (see live_index), and the index file SQLite names is complete by construction
(see vector_index). Writing takes an exclusive file lock
(`write.lock`), so two writers (two CLI runs, or the CLI and the web page) never interleave: the second waits up to
`lock_timeout_s`, then gets `KnowledgeBaseBusy`. The writing side is `kb_qa.store.writer`.

Every query the rest of the system makes goes through the methods below (retrieval is pure logic over them);
each search has a batch form and the single form is built on it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Collection, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kb_qa.naming import validate_kb_name
from kb_qa.store import live_index, records, vector_index
from kb_qa.store.errors import (
    KnowledgeBaseBusy,
    KnowledgeBaseDamaged,
    KnowledgeBaseNotFound,
    is_io_error,
    storage_error,
)
from kb_qa.store.terms import ANALYSER_META_KEY, check_analyser

log = logging.getLogger(__name__)

DB_FILE = "kb.sqlite"
LOCK_FILE = "write.lock"
_MISSING = "missing"
_HALF_MADE = "half-made"  # a file without tables (killed or disk full while it was created): "not created yet"


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
        self._index: live_index.LiveIndex | None = None
        self._load_lock = threading.RLock()  # loading/advancing the index vs searching it
        self._query_lock = threading.Lock()  # the read connection is shared by threads; one statement at a time
        self._frequencies = records.TermFrequencies()  # document frequencies counted on the read connection
        # From this many chunks on, a keyword top k that cannot be proved cheaply is approximate (keyword_topk);
        # None: always exact. The composition root sets it from `store.ann_min_chunks` (backends.py).
        self.keyword_approximate_from: int | None = None

    # -- opening -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, store_root: Path, name: str, *, create: bool = False) -> KnowledgeBase:
        """Open `name`; with `create`, create it if it does not exist (or was left half-made by a crash)."""
        kb = cls(store_root, name)
        if kb.path.is_symlink():
            raise KnowledgeBaseDamaged(f"knowledge base {name!r}: {kb.path} is a symbolic link; refusing to use it")
        state = kb._state()
        if state == _MISSING or (state == _HALF_MADE and create):
            if not create:
                raise KnowledgeBaseNotFound(f"knowledge base {name!r} does not exist (looked in {kb.path})")
            kb._create()
        elif state is not None:
            raise KnowledgeBaseDamaged(kb._problem_of(state))
        return kb

    @contextmanager
    def _io(self, what: str, outcome: str = "nothing was changed"):
        """Turn a failure of the disk inside the block into one `StorageError` line naming this KB and `what`."""
        try:
            yield
        except (OSError, sqlite3.OperationalError, RuntimeError) as exc:
            if not is_io_error(exc):
                raise
            raise storage_error(self.name, what, exc, self.path, outcome=outcome) from exc

    def problem(self) -> str | None:
        """Why this KB's files cannot be used, in one line with the fix; None when they look right (or there is
        no KB). Cheap: it checks the files and the schema, not every page (that is `kb_qa.store.doctor.check`).
        A disk that cannot be read is not damage: that raises `StorageError`."""
        return self._problem_of(self._state())

    def _problem_of(self, state: str | None) -> str | None:
        """`problem()` for a `_state()` already read (so the line describes what the caller saw)."""
        if state == _MISSING:
            return None
        if state == _HALF_MADE:
            return (f"knowledge base {self.name!r} was never fully created (a crash or a full disk while it was "
                    f"created); re-run the ingest to create it, or delete it with "
                    f"`python -m kb_qa.kb delete {self.name}`")
        return state

    def _state(self) -> str | None:
        """None (usable), _MISSING, _HALF_MADE, or the reason the files are damaged. Raises StorageError when the
        disk fails while looking (an unreadable disk says nothing about the file)."""
        with self._io("opening the database"):
            return self._read_state()

    def _read_state(self) -> str | None:
        if not self._db.exists() and not self._db.is_symlink():
            return _MISSING
        fix = f"run `kb-qa kb repair {self.name}` or delete it with `python -m kb_qa.kb delete {self.name}`"
        if self._db.is_symlink() or not self._db.is_file():
            return (f"knowledge base {self.name!r}: {self._db} is a symbolic link or not a regular file; "
                    f"refusing to use it (replace it with the real file, or {fix})")
        if self._db.stat().st_size == 0:
            return _HALF_MADE
        try:
            conn = records.connect_plain(self._db)
            try:
                missing = records.missing_tables(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            if is_io_error(exc):
                raise
            return f"knowledge base {self.name!r}: {self._db} is not a readable database ({exc}); {fix}"
        if missing == set(records.TABLES):
            return _HALF_MADE
        if missing:
            return f"knowledge base {self.name!r}: tables {', '.join(sorted(missing))} are missing; {fix}"
        return None

    def _create(self) -> None:
        """Create the records atomically: a complete database under a temporary name, renamed into place, under
        the write lock. A crash leaves either no KB or a whole empty one, never a schema-less file."""
        with self._write_lock(10.0):
            if self._state() is None:
                return  # another process created it meanwhile
            tmp = self.path / f".{DB_FILE}.creating"
            try:
                for leftover in self.path.glob(f".{DB_FILE}.creating*"):
                    leftover.unlink()
                conn = records.connect(tmp, journal="DELETE")  # no -wal beside the temporary file
                try:
                    records.init_schema(conn)
                finally:
                    conn.close()
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                for stale in (self._db, self._db.with_name(DB_FILE + "-wal"), self._db.with_name(DB_FILE + "-shm")):
                    stale.unlink(missing_ok=True)  # a half-made file and its journal: nothing in it to keep
                os.replace(tmp, self._db)
                vector_index.fsync_dir(self.path)
            except (OSError, sqlite3.Error) as exc:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    log.warning("could not remove %s (the next creation removes it)", tmp)
                raise storage_error(self.name, f"creating it in {self.path}", exc, self.path,
                                    outcome="nothing was stored") from exc

    @staticmethod
    def list_names(store_root: Path) -> list[str]:
        """Every knowledge base in the store, damaged ones included (a damaged KB never hides the others: ask
        `KnowledgeBase(root, name).problem()` or `list_status` which is which)."""
        root = Path(store_root)
        if not root.is_dir():
            return []
        names = []
        for p in root.iterdir():
            if p.name.startswith(".") or not ((p / DB_FILE).exists() or (p / DB_FILE).is_symlink()):
                continue
            names.append(p.name)
        return sorted(names)

    @staticmethod
    def list_status(store_root: Path) -> list[tuple[str, str | None]]:
        """[(name, problem or None)] for every knowledge base in the store."""
        out = []
        for name in KnowledgeBase.list_names(store_root):
            try:
                problem = KnowledgeBase(store_root, name).problem()
            except Exception as exc:  # noqa: BLE001 - an unexpected failure is still reported, not raised
                problem = f"knowledge base {name!r}: cannot be read ({exc})"
            out.append((name, problem))
        return out

    @staticmethod
    def delete(store_root: Path, name: str, *, lock_timeout_s: float = 10.0) -> None:
        kb = KnowledgeBase(store_root, name)
        if not (kb._db.exists() or kb._db.is_symlink()):
            raise KnowledgeBaseNotFound(f"knowledge base {name!r} does not exist")
        with kb._write_lock(lock_timeout_s):
            trash = kb.path.with_name(f".{kb.name}.deleting")
            shutil.rmtree(trash, ignore_errors=True)
            with kb._io("deleting it", outcome="it was not deleted"):
                kb.path.rename(trash)  # atomic: the KB disappears at once, then the files go
        shutil.rmtree(trash, ignore_errors=True)
        if trash.exists():  # the KB is gone; its files could not all be removed (I/O error): say where they are
            log.warning("knowledge base %r was deleted, but some of its files could not be removed: delete %s by "
                        "hand (or the next delete of this name removes it)", name, trash)

    def close(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None
            self._frequencies = records.TermFrequencies()  # they belonged to that connection
        self._index = None

    @property
    def _conn(self):
        if self._read_conn is None:
            self._read_conn = records.connect(self._db)
        return self._read_conn

    def _query(self, fn, *args):
        """`fn(conn, *args)` on the shared read connection, one at a time."""
        with self._query_lock, self._io("reading the records"):
            return fn(self._conn, *args)

    # -- reading -------------------------------------------------------------------------------------------
    def info(self) -> KnowledgeBaseInfo:
        def read(c):
            dim = records.get_meta(c, "embedding_dim")
            return KnowledgeBaseInfo(
                name=self.name,
                path=self.path,
                embedding_model=records.get_meta(c, "embedding_model"),
                dimension=int(dim) if dim else None,
                documents=records.count_documents(c),
                chunks=records.chunk_count(c),
                generation=int(records.get_meta(c, "index_generation", "0")),
            )

        return self._query(read)

    @property
    def kb_id(self) -> str:
        """A random id fixed when the KB was created: a KB deleted and re-created under the same name gets a new
        one (key caches by it, never by name or folder)."""
        return self._query(records.get_meta, "kb_id") or f"legacy:{self.path}"

    def chunk_count(self) -> int:
        """Chunks in the committed version (recorded at commit: O(1), safe to call per question)."""
        return self._query(records.chunk_count)

    def documents(self) -> list[records.DocumentRecord]:
        return self._query(records.documents)

    def document(self, source: str) -> records.DocumentRecord | None:
        return self._query(records.document, source)

    def has_content(self, sha256: str) -> bool:
        return self._query(records.content_exists, sha256)

    def get_chunks(self, ids: Iterable[int]) -> dict[int, records.ChunkRecord]:
        return self._query(records.get_chunks, ids)

    def chunk_ids_for_sources(self, sources: Iterable[str]) -> set[int]:
        return self._query(records.chunk_ids_for_sources, sources)

    def chunk_vectors(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """{chunk id: stored vector float32 [dim]} for the ids that exist (for exact cosines of candidates)."""
        return self._query(records.chunk_vectors, ids)

    def chunk_terms(self, ids: Iterable[int]) -> dict[int, str]:
        """{chunk id: its indexed terms, space-separated} as written at ingest by `store.terms.fts_document`."""
        self._query(records.check_keyword_format, self.name)
        return self._query(records.chunk_terms, ids)

    def document_frequencies(self, terms: Iterable[str]) -> dict[str, int]:
        """{term: number of chunks containing it} for the given terms (0 for unknown terms)."""
        terms = list(dict.fromkeys(terms))
        found = self._query(self._frequencies.lookup, terms)
        return {t: int(found.get(t, 0)) for t in terms}

    def get_meta(self, key: str) -> str | None:
        """A value other components keep in the KB's meta table (e.g. the retrieval calibration)."""
        return self._query(records.get_meta, key)

    def chunk_ids(self) -> list[int]:
        """Every chunk id of the committed version, ascending."""
        return self._query(records.chunk_ids)

    def put_meta(self, key: str, value: str, *, lock_timeout_s: float = 10.0) -> None:
        """Store one meta value in its own transaction, under the write lock; the index generation is unchanged
        (so a value can record which generation it describes)."""
        with self._write_lock(lock_timeout_s), self._io(f"storing {key!r}", outcome="nothing else was changed"):
            conn = records.connect(self._db)
            try:
                conn.execute("BEGIN IMMEDIATE")
                records.set_meta(conn, key, value)
                conn.execute("COMMIT")
            finally:
                conn.close()  # an open transaction is rolled back

    def check_embedding(self, model: str, dim: int | None = None, identity: dict | None = None) -> None:
        """Refuse to mix embedding models or dimensions in one index. `identity` ({'source', 'weights_sha256'},
        from the embedder): also refuse other weights under the same model name."""
        from kb_qa.store.writer import check_embedding, check_identity

        self._query(check_embedding, self.name, model, dim)
        self._query(check_identity, self.name, model, identity)

    # -- searching -----------------------------------------------------------------------------------------
    def dense_search_batch(self, queries: np.ndarray, k: int, allowed: Collection[int] | None = None
                           ) -> list[list[tuple[int, float]]]:
        """[(chunk id, cosine similarity)] per query vector (float32 [n, dim]), best first, at most `k`; with
        `allowed`, only those chunk ids."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            raise ValueError("dense_search_batch takes a matrix of query vectors [n, dim]; use dense_search")
        with self._load_lock:  # a commit seen meanwhile updates the view in place: not while it is searched
            view = self._current_index()
            if view is None:
                return [[] for _ in range(len(queries))]
            candidates = view.candidates(queries, k, allowed)
        # The re-scoring fetch (most of a search's time at 10^6) reads the records, not the view: other threads'
        # searches and index loads need not wait for it (live_index.rescore says why it stays right).
        return live_index.rescore(queries, candidates, k, self.chunk_vectors)

    def dense_search(self, query: np.ndarray, k: int, allowed: Collection[int] | None = None
                     ) -> list[tuple[int, float]]:
        return self.dense_search_batch(np.asarray(query, dtype=np.float32).reshape(1, -1), k, allowed)[0]

    def keyword_search_batch(self, term_lists: Sequence[Sequence[str]], k: int,
                             allowed: Collection[int] | None = None) -> list[list[tuple[int, float]]]:
        """[(chunk id, BM25 >= 0, higher = better)] per list of search terms (from `store.terms.search_terms`),
        best first, at most `k`; with `allowed`, only those chunk ids."""
        check_analyser(self.name, self.get_meta(ANALYSER_META_KEY), self.chunk_count())  # else terms disagree
        self._query(records.check_keyword_format, self.name)  # a KB of store format 1: `kb repair` first
        return [self._query(self._keyword_search, terms, k, allowed) for terms in term_lists]

    def _keyword_search(self, conn: sqlite3.Connection, terms: Sequence[str], k: int,
                        allowed: Collection[int] | None) -> list[tuple[int, float]]:
        return records.keyword_search(conn, terms, k, allowed, frequencies=self._frequencies,
                                      approximate_from=self.keyword_approximate_from)

    def keyword_search(self, terms: Sequence[str], k: int, allowed: Collection[int] | None = None
                       ) -> list[tuple[int, float]]:
        if isinstance(terms, str):
            raise TypeError("keyword_search takes search terms (kb_qa.store.terms.search_terms), not text")
        return self.keyword_search_batch([terms], k, allowed)[0]

    # -- the vector index ----------------------------------------------------------------------------------
    def _current_index(self) -> live_index.LiveIndex | None:
        """The vector index of the committed generation (`live_index.LiveIndex`), brought up to date with what
        any process committed since: only the new rows and tombstones are read. None: nothing embedded yet."""
        with self._load_lock, self._query_lock, self._io("loading the vector index"):
            c = self._conn
            c.execute("BEGIN")  # one snapshot for meta, tombstones and vectors
            try:
                dim = records.get_meta(c, "embedding_dim")
                if dim is None:
                    self._index = None
                    return None
                self._index = live_index.load(c, self.path, int(dim), self._index)
                return self._index
            finally:
                c.execute("COMMIT")

    def compact(self, *, ann_min_chunks: int, lock_timeout_s: float = 10.0) -> list[str]:
        """`kb-qa kb compact`: (re)build the approximate index if the KB has `ann_min_chunks` chunks or more (drop
        it below), and prune tombstones. Readers are never blocked; see `kb_qa.store.compaction`."""
        from kb_qa.store.compaction import compact

        return compact(self, ann_min_chunks=ann_min_chunks, lock_timeout_s=lock_timeout_s)

    # -- writing -------------------------------------------------------------------------------------------
    @contextmanager
    def _write_lock(self, timeout_s: float):
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path / LOCK_FILE), timeout=timeout_s)
        with self._io(f"taking the write lock ({self.path / LOCK_FILE})"):
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                lock.acquire()
            except Timeout:  # a TimeoutError, hence an OSError: not the disk's fault
                raise KnowledgeBaseBusy(
                    f"knowledge base {self.name!r} is busy: another ingest or edit is running (waited "
                    f"{timeout_s:g} s)") from None
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def writer(self, *, embedding_model: str | None = None, dimension: int | None = None,
               lock_timeout_s: float = 10.0):
        """Exclusive write access (a `kb_qa.store.writer.Writer`). Changes become visible only at
        `Writer.commit()`; leaving the block without committing discards them."""
        from kb_qa.store.writer import Writer

        with self._write_lock(lock_timeout_s):
            w = Writer(self, embedding_model, dimension)
            try:
                yield w
            finally:
                w.close()
