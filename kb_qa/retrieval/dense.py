"""Dense side of retrieval: nearest chunks by cosine similarity in the knowledge base's FAISS index.

The embeddings are L2-normalised, so the index's inner product is the cosine similarity in [-1, 1]. The dense
similarity reported and thresholded is `dense_score = max(0, cosine)` (computed in fusion.py): in [0, 1],
1 = same direction, 0 = unrelated
or opposite. (Its typical range depends on the embedding model: all-MiniLM-L6-v2 gives related English passages
~0.4-0.8, unrelated ones ~0-0.2; bge models are compressed towards 0.3-0.9.)

Deliberately not here: encoding the question (the caller batches that), fusion, and any SQL (the store's).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def dense_candidates(kb, query_vector: np.ndarray, k: int, allowed: set[int] | None = None
                     ) -> list[tuple[int, float]]:
    """[(chunk id, cosine)] best first, at most `k`; with `allowed`, only those chunk ids (the store's exact
    index skips the others during its one scan)."""
    if k <= 0:
        return []
    return kb.dense_search(np.asarray(query_vector, dtype=np.float32).reshape(-1), k, allowed)


def cosines(kb, query_vector: np.ndarray, ids: Iterable[int]) -> dict[int, float]:
    """Exact cosine of the question with each chunk id, from the vectors stored in the records."""
    q = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    vectors = kb.chunk_vectors(ids)
    # A KB built with another model has no comparable cosine (the KB refuses such queries anyway): skip it.
    return {cid: float(vec @ q) for cid, vec in vectors.items() if vec.shape == q.shape}
