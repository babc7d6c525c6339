"""The Milvus backend (`store.backend: milvus`): chunk vectors and the BM25 keyword index live in a Milvus collection.

Design. The KB's SQLite file stays the source of truth for the records (documents, content hashes, chunk text and
metadata, the stored vectors the fusion's exact cosines and "rebuild" read); Milvus replaces the derived search
structures (the FAISS file and the FTS5 candidate search). `MilvusKnowledgeBase` is a `KnowledgeBase` whose
`dense_search_batch` / `keyword_search_batch` ask Milvus; `MilvusWriter` is the local `Writer` whose commit sends
the transaction's added and removed chunks to Milvus instead of writing a FAISS file. Incremental ingest is
unchanged (the pipeline decides by the SQLite records: unchanged files cost nothing, a changed file replaces its
chunks, removing a document removes its chunks from both).

Durability. A commit (1) writes a `milvus.pending` marker (fsynced), (2) upserts/deletes in Milvus, (3) commits the
SQLite transaction, (4) removes the marker. A crash between (2) and (3) leaves Milvus ahead of the records; the next
writer sees the marker and reconciles Milvus with the records (rows whose id is not a committed chunk are deleted,
missing ones re-sent from the records), and searches meanwhile drop ids the records do not hold. So the records keep
every guarantee of the local store (kill at any point -> previous or new version). That a row acknowledged by
Milvus survives a Milvus crash is Milvus's guarantee (its WAL / object storage), not kb_qa's.

Addressing. `store.milvus_uri` (+ `store.milvus_token`) names a Milvus Standalone / Distributed / Zilliz endpoint,
or a local `*.db` file for Milvus Lite; with no URI, each KB uses Milvus Lite in `<kb folder>/milvus.db`. The
collection is named after the KB's random `kb_id`, so a KB deleted and re-created never sees old rows.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from kb_qa.store import records
from kb_qa.store.errors import KnowledgeBaseError
from kb_qa.store.knowledge_base import KnowledgeBase
from kb_qa.store.writer import Writer, _crash_point

log = logging.getLogger(__name__)

LITE_FILE = "milvus.db"
PENDING_FILE = "milvus.pending"
TEXT_MAX_BYTES = 65535  # Milvus's VARCHAR limit (bytes, UTF-8)
# jieba in search mode, as kb_qa's own analyser (store.terms); on a Milvus cluster the same tokenizer exists.
ANALYZER = {"tokenizer": {"type": "jieba", "mode": "search"}}
SEND_BATCH = 1000  # rows per upsert request (keeps gRPC messages well under Milvus's 64 MB default)

# (uri, token) -> [pymilvus.MilvusClient (imported lazily), knowledge bases using it]
_clients: dict[tuple[str, str | None], list[Any]] = {}
_clients_lock = threading.Lock()


def available() -> str | None:
    """None if the Milvus client can be imported, else the reason (one line)."""
    try:
        import pymilvus  # noqa: F401
    except ImportError as exc:
        return f"pymilvus is not installed ({exc}); pip install -r requirements-milvus.txt"
    return None


def client_for(uri: str, token: str | None = None):
    """One `MilvusClient` per endpoint per process (Milvus Lite allows one process per data file), shared by every
    knowledge base using it: each call is one more user, until its `release_client`."""
    reason = available()
    if reason:
        raise KnowledgeBaseError(f"store.backend is 'milvus' but {reason}")
    from pymilvus import MilvusClient

    key = (uri, token)
    with _clients_lock:
        entry = _clients.get(key)
        if entry is None:
            try:
                entry = [MilvusClient(uri=uri, token=token or ""), 0]
            except Exception as exc:  # connection refused, bad URI, locked Lite file
                raise KnowledgeBaseError(f"cannot reach Milvus at {uri!r}: {exc}") from None
            _clients[key] = entry
        entry[1] += 1
        return entry[0]


def release_client(uri: str, token: str | None = None) -> None:
    """One user of `client_for(uri, token)` is done; the last one closes the client (a Lite file's lock is
    released then, and a knowledge base still open on it keeps working until it is closed too)."""
    with _clients_lock:
        entry = _clients.get((uri, token))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _clients[(uri, token)]
    entry[0].close()


def close_client(uri: str, token: str | None = None) -> None:
    """Close the endpoint's client whoever still uses it (tests, shutting a Lite file for good)."""
    with _clients_lock:
        entry = _clients.pop((uri, token), None)
    if entry is not None:
        entry[0].close()


def _fit_text(text: str) -> str:
    data = text.encode("utf-8")
    if len(data) <= TEXT_MAX_BYTES:
        return text
    return data[:TEXT_MAX_BYTES].decode("utf-8", errors="ignore")


class MilvusChunks:
    """One KB's collection: id (= chunk id), vector (IP = cosine, exact FLAT), text (jieba) -> BM25 sparse."""

    def __init__(self, client, name: str):
        self.client = client
        self.name = name
        self._seen = False  # the collection was seen to exist (saves a round trip per search)

    def exists(self, *, cached: bool = False) -> bool:
        if cached and self._seen:
            return True
        self._seen = bool(self.client.has_collection(self.name))
        return self._seen

    def create(self, dim: int) -> None:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX_BYTES, enable_analyzer=True,
                         analyzer_params=ANALYZER)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25,
                                     input_field_names=["text"], output_field_names=["sparse"]))
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        self.client.create_collection(self.name, schema=schema, index_params=index, consistency_level="Strong")

    def drop(self) -> None:
        if self.exists():
            self.client.drop_collection(self.name)
        self._seen = False

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, texts: Sequence[str]) -> None:
        for start in range(0, len(ids), SEND_BATCH):
            rows = [{"id": int(i), "vector": np.asarray(v, dtype=np.float32).tolist(), "text": _fit_text(t)}
                    for i, v, t in zip(ids[start:start + SEND_BATCH], vectors[start:start + SEND_BATCH],
                                       texts[start:start + SEND_BATCH], strict=True)]
            self.client.upsert(self.name, rows)

    def delete(self, ids: Collection[int]) -> None:
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), SEND_BATCH):
            self.client.delete(self.name, ids=ids[start:start + SEND_BATCH])

    def all_ids(self) -> set[int]:
        it = self.client.query_iterator(self.name, batch_size=5000, filter="id >= 0", output_fields=["id"])
        found: set[int] = set()
        try:
            while True:
                page = it.next()
                if not page:
                    return found
                found.update(int(r["id"]) for r in page)
        finally:
            it.close()

    def search(self, data: list, field: str, k: int, allowed: Collection[int] | None) -> list[list[tuple[int, float]]]:
        kwargs = {}
        if allowed is not None:
            kwargs["filter"] = f"id in [{','.join(str(int(i)) for i in allowed)}]"
        try:
            hits = self.client.search(self.name, data=data, anns_field=field, limit=k, output_fields=["id"],
                                      **kwargs)
        except Exception as exc:  # pymilvus raises MilvusException (and grpc errors) for an unreachable server
            self._seen = False
            raise KnowledgeBaseError(f"Milvus search in collection {self.name!r} failed: {exc}") from None
        return [[(int(h["id"]), float(h["distance"])) for h in per_query] for per_query in hits]


class MilvusKnowledgeBase(KnowledgeBase):
    """A `KnowledgeBase` whose candidate searches run in Milvus (records stay in the KB's SQLite file)."""

    def __init__(self, store_root: Path, name: str, *, uri: str | None = None, token: str | None = None):
        super().__init__(store_root, name)
        self.milvus_uri = uri or str(self.path / LITE_FILE)
        self.milvus_token = token
        self._chunks: MilvusChunks | None = None

    @classmethod
    def open(cls, store_root: Path, name: str, *, create: bool = False, uri: str | None = None,
             token: str | None = None) -> MilvusKnowledgeBase:
        base = KnowledgeBase.open(store_root, name, create=create)  # checks and creates the records
        base.close()
        return cls(store_root, name, uri=uri, token=token)

    @property
    def collection_name(self) -> str:
        kb_id = self.kb_id.replace("legacy:", "")
        return "kbqa_" + "".join(ch if ch.isalnum() else "_" for ch in kb_id)[:200]

    def milvus(self) -> MilvusChunks:
        if self._chunks is None:
            self._chunks = MilvusChunks(client_for(self.milvus_uri, self.milvus_token), self.collection_name)
        return self._chunks

    def close(self) -> None:
        super().close()
        if self._chunks is not None:
            release_client(self.milvus_uri, self.milvus_token)  # the last user closes it (a Lite file's lock)
        self._chunks = None

    @staticmethod
    def delete_milvus(store_root: Path, name: str, *, uri: str | None = None, token: str | None = None,
                      lock_timeout_s: float = 10.0) -> None:
        """Drop the KB's collection, then delete its folder (records, Lite file) like the local store."""
        kb = MilvusKnowledgeBase(store_root, name, uri=uri, token=token)
        if (kb.path / "kb.sqlite").is_file():
            with kb._write_lock(lock_timeout_s):
                kb.milvus().drop()
            kb.close()
        KnowledgeBase.delete(store_root, name, lock_timeout_s=lock_timeout_s)

    # -- searching -----------------------------------------------------------------------------------------
    def _searchable(self) -> MilvusChunks | None:
        chunks = self.milvus()
        if chunks.exists(cached=True):
            return chunks
        if self.chunk_count() == 0:
            return None
        with self.writer():  # records without a collection (e.g. a local KB switched to milvus): build it
            pass
        return chunks if chunks.exists() else None

    def _committed(self, results: list[list[tuple[int, float]]]) -> list[list[tuple[int, float]]]:
        """Drop ids the committed records do not hold (rows of a commit that crashed before its SQLite commit)."""
        ids = {i for hits in results for i, _ in hits}
        if not ids:
            return results
        known = set(self._query(records.chunk_vectors, ids))
        return [[(i, s) for i, s in hits if i in known] for hits in results]

    def dense_search_batch(self, queries: np.ndarray, k: int, allowed: Collection[int] | None = None
                           ) -> list[list[tuple[int, float]]]:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            raise ValueError("dense_search_batch takes a matrix of query vectors [n, dim]; use dense_search")
        chunks = self._searchable()
        if chunks is None or k <= 0 or (allowed is not None and not allowed):
            return [[] for _ in range(len(queries))]
        return self._committed(chunks.search([q.tolist() for q in queries], "vector", k, allowed))

    def keyword_search_batch(self, term_lists: Sequence[Sequence[str]], k: int,
                             allowed: Collection[int] | None = None) -> list[list[tuple[int, float]]]:
        chunks = self._searchable()
        out: list[list[tuple[int, float]]] = [[] for _ in term_lists]
        if chunks is None or k <= 0 or (allowed is not None and not allowed):
            return out
        asked = [(n, " ".join(terms)) for n, terms in enumerate(term_lists) if any(t.strip() for t in terms)]
        if not asked:
            return out
        found = self._committed(chunks.search([text for _, text in asked], "sparse", k, allowed))
        for (n, _), hits in zip(asked, found, strict=True):
            # BM25 >= 0, higher = better (Milvus Lite reports it negated; a cluster reports it as is)
            out[n] = [(i, abs(s)) for i, s in hits]
        return out

    # -- writing -------------------------------------------------------------------------------------------
    @contextmanager
    def writer(self, *, embedding_model: str | None = None, dimension: int | None = None,
               lock_timeout_s: float = 10.0):
        with self._write_lock(lock_timeout_s):
            w = MilvusWriter(self, embedding_model, dimension)
            try:
                yield w
            finally:
                w.close()


class MilvusWriter(Writer):
    """The local `Writer` (one SQLite transaction), committing the chunk changes to Milvus instead of FAISS."""

    kb: MilvusKnowledgeBase

    def __init__(self, kb: MilvusKnowledgeBase, embedding_model: str | None, dimension: int | None):
        super().__init__(kb, embedding_model, dimension)
        self._pending = kb.path / PENDING_FILE
        chunks = kb.milvus()
        if self._pending.exists() or (not chunks.exists() and records.count_chunks(self._conn)):
            self.reconcile()

    def reconcile(self) -> None:
        """Make the collection hold exactly the committed chunks (after a crashed commit, or to build it)."""
        chunks = self.kb.milvus()
        dim = records.get_meta(self._conn, "embedding_dim")
        if dim is None:
            chunks.drop()
        else:
            if not chunks.exists():
                chunks.create(int(dim))
            wanted = {r[0] for r in self._conn.execute("SELECT id FROM chunks")}
            held = chunks.all_ids()
            if held - wanted:
                chunks.delete(held - wanted)
            self._send(sorted(wanted - held), int(dim))
            log.info("knowledge base %r: Milvus collection reconciled with the records", self.kb.name)
        self._pending.unlink(missing_ok=True)

    def _send(self, ids: list[int], dim: int) -> None:
        chunks = self.kb.milvus()
        for start in range(0, len(ids), SEND_BATCH):
            part = ids[start:start + SEND_BATCH]
            found = records.get_chunks(self._conn, part)
            vectors = records.chunk_vectors(self._conn, part)
            ok = [i for i in part if i in found and i in vectors]
            if ok:
                chunks.upsert(ok, np.stack([vectors[i] for i in ok]).reshape(len(ok), dim),
                              [found[i].text for i in ok])

    def _mark_pending(self) -> None:
        fd = os.open(self._pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _commit(self) -> None:
        """Milvus first (marked pending), then the SQLite commit; called by `Writer.commit` (its I/O handling)."""
        if not self._in_tx:
            return
        conn = self._conn
        dim_text = records.get_meta(conn, "embedding_dim")
        count = records.count_chunks(conn)
        if self._added or self._removed or self._cleared:
            self._mark_pending()
            try:
                self._apply(None if dim_text is None else int(dim_text))
            except KnowledgeBaseError:
                raise
            except Exception as exc:  # pymilvus / grpc errors: the records stay as they were, the marker stays
                raise KnowledgeBaseError(f"knowledge base {self.kb.name!r}: writing to Milvus failed ({exc}); "
                                         "nothing was committed, the next ingest reconciles Milvus") from None
            _crash_point("milvus-before-commit")
        generation = int(records.get_meta(conn, "index_generation", "0"))
        records.set_meta(conn, "index_generation", str(generation + 1))  # readers' cache key, as locally
        self._record_counts(count)  # chunk count and analyser version, as the local writer records them
        conn.execute("COMMIT")
        self._in_tx = False
        _crash_point("after-commit")
        self._pending.unlink(missing_ok=True)
        self._added.clear()
        self._removed.clear()
        self._cleared = False

    def _apply(self, dim: int | None) -> None:
        chunks = self.kb.milvus()
        if self._cleared:  # a rebuild (possibly another model/dimension): a fresh collection from the records
            chunks.drop()
            if dim is not None:
                chunks.create(dim)
                self._send([r[0] for r in self._conn.execute("SELECT id FROM chunks ORDER BY id")], dim)
            return
        if dim is None:
            return
        if not chunks.exists():
            chunks.create(dim)
        if self._removed:
            chunks.delete(self._removed)
        if self._added:
            self._send(sorted(self._added), dim)
