"""Fusion of the dense and keyword candidate lists: one ranking, and one relevance score in [0, 1] per chunk.

Why not plain reciprocal rank fusion: RRF trusts both lists equally for every question. With an embedding model
that does not understand the documents' language (the default all-MiniLM-L6-v2 on Chinese) the dense list is
close to noise, and equal-weight RRF ranks worse than BM25 alone. Raw scores cannot be mixed either: cosines and
BM25 live on unrelated scales, and each embedding model has its own cosine range.

The rule: a confidence-weighted mixture of per-list distributions. For each retriever r and question, over r's
own top-N candidates (N = retrieval.candidates):

    z_r(c) = (s_r(c) - mean) / std          the candidate's score in that list's own units: affine-invariant, so any
                                            model's cosine range or BM25's magnitude drops out. When fewer than N
                                            chunks share a term with the question, the others join with BM25 = 0.
    P_r(c) = exp(z_r(c)) / sum exp(z_r)     softmax at temperature 1 std: how r's belief is spread over candidates
    conf_r = 1 - H(P_r) / ln(n_r)           the information in that distribution: 0 when the scores are flat (r
                                            cannot tell its candidates apart), towards 1 when one candidate stands out
    w_r    = conf_r / (conf_d + conf_k)     (equal weights if neither list carries information)
    rank by  support(c) = sum_r w_r * P_r(c)      (P_r(c) = 0 when c is not in r's list)

A retriever that singles out a candidate both concentrates its own vote on it and gets a larger say; one whose
scores are flat spreads a small vote thinly. Nothing depends on the language or the model: a Chinese embedding
model that separates relevant passages well gets its weight by itself, and a keyword side that finds only common
words loses it. Alternatives measured on the same candidates (bench/bench_retrieval_fusion.py): RRF, DBSF, z-score
sum, min-max sum, the unweighted mixture, a mixture weighted by peak share.

The score (what `score_threshold` is compared with, and what a `Source` shows) is a similarity, not a rank value:

    score(c) = w_d * dense_score(c) + w_k * keyword_score(c)

with dense_score = max(0, cosine) (dense.py) and keyword_score = the IDF-weighted share of the question's terms
found in the chunk (keyword.py), both computed exactly for every candidate, and the same weights w_r. So `score`
is a weighted mean of two absolute similarities in [0, 1]: 1 = both measures say "identical", 0 = neither finds
anything in common; the weights only decide how much each measure is trusted for this question. With one
retriever switched off it is that retriever's similarity. Sources are listed in fused rank order, which the score
follows closely but not strictly.

Pure functions over plain lists: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ListDistribution:
    shares: list[float]  # P_r(c) of the listed candidates, in list order
    confidence: float  # 1 - normalised entropy of the whole distribution (listed + pooled), in [0, 1]


def distribution(scores: Sequence[float], pool: int = 0, floor: float = 0.0) -> ListDistribution:
    """Softmax of the z-scores of `scores` and the information it carries.

    `pool`: how many items the retriever actually scored when that is more than it listed and the unlisted ones
    all scored `floor` (BM25: chunks sharing no term score 0). They join the statistics, the denominator and the
    entropy, so two matches among 50 chunks are not mistaken for a 50/50 contest.
    [] -> no shares, confidence 0; a single item -> [1.0], confidence 1; flat scores -> uniform, confidence 0.
    """
    n = len(scores)
    if n == 0:
        return ListDistribution([], 0.0)
    padded = [float(s) for s in scores] + [floor] * max(0, pool - n)
    m = len(padded)
    if m == 1:
        return ListDistribution([1.0], 1.0)
    mean = sum(padded) / m
    std = math.sqrt(sum((s - mean) ** 2 for s in padded) / m)
    if std <= 1e-12 * max(1.0, abs(mean)):
        return ListDistribution([1.0 / m] * n, 0.0)
    z = [(s - mean) / std for s in padded]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    p = [v / total for v in e]
    entropy = -sum(x * math.log(x) for x in p if x > 0)
    confidence = min(1.0, max(0.0, 1.0 - entropy / math.log(m)))
    return ListDistribution(p[:n], confidence)


def softmax_shares(scores: Sequence[float], pool: int = 0, floor: float = 0.0) -> list[float]:
    """P_r(c) of the listed candidates (see `distribution`)."""
    return distribution(scores, pool, floor).shares


def retriever_weights(dense: ListDistribution | None, keyword: ListDistribution | None) -> tuple[float, float]:
    """(w_d, w_k) from the lists' confidences; a switched-off side (None) gets 0, the other 1; a non-empty list
    gets an equal share when neither carries information."""
    if dense is None or keyword is None:
        return (0.0, 1.0) if dense is None else (1.0, 0.0)
    cd, ck = dense.confidence, keyword.confidence
    if cd + ck <= 0:
        cd, ck = float(bool(dense.shares)), float(bool(keyword.shares))
        if cd + ck <= 0:
            return 0.5, 0.5
    return cd / (cd + ck), ck / (cd + ck)


@dataclass
class FusedHit:
    key: Hashable  # whatever identifies a chunk for the caller, e.g. (kb name, chunk id)
    support: float  # sum_r w_r * P_r(c): the ranking value, in [0, 1]
    score: float  # the relevance similarity in [0, 1] (see the module docstring)
    dense_score: float | None  # max(0, cosine), when computed
    keyword_score: float | None  # IDF-weighted term share, when computed
    dense_rank: int | None = None  # 1-based position in the dense list, when the chunk was in it
    keyword_rank: int | None = None


def fuse(dense: Sequence[tuple[Hashable, float]] | None, keyword: Sequence[tuple[Hashable, float]] | None,
         dense_sim: Mapping[Hashable, float] | None = None,
         keyword_sim: Mapping[Hashable, float] | None = None, *, keyword_pool: int = 0) -> list[FusedHit]:
    """Fuse candidate lists (each [(key, raw score)], best first; None = that retriever is switched off).

    `dense_sim` / `keyword_sim`: each candidate's absolute similarity in [0, 1] for the score, ideally for every key
    in either list (missing keys count as 0). `keyword_pool`: the size the keyword list would have had if every
    chunk counted (min(candidates, chunks searched)); the chunks it lacks matched no term and scored 0.
    Returns every candidate, best first.
    """
    enabled = (dense is not None, keyword is not None)
    lists = [list(dense or []), list(keyword or [])]
    dists = [distribution([s for _, s in lists[0]]),
             distribution([s for _, s in lists[1]], pool=keyword_pool, floor=0.0)]
    w_d, w_k = retriever_weights(dists[0] if enabled[0] else None, dists[1] if enabled[1] else None)
    weights = (w_d, w_k)

    hits: dict[Hashable, FusedHit] = {}
    order: list[Hashable] = []
    for side, (lst, dist) in enumerate(zip(lists, dists, strict=True)):
        for rank, ((key, _raw), p) in enumerate(zip(lst, dist.shares, strict=True), start=1):
            hit = hits.get(key)
            if hit is None:
                hit = hits[key] = FusedHit(key, 0.0, 0.0, None, None)
                order.append(key)
            hit.support += weights[side] * p
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
        hit.support = min(1.0, hit.support)
    # Stable: equal support (e.g. a flat list) falls back to the score, then to first appearance.
    position = {key: i for i, key in enumerate(order)}
    return sorted(hits.values(), key=lambda h: (-h.support, -h.score, position[h.key]))


def _clip(value: float | None) -> float:
    if value is None:
        return 0.0
    return min(1.0, max(0.0, float(value)))


# -- the calibrated rule (the product's default) ---------------------------------------------------------------
def fuse_calibrated(dense: Sequence[tuple[Hashable, float]] | None,
                    keyword: Sequence[tuple[Hashable, float]] | None,
                    dense_sim: Mapping[Hashable, float] | None, keyword_sim: Mapping[Hashable, float] | None,
                    bm25_share: Mapping[Hashable, float] | None, model_of, unknown_of=None,
                    evidence_of=None) -> list[FusedHit]:
    """Rank the union of the candidate lists by each KB's calibrated relevance probability (calibration.py).

    `bm25_share`: BM25 / the question's BM25 bound, for keyword candidates (others count 0, as in calibration).
    `model_of(key)`: the `Calibration` of the candidate's KB. Each hit's `support` and `score` are that probability,
    so the order of the list is the order of the scores. None = that retriever is switched off.
    `unknown_of(key)`: the question's share of terms unknown to the candidate's KB (calibration.unknown_share;
    None = 0): it lowers every candidate of that KB alike, so it moves refusal, never the order within a KB.
    `evidence_of(key)`: the `calibration.Evidence` of the candidate's KB for this question (None = not given): with
    it, the KB's answerability model replaces the U-only recalibration (again one value per KB and question).
    """
    use_dense, use_keyword = dense is not None, keyword is not None
    ranks: dict[Hashable, list[int | None]] = {}
    for side, lst in enumerate((dense or [], keyword or [])):
        for rank, (key, _raw) in enumerate(lst, start=1):
            ranks.setdefault(key, [None, None])[side] = rank
    hits = []
    for position, (key, (d_rank, k_rank)) in enumerate(ranks.items()):
        ds = _clip((dense_sim or {}).get(key)) if use_dense else None
        ks = _clip((keyword_sim or {}).get(key)) if use_keyword else None
        bm = _clip((bm25_share or {}).get(key)) if use_keyword else None
        p = model_of(key).probability(ds, ks, bm, unknown_of(key) if unknown_of and use_keyword else 0.0,
                                      evidence_of(key) if evidence_of and use_keyword else None)
        hits.append((position, FusedHit(key, p, p, ds, ks, d_rank, k_rank)))
    hits.sort(key=lambda ph: (-ph[1].score, ph[0]))
    return [h for _, h in hits]
