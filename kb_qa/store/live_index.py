"""A reader's vector index, kept current at each commit by reading only what changed.

A `LiveIndex` is two parts over the vectors stored in SQLite (their only copy):
  base   the approximate index file compaction wrote (`index-<g>.faiss`, chunks with id <= base_max_id as of
         generation g), or None (small KBs: exact search only);
  delta  an exact in-memory index of every chunk with id > base_max_id (all chunks when there is no base).
Chunk ids only grow (AUTOINCREMENT, one writer at a time), so the chunks a newer commit added are exactly those
with id > delta_max_id, and the chunks it removed are its tombstones (`records.tombstones`). Moving to a newer
generation therefore reads only the new rows and the new tombstones: O(change), never the whole KB, and no file
is re-read or re-hashed. A full load happens at the first search, after a rebuild or repair (`vectors_rebased_at`),
when compaction wrote a new base, or when the tombstones this view needs were pruned (`tombstones_from`).

Every score returned is recomputed from the stored float32 vectors (float64 products, numpy's pairwise sum), so a
chunk's cosine is the same number whichever path found it (exact, approximate, filtered).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kb_qa.store import records, vector_index

log = logging.getLogger(__name__)

# HNSW candidates kept per search: recall@10 vs time. 4-bit codes, bench_scale's lowrank vectors, 80 queries, 64
# re-scored: 10^5: 0.961 at 160, 0.988 at 256; 10^6: 0.909 at 256, 0.946 at 384, 0.975 at 512 (8.5 ms p50),
# 0.994 at 768 (11.4 ms). bench/bench_scale.py measures both.
EF_SEARCH = 512
RERANK_FACTOR = 4  # the approximate index proposes max(RERANK_FACTOR * k, RERANK_MIN) ids, re-scored exactly
RERANK_MIN = 64
EXACT_ALLOWED_MAX = 20_000  # a filter this small is searched exactly from the stored vectors, not through HNSW

FetchVectors = Callable[[Iterable[int]], dict[int, np.ndarray]]


@dataclass
class LiveIndex:
    dim: int
    generation: int  # the commit generation this view reflects
    base: Any  # faiss index of ids <= base_max_id, or None
    base_generation: int  # meta ann_generation this view was loaded for (0: none recorded)
    base_max_id: int
    base_removed: np.ndarray  # ids in `base` removed since it was built (int64, excluded from its results)
    delta: Any  # exact faiss index of ids > base_max_id (if base is None: of every chunk)
    delta_max_id: int

    @property
    def ntotal(self) -> int:
        base = int(self.base.ntotal) - len(self.base_removed) if self.base is not None else 0
        return base + int(self.delta.ntotal)

    @property
    def floor(self) -> int:
        return self.base_max_id if self.base is not None else 0

    # -- keeping current ------------------------------------------------------------------------------
    def advance(self, conn, generation: int) -> None:
        """Apply the commits after self.generation up to `generation` (the caller's read snapshot)."""
        removed = records.tombstones_after(conn, self.generation)
        if len(removed):
            self.delta.remove_ids(removed[removed > self.floor])
            if self.base is not None:
                in_base = removed[removed <= self.base_max_id]
                self.base_removed = np.union1d(self.base_removed, in_base).astype(np.int64)
        for ids, vecs in records.iter_vectors(conn, self.dim, after_id=self.delta_max_id):
            self.delta.add_with_ids(vecs, ids)
            self.delta_max_id = int(ids[-1])
        self.generation = generation

    # -- searching ------------------------------------------------------------------------------------
    def candidates(self, queries: np.ndarray, k: int, allowed: Collection[int] | None) -> list[list[int]]:
        """Per query, the chunk ids `rescore` ranks: the exact delta's top k and the approximate base's
        candidates. Only this part reads the view (the caller keeps commits from advancing it meanwhile)."""
        if k <= 0 or (allowed is not None and not allowed):
            return [[] for _ in range(len(queries))]
        delta_hits = vector_index.search(self.delta, queries, k, allowed)
        candidates = [[i for i, _ in hits] for hits in delta_hits]
        if self.base is not None:
            for row, extra in enumerate(self._base_candidates(queries, k, allowed)):
                candidates[row].extend(extra)
        return candidates

    def _base_candidates(self, queries: np.ndarray, k: int, allowed: Collection[int] | None) -> list[list[int]]:
        if allowed is not None and len(allowed) <= EXACT_ALLOWED_MAX:
            removed = set(self.base_removed.tolist())
            in_base = [int(i) for i in allowed if int(i) <= self.base_max_id and int(i) not in removed]
            return [in_base for _ in range(len(queries))]  # all of them, scored exactly by the caller
        wanted = max(RERANK_FACTOR * k, RERANK_MIN)
        if wanted >= self.base.ntotal // 2:  # most of the index asked for: a graph walk cannot promise them all
            import faiss

            every = faiss.vector_to_array(self.base.id_map)
            every = every[~np.isin(every, self.base_removed)]
            if allowed is not None:
                every = every[np.isin(every, np.fromiter(allowed, dtype=np.int64))]
            return [every.tolist() for _ in range(len(queries))]
        vector_index.set_ef_search(self.base, max(EF_SEARCH, wanted))  # searches are serialised (_load_lock)
        try:
            hits = vector_index.search(self.base, queries, wanted, allowed, excluded=self.base_removed)
        finally:
            vector_index.set_ef_search(self.base, EF_SEARCH)
        return [[i for i, _ in row] for row in hits]


def rescore(queries: np.ndarray, candidates: list[list[int]], k: int,
            fetch_vectors: FetchVectors) -> list[list[tuple[int, float]]]:
    """Each query's candidates ranked by their exact cosine from the stored vectors, best first, at most `k`. It
    needs no view: chunk ids are never reused and a chunk's vector never changes, so a commit since the
    candidates were found can only have removed one (its vector is gone: it is skipped)."""
    wanted = {i for row in candidates for i in row}
    vectors = fetch_vectors(wanted) if wanted else {}
    return [_rescore(q, row, vectors, k) for q, row in zip(queries, candidates, strict=True)]


def _rescore(query: np.ndarray, ids: list[int], vectors: dict[int, np.ndarray], k: int) -> list[tuple[int, float]]:
    ids = [i for i in dict.fromkeys(ids) if i in vectors]
    if not ids:
        return []
    scores = exact_scores(query, np.stack([vectors[i] for i in ids]))
    order = sorted(range(len(ids)), key=lambda j: (-scores[j], ids[j]))[:k]
    return [(ids[j], float(scores[j])) for j in order]


def exact_scores(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Cosines of unit vectors: each product is exact in float64, each row summed the same way (pairwise)."""
    return (np.asarray(matrix, dtype=np.float64) * np.asarray(query, dtype=np.float64)).sum(axis=1)


def load(conn, folder: Path, dim: int, previous: LiveIndex | None) -> LiveIndex:
    """The view of the committed generation in `conn`'s read snapshot: `previous` advanced if it can be, else a
    full load (the base file, if any and intact, plus the rows above it)."""
    generation = int(records.get_meta(conn, "index_generation", "0"))
    ann = records.get_ann(conn)
    ann_generation = ann.generation if ann else 0
    if previous is not None and previous.dim == dim and previous.base_generation == ann_generation:
        if previous.generation == generation:
            return previous
        rebased = int(records.get_meta(conn, "vectors_rebased_at", "0"))
        pruned = int(records.get_meta(conn, "tombstones_from", "0"))
        if rebased <= previous.generation < generation and pruned <= previous.generation:
            previous.advance(conn, generation)
            return previous
    base, base_max_id, base_removed = None, 0, np.empty(0, dtype=np.int64)
    if ann:
        base = vector_index.read_index(vector_index.index_path(folder, ann.generation), ann.sha256, ann.count, dim)
        if base is not None:
            vector_index.set_ef_search(base, EF_SEARCH)
            base_max_id = ann.max_id
            removed = records.tombstones_after(conn, ann_generation)
            base_removed = np.unique(removed[removed <= base_max_id]).astype(np.int64)
    delta = vector_index.from_vectors(records.iter_vectors(conn, dim, after_id=base_max_id), dim)
    delta_max_id = max(base_max_id, records.max_chunk_id(conn))
    view = LiveIndex(dim, generation, base, ann_generation, base_max_id, base_removed, delta, delta_max_id)
    expected = records.chunk_count(conn)
    if base is not None and view.ntotal != expected:
        log.warning("vector index %s and the records disagree (%d vs %d chunks); searching exactly",
                    vector_index.index_path(folder, ann_generation).name, view.ntotal, expected)
        delta = vector_index.from_vectors(records.iter_vectors(conn, dim), dim)
        view = LiveIndex(dim, generation, None, ann_generation, 0, np.empty(0, dtype=np.int64), delta,
                         records.max_chunk_id(conn))
    return view
