"""Compaction (`kb-qa kb compact NAME`): the approximate index of a large KB, built off the write path.

1. Snapshot (a read transaction, no lock): commit generation g, the highest chunk id m and every vector with id <= m;
   the HNSW index is built from them. That takes minutes at 10^6 chunks; readers and writers carry on meanwhile
   (writers' new chunks have ids > m, their removals are tombstones of generations > g: both stay visible to
   readers on top of the new index).
2. Under the write lock (seconds): unless a rebuild or repair happened since g (then this index is of the wrong
   chunks and is dropped), write `index-<g>.faiss` durably, then in ONE transaction record it (ann_generation = g,
   its SHA-256, count and m), bump the commit generation so readers switch to it, and prune tombstones <= g.
3. Remove other generations' index files.
A kill at any point leaves the previous index (or none) named in SQLite, or the new one; a file written but not yet
named is an orphan that the next writer removes.
Below `ann_min_chunks` chunks there is no approximate index: compaction drops one that exists (after removals) and
prunes the tombstones.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kb_qa.store import records, vector_index
from kb_qa.store.errors import KnowledgeBaseNotFound, storage_error
from kb_qa.store.knowledge_base import _MISSING
from kb_qa.store.writer import _crash_point

if TYPE_CHECKING:
    from kb_qa.store.knowledge_base import KnowledgeBase


def build_index(conn, dim: int, up_to_id: int | None = None):
    """The approximate index of the stored vectors (ids <= `up_to_id`) in `conn`'s snapshot, its quantiser trained
    on a seeded uniform sample of them (compaction, and `kb repair` rebuilding it)."""
    training = records.sample_vectors(conn, dim, vector_index.TRAIN_SAMPLE, vector_index.TRAIN_SEED,
                                      up_to_id=up_to_id)
    return vector_index.build_ann(records.iter_vectors(conn, dim, up_to_id=up_to_id), dim, training)


def compact(kb: KnowledgeBase, *, ann_min_chunks: int, lock_timeout_s: float = 10.0) -> list[str]:
    if kb._state() == _MISSING:
        raise KnowledgeBaseNotFound(f"knowledge base {kb.name!r} does not exist")
    done: list[str] = []
    conn = records.connect(kb._db)
    try:
        conn.execute("BEGIN")  # the snapshot the index is built from
        try:
            generation = int(records.get_meta(conn, "index_generation", "0"))
            dim_text = records.get_meta(conn, "embedding_dim")
            count = records.chunk_count(conn)
            max_id = records.max_chunk_id(conn)
            index = None
            if dim_text is not None and count >= max(1, ann_min_chunks):
                started = time.perf_counter()
                index = build_index(conn, int(dim_text), up_to_id=max_id)
                done.append(f"built the approximate index of {index.ntotal} chunks in "
                            f"{time.perf_counter() - started:.1f} s (generation {generation})")
        finally:
            conn.execute("COMMIT")
        with kb._write_lock(lock_timeout_s):
            _record(kb, conn, index, generation, max_id, done)
    finally:
        conn.close()
    kb.close()  # this process' next search loads the new index
    return done


def _record(kb: KnowledgeBase, conn, index, generation: int, max_id: int, done: list[str]) -> None:
    records.init_schema(conn)  # a KB no writer of this version has opened yet lacks the tombstones table
    conn.execute("BEGIN IMMEDIATE")
    try:
        if int(records.get_meta(conn, "vectors_rebased_at", "0")) > generation:
            conn.execute("ROLLBACK")
            done.append("the knowledge base was rebuilt or repaired meanwhile: nothing recorded; run it again")
            return
        current = int(records.get_meta(conn, "index_generation", "0"))
        recorded = records.get_ann(conn)
        had = recorded.generation if recorded else 0
        keep = had
        if index is not None:
            _crash_point("compact-before-index-write")
            try:
                _path, sha = vector_index.write_index(index, kb.path, generation)
            except OSError as exc:
                raise storage_error(kb.name, "writing the approximate index", exc, kb.path,
                                    outcome="nothing was lost: searches stay exact and the temporary file was removed",
                                    need_bytes=max(index.ntotal * 700, 1 << 20)) from exc  # ~700 bytes a vector
            _crash_point("compact-after-index-write")
            records.set_ann(conn, records.AnnRecord(generation, sha, int(index.ntotal), max_id))
            keep = generation
            pruned = records.prune_tombstones(conn, generation)
        else:
            records.set_ann(conn, None)
            if had:
                done.append("dropped the approximate index (the knowledge base is below store.ann_min_chunks)")
            keep = 0
            pruned = records.prune_tombstones(conn, current)
        records.set_meta(conn, "index_generation", str(current + 1))  # readers switch at their next search
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        still = records.get_ann(conn)
        vector_index.remove_stale_files(kb.path, still.generation if still else 0)
        raise
    _crash_point("compact-after-commit")
    if pruned:
        done.append(f"pruned {pruned} tombstones")
    vector_index.remove_stale_files(kb.path, keep)
