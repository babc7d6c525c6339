"""Fusion of the dense and keyword candidate lists: one ranking, and one relevance score in [0, 1] per chunk.

Why not plain reciprocal rank fusion: RRF trusts both lists equally for every question. With an embedding model
that does not understand the documents' language (the default all-MiniLM-L6-v2 on Chinese) the dense list is
close to noise, and equal-weight RRF ranks worse than BM25 alone. Raw scores cannot be mixed either: cosines and
BM25 live on unrelated scales, and each embedding model has its own cosine range.

The rule (distribution-aware mixture). For each retriever r and question, over r's own top-N candidates:

    z_r(c) = (s_r(c) - mean) / std             the candidate's score in that list's own units (affine-invariant,
                                               so any model's or BM25's scale drops out); when fewer than N chunks
                                               match any keyword, the non-matching ones count with BM25 = 0
    P_r(c) = exp(z_r(c)) / sum exp(z_r(c'))    a softmax at temperature 1 std: r's belief that c is its best match
    rank by  support(c) = mean_r P_r(c)        (P_r(c) = 0 when c is not in r's list)

A retriever with a clear winner (a candidate several std above the rest) puts most of its mass on it; one whose
scores are flat spreads its mass thinly over 50 candidates and moves the fused order little. Nothing depends on
the language or the model, so a Chinese embedding model that separates well gets its weight by itself.

The score (what `score_threshold` is compared with, and what a `Source` shows) is a similarity, not a rank value:

    score(c) = w_d * dense_score(c) + w_k * keyword_score(c),     w_r = peak_r / (peak_d + peak_k)

with dense_score = max(0, cosine) (dense.py), keyword_score = the IDF-weighted share of the question's terms found
in the chunk (keyword.py), both computed exactly for every candidate, and peak_r = max_c P_r(c), how decisively r
singles out its best candidate for this question. So `score` is a weighted mean of two absolute similarities in
[0, 1]: 1 = both measures say "identical", 0 = neither finds anything in common; the weights only decide how much
each measure is trusted for this question. With one retriever switched off it is that retriever's similarity.
Sources are listed in fused rank order, which the score follows closely but not strictly.

Pure functions over plain lists: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass


def softmax_shares(scores: Sequence[float], pool: int = 0, floor: float = 0.0) -> list[float]:
    """exp(z) / sum exp(z) with z the scores' z-scores in this list; [] -> [], one item -> [1.0], flat -> uniform.

    `pool`: how many items the retriever actually scored when that is more than it listed and the unlisted ones
    all scored `floor` (BM25: chunks sharing no term score 0). They join the statistics and the denominator, so
    two matches among 50 chunks are not mistaken for a 50/50 contest. Returns shares of the listed items only."""
    n = len(scores)
    if n == 0:
        return []
    padded = list(scores) + [floor] * max(0, pool - n)
    m = len(padded)
    if m == 1:
        return [1.0]
    mean = sum(padded) / m
    std = math.sqrt(sum((s - mean) ** 2 for s in padded) / m)
    if std <= 1e-12 * max(1.0, abs(mean)):
        return [1.0 / m] * n
    z = [(s - mean) / std for s in padded]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return [v / total for v in e[:n]]


@dataclass
class FusedHit:
    key: Hashable  # whatever identifies a chunk for the caller, e.g. (kb name, chunk id)
    support: float  # mean over retrievers of P_r(c): the ranking value, in [0, 1]
    score: float  # the relevance similarity in [0, 1] (see the module docstring)
    dense_score: float | None  # max(0, cosine), when computed
    keyword_score: float | None  # IDF-weighted term share, when computed
    dense_rank: int | None = None  # 1-based position in the dense list, when the chunk was in it
    keyword_rank: int | None = None


def retriever_weights(dense_shares: Sequence[float], keyword_shares: Sequence[float]) -> tuple[float, float]:
    """(w_d, w_k): each list's peak share, normalised to sum 1; a list that is empty or absent gets 0."""
    pd = max(dense_shares, default=0.0)
    pk = max(keyword_shares, default=0.0)
    total = pd + pk
    if total <= 0:
        return 0.0, 0.0
    return pd / total, pk / total


def fuse(dense: Sequence[tuple[Hashable, float]] | None, keyword: Sequence[tuple[Hashable, float]] | None,
         dense_sim: Mapping[Hashable, float] | None = None,
         keyword_sim: Mapping[Hashable, float] | None = None, *, keyword_pool: int = 0) -> list[FusedHit]:
    """Fuse candidate lists (each [(key, raw score)], best first; None = that retriever is switched off).

    `dense_sim` / `keyword_sim`: each candidate's absolute similarity in [0, 1] for the score, ideally for every key
    in either list (missing keys count as 0). `keyword_pool`: the size the keyword list would have had if every
    chunk counted (min(candidates, chunks searched)); the chunks it lacks matched no term and scored 0.
    Returns every candidate, best first.
    """
    lists = [(lst or []) for lst in (dense, keyword)]
    enabled = [lst is not None for lst in (dense, keyword)]
    shares = [softmax_shares([s for _, s in lists[0]]),
              softmax_shares([s for _, s in lists[1]], pool=keyword_pool, floor=0.0)]
    w_d, w_k = retriever_weights(shares[0], shares[1])
    if not enabled[1]:
        w_d, w_k = 1.0, 0.0
    elif not enabled[0]:
        w_d, w_k = 0.0, 1.0
    n_lists = sum(1 for e, lst in zip(enabled, lists) if e and lst) or 1

    hits: dict[Hashable, FusedHit] = {}
    order: list[Hashable] = []
    for side, (lst, sh) in enumerate(zip(lists, shares)):
        for rank, ((key, _raw), p) in enumerate(zip(lst, sh), start=1):
            hit = hits.get(key)
            if hit is None:
                hit = hits[key] = FusedHit(key, 0.0, 0.0, None, None)
                order.append(key)
            hit.support += p / n_lists
            if side == 0:
                hit.dense_rank = rank
            else:
                hit.keyword_rank = rank
    for key in order:
        hit = hits[key]
        ds = _clip((dense_sim or {}).get(key)) if enabled[0] else None
        ks = _clip((keyword_sim or {}).get(key)) if enabled[1] else None
        hit.dense_score, hit.keyword_score = ds, ks
        hit.score = _clip(w_d * (ds or 0.0) + w_k * (ks or 0.0))
    # Stable: equal support (e.g. a flat list) falls back to the score, then to first appearance.
    position = {key: i for i, key in enumerate(order)}
    return sorted(hits.values(), key=lambda h: (-h.support, -h.score, position[h.key]))


def _clip(value: float | None) -> float:
    if value is None:
        return 0.0
    return min(1.0, max(0.0, float(value)))
