"""Dense side of retrieval: nearest chunks by cosine similarity in the knowledge base's FAISS index.

The embeddings are L2-normalised, so the index's inner product is the cosine similarity in [-1, 1]. The dense
similarity reported and thresholded is `dense_score = max(0, cosine)`: in [0, 1], 1 = same direction, 0 = unrelated
or opposite. (Its typical range depends on the embedding model: all-MiniLM-L6-v2 gives related English passages
~0.4-0.8, unrelated ones ~0-0.2; bge models are compressed towards 0.3-0.9.)

Deliberately not here: encoding the question (the caller batches that) and fusion.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def dense_score(cosine: float) -> float:
    return min(1.0, max(0.0, float(cosine)))


def dense_candidates(kb, query_vector: np.ndarray, k: int, allowed: set[int] | None = None
                     ) -> list[tuple[int, float]]:
    """[(chunk id, cosine)] best first, at most `k`; with `allowed`, only those chunk ids.

    With a filter the index is searched for more neighbours until `k` allowed ones are found (or every vector was
    looked at): the exact index compares the question with every vector anyway, so this stays one scan per round.
    """
    if k <= 0:
        return []
    vec = np.asarray(query_vector, dtype=np.float32).reshape(1, -1)
    if allowed is None:
        return kb.dense_search(vec, k)[0]
    if not allowed:
        return []
    want = k + len(allowed) if len(allowed) < 4 * k else 4 * k
    while True:
        hits = kb.dense_search(vec, want)[0]
        kept = [(cid, s) for cid, s in hits if cid in allowed]
        if len(kept) >= k or len(hits) < want:
            return kept[:k]
        want *= 4


def cosines(kb, query_vector: np.ndarray, ids: Iterable[int]) -> dict[int, float]:
    """Exact cosine of the question with each chunk id, from the vectors stored in the records."""
    ids = [int(i) for i in ids]
    if not ids:
        return {}
    q = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    out: dict[int, float] = {}
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        marks = ",".join("?" * len(part))
        rows = kb.conn.execute(f"SELECT id, vector FROM chunks WHERE id IN ({marks})", part).fetchall()
        if not rows:
            continue
        mat = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
        if mat.shape[1] != q.shape[0]:
            continue  # a KB built with another model: no comparable cosine (the KB refuses such queries anyway)
        for (cid, _), sim in zip(rows, mat @ q):
            out[int(cid)] = float(sim)
    return out
