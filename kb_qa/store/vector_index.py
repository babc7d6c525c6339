"""The FAISS index file of a knowledge base, versioned by generation.

Each commit writes a new file `index-<generation>.faiss` (faiss' own writer, to a temporary name, fsynced, then
renamed), and only then commits the new generation number and the file's SHA-256 in SQLite. So at any instant the
generation SQLite names has a complete file on disk; files of other generations are leftovers, removed by the
next writer. A file whose checksum or vector count disagrees with the records is never searched: the index is
rebuilt from the vectors stored in SQLite.

The index is exact inner product over L2-normalised vectors (cosine similarity), with explicit ids = chunk ids
(IndexIDMap2), so removing a document never shifts anyone else's ids or results.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Collection, Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_INDEX_FILE = re.compile(r"^index-(\d+)\.faiss$")


def index_path(folder: Path, generation: int) -> Path:
    return folder / f"index-{generation}.faiss"


def new_index(dim: int):
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
    """The index at `path` if it is intact and matches the records, else None (the caller rebuilds)."""
    import faiss

    if not path.is_file():
        log.warning("vector index %s is missing; it will be rebuilt from the records", path)
        return None
    if expected_sha256 and file_sha256(path) != expected_sha256:
        log.warning("vector index %s is corrupt (checksum mismatch); it will be rebuilt from the records", path)
        return None
    try:
        index = faiss.read_index(str(path))
    except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError subclasses with C++ messages
        log.warning("vector index %s is unreadable (%s); it will be rebuilt from the records", path, exc)
        return None
    if index.ntotal != expected_count or index.d != dim:
        log.warning("vector index %s holds %d vectors of dim %d, records say %d of dim %d; rebuilding",
                    path, index.ntotal, index.d, expected_count, dim)
        return None
    return index


def remove_stale_files(folder: Path, keep_generation: int) -> None:
    """Remove other generations' files and temporary files. Never fails: it runs after a commit (which stands)
    or while reporting another error; what cannot be removed now, the next writer removes."""
    try:
        for path in folder.iterdir():
            match = _INDEX_FILE.match(path.name)
            stale = (match and int(match.group(1)) != keep_generation) or path.name.endswith(".faiss.tmp")
            if stale:
                path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove stale index files in %s (%s); the next writer will", folder, exc)


def from_vectors(batches: Iterable[tuple[np.ndarray, np.ndarray]], dim: int):
    """A new index holding every (ids int64 [n], vectors float32 [n, dim]) batch."""
    index = new_index(dim)
    for ids, vecs in batches:
        index.add_with_ids(vecs, ids)
    return index


def search(index, queries: np.ndarray, k: int, allowed: Collection[int] | None = None
           ) -> list[list[tuple[int, float]]]:
    """[(chunk id, cosine)] per query, best first, at most `k`; with `allowed`, only those ids (FAISS skips the
    others during the scan: still one exact pass)."""
    if index is None or index.ntotal == 0 or k <= 0 or (allowed is not None and not allowed):
        return [[] for _ in range(len(queries))]
    params = None
    if allowed is not None:
        import faiss

        # faiss's SWIG constructors set fields from keywords; its stubs do not list them
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.fromiter(allowed, dtype=np.int64)))  # type: ignore[call-arg]
        k = min(k, len(allowed))
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal),
                               params=params)
    return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)]
