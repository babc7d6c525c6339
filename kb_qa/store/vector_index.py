"""FAISS indexes of a knowledge base: the exact one readers keep in memory, and the approximate index file.

Vectors are stored once, in SQLite (`chunks.vector`, see records); nothing here is a source of truth.

- Exact: inner product over L2-normalised vectors (cosine), with explicit ids = chunk ids (IndexIDMap2), built in
  memory from the records by each reader and kept up to date incrementally (`live_index.LiveIndex`): a commit
  costs no index file at all, whatever the KB's size.
- Approximate (`store.ann_min_chunks` and up, built by compaction): HNSW over 4-bit scalar-quantised vectors
  (IndexHNSWSQ: codes of 0.19 KB + the graph's 0.14 KB per 384-d chunk, not a second 1.5 KB float copy), whose
  candidates are
  re-scored exactly from the stored float vectors. Written as `index-<generation>.faiss` (faiss' own writer, to a
  temporary name, fsynced, renamed) before the SQLite transaction that names it and records its SHA-256 commits,
  so the file SQLite names is always complete; other `index-*.faiss` files are leftovers, removed by the next
  writer. A file whose checksum or count disagrees with the records is never searched (exact search instead).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_INDEX_FILE = re.compile(r"^index-(\d+)\.faiss$")

# HNSW shape: M links per node (graph ~ 2*M*4 bytes per chunk), efConstruction candidates while building. On 384-d
# vectors of intrinsic dimension 32 (bench/bench_scale.py's stand-in for text embeddings), M=16, efConstruction=40,
# efSearch=128 and an exact re-score of 40 candidates measured recall@10 0.97 at 5x10^4. (On isotropic random
# vectors no graph index helps: recall@10 0.65 at efSearch 512, which is why small KBs stay exact.)
# Codes: 4 bits per dimension. Measured at 10^5 lowrank 384-d vectors (bench_scale's stand-in), M=16, efC=48,
# 64 candidates re-scored exactly: 4-bit 336 B/vector in the file (344 at 10^6), recall@10 0.961 at efSearch 160
# and 0.988 at 256 (10^6: 0.975 at 512, live_index.EF_SEARCH); 8-bit codes would be 384 B + the graph. HNSW over
# PQ48 (196 B): recall 0.07 with inner product in faiss 1.15, unusable; IVF-PQ (76 B): 0.81 at nprobe 64/1024, as
# the neighbours of such vectors spread over many cells.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 48
CODE_BITS = "QT_4bit"
SMALL_BATCH = 8  # fewer queries than this are searched on the calling thread alone
TRAIN_SAMPLE = 65536  # vectors the scalar quantiser's per-dimension ranges are trained on
TRAIN_SEED = 20261202  # which ones (records.sample_vectors): a fixed seed, so a rebuild trains on the same sample


def index_path(folder: Path, generation: int) -> Path:
    return folder / f"index-{generation}.faiss"


def new_index(dim: int):
    """An empty exact index (cosine over unit vectors) with chunk ids."""
    import faiss

    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform (e.g. Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_index(index, folder: Path, generation: int) -> tuple[Path, str]:
    """Write `index` as generation `generation`, durably. Returns (path, sha256)."""
    import faiss

    final = index_path(folder, generation)
    tmp = folder / f".index-{generation}.faiss.tmp"
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        sha = file_sha256(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a partial file must not stay behind (disk full: it is what filled it)
        raise
    fsync_dir(folder)
    return final, sha


def read_index(path: Path, expected_sha256: str | None, expected_count: int, dim: int):
    """The index at `path` if it is intact and matches the records, else None (the caller searches exactly)."""
    import faiss

    if not path.is_file():
        log.warning("vector index %s is missing; searching the records' vectors exactly until it is rebuilt "
                    "(kb compact / kb repair)", path)
        return None
    if expected_sha256 and file_sha256(path) != expected_sha256:
        log.warning("vector index %s is corrupt (checksum mismatch); searching the records' vectors exactly until "
                    "it is rebuilt (kb compact / kb repair)", path)
        return None
    try:
        index = faiss.read_index(str(path))
    except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError subclasses with C++ messages
        log.warning("vector index %s is unreadable (%s); searching the records' vectors exactly until it is "
                    "rebuilt", path, exc)
        return None
    if index.ntotal != expected_count or index.d != dim:
        log.warning("vector index %s holds %d vectors of dim %d, records say %d of dim %d; searching exactly",
                    path, index.ntotal, index.d, expected_count, dim)
        return None
    return index


def remove_stale_files(folder: Path, keep_generation: int) -> None:
    """Remove index files of other generations than `keep_generation` (0: keep none) and temporary files.
    Never fails: it runs after a commit (which stands) or while reporting another error; what cannot be removed
    now, the next writer removes."""
    try:
        for path in folder.iterdir():
            match = _INDEX_FILE.match(path.name)
            stale = (match and int(match.group(1)) != keep_generation) or path.name.endswith(".faiss.tmp")
            if stale:
                path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove stale index files in %s (%s); the next writer will", folder, exc)


def from_vectors(batches: Iterable[tuple[np.ndarray, np.ndarray]], dim: int):
    """A new exact index holding every (ids int64 [n], vectors float32 [n, dim]) batch."""
    index = new_index(dim)
    for ids, vecs in batches:
        index.add_with_ids(vecs, ids)
    return index


def build_ann(batches: Iterable[tuple[np.ndarray, np.ndarray]], dim: int, training: np.ndarray):
    """An approximate index (HNSW over 4-bit quantised vectors, inner product, chunk ids) of every batch. The
    quantiser's per-dimension ranges are trained on `training` (float32 [n, dim]: a seeded sample of the whole KB,
    `compaction.build_index`), not on the first batches (the oldest documents: their ranges may not be the later
    ones'). No training vectors: the KB has none, and the index stays empty."""
    import faiss

    hnsw = faiss.IndexHNSWSQ(dim, getattr(faiss.ScalarQuantizer, CODE_BITS), HNSW_M,
                             faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index = faiss.IndexIDMap2(hnsw)
    if not len(training):
        return index
    index.train(np.ascontiguousarray(training, dtype=np.float32))
    for ids, vecs in batches:
        index.add_with_ids(vecs, ids)
    return index


def set_ef_search(index, ef_search: int) -> None:
    """How many candidates an HNSW search keeps (recall vs time); no-op for an exact index."""
    import faiss

    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = ef_search


def search(index, queries: np.ndarray, k: int, allowed: Collection[int] | None = None,
           excluded: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
    """[(chunk id, score)] per query, best first, at most `k`; with `allowed`, only those ids (FAISS skips the
    others during the scan); `excluded` ids are never returned (tombstones)."""
    if index is None or index.ntotal == 0 or k <= 0 or (allowed is not None and not allowed):
        return [[] for _ in range(len(queries))]
    import faiss

    selector: Any = None
    if allowed is not None:
        selector = faiss.IDSelectorBatch(np.fromiter(allowed, dtype=np.int64))
        k = min(k, len(allowed))
    if excluded is not None and len(excluded):
        removed = faiss.IDSelectorBatch(np.ascontiguousarray(excluded, dtype=np.int64))
        not_removed = faiss.IDSelectorNot(removed)
        not_removed.referenced = removed  # type: ignore[attr-defined] # keep the inner selector alive as long as the outer one (SWIG)
        selector = not_removed if selector is None else _both(selector, not_removed)
    # faiss's SWIG constructors set fields from keywords; its stubs do not list them
    # (IndexIDMap copies the parameters as plain SearchParameters: an HNSW's efSearch is set on the index itself,
    # `set_ef_search`, not here.)
    params = faiss.SearchParameters(sel=selector) if selector is not None else None  # type: ignore[call-arg]
    threads = faiss.omp_get_max_threads()
    if len(queries) < SMALL_BATCH:
        # One question at a time: OpenMP threads only wait for each other (10x slower on a busy 2-core machine,
        # measured). The setting is per calling thread in OpenMP, so other threads (compaction) keep theirs.
        faiss.omp_set_num_threads(1)
    try:
        scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal),
                                   params=params)
    finally:
        faiss.omp_set_num_threads(threads)
    return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)]


def _both(a, b):
    import faiss

    both = faiss.IDSelectorAnd(a, b)
    both.referenced = (a, b)
    return both
