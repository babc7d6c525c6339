"""Fusion of dense and keyword lists: per-question, distribution-aware weights; scores in [0, 1]."""

from __future__ import annotations

import math
import random

from hypothesis import assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from kb_qa.retrieval.fusion import distribution, fuse, retriever_weights, softmax_shares


def flat_list(prefix: str, n: int = 50, seed: int = 0, base: float = 0.45, spread: float = 0.03):
    """A retriever that does not understand the question: scores close together, in no useful order."""
    rng = random.Random(seed)
    scores = sorted((base + rng.uniform(-spread, spread) for _ in range(n)), reverse=True)
    return [(f"{prefix}{i}", s) for i, s in enumerate(scores)]


def peaked_list(winner: str, prefix: str, n: int = 50, seed: int = 1, top: float = 25.0):
    """A retriever with a clear winner several standard deviations above the rest."""
    rng = random.Random(seed)
    rest = sorted((rng.uniform(1.0, 6.0) for _ in range(n - 1)), reverse=True)
    return [(winner, top)] + [(f"{prefix}{i}", s) for i, s in enumerate(rest)]


def test_softmax_shares_basics():
    assert softmax_shares([]) == []
    assert softmax_shares([3.0]) == [1.0]
    assert softmax_shares([2.0, 2.0, 2.0]) == [1 / 3] * 3
    shares = softmax_shares([5.0, 3.0, 1.0, 0.5])
    assert math.isclose(sum(shares), 1.0)
    assert shares == sorted(shares, reverse=True)


def test_confidence_is_the_information_in_the_list():
    assert distribution([]).confidence == 0.0
    assert distribution([0.7]).confidence == 1.0
    assert distribution([0.5, 0.5, 0.5]).confidence == 0.0
    flat = distribution([s for _, s in flat_list("d")]).confidence
    peaked = distribution([s for _, s in peaked_list("g", "k")]).confidence
    assert 0.0 < flat < 0.1 < 0.3 < peaked <= 1.0


def test_unlisted_pool_counts_as_zero_scores():
    """Two keyword matches among 50 chunks: not a 50/50 contest."""
    alone = distribution([3.0, 2.9])
    pooled = distribution([3.0, 2.9], pool=50, floor=0.0)
    assert alone.shares[1] > 0.1 and pooled.shares[0] > 0.3
    assert sum(pooled.shares) < 1.0 and pooled.confidence > alone.confidence


@given(st.lists(st.floats(-50, 50), min_size=2, max_size=60), st.floats(0.01, 100), st.floats(-100, 100))
@hsettings(max_examples=60, deadline=None)
def test_softmax_shares_ignore_the_scale_of_the_scores(scores, a, b):
    """A model's cosine range or BM25's magnitude cannot change the weights: only the shape of the list does."""
    assume(max(scores) - min(scores) > 1e-3)
    plain = softmax_shares(scores)
    moved = softmax_shares([a * s + b for s in scores])
    assert all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7) for x, y in zip(plain, moved, strict=True))


def test_confident_keyword_side_dominates_a_flat_dense_side():
    dense = flat_list("d")  # e.g. an English embedding model on Chinese text
    keyword = peaked_list("gold", "k")
    sims_d = {k: s for k, s in dense} | {"gold": 0.44}
    sims_k = {"gold": 0.9} | {k: 0.2 for k, _ in keyword[1:]}
    fused = fuse(dense, keyword, sims_d, sims_k)
    assert fused[0].key == "gold"
    w_d, w_k = retriever_weights(distribution([s for _, s in dense]), distribution([s for _, s in keyword]))
    assert w_k > 3 * w_d
    assert fused[0].score > 0.7


def test_confident_dense_side_carries_the_weight_the_same_way():
    """The same rule with the roles swapped: a dense model that understands the question wins without any setting."""
    dense = peaked_list("gold", "d", top=0.85)
    dense = [(k, s / 30 if k != "gold" else s) for k, s in dense]  # cosines: winner 0.85, rest 0.03..0.2
    keyword = flat_list("k", base=4.0, spread=0.3)
    fused = fuse(dense, keyword, {k: s for k, s in dense}, {k: 0.3 for k, _ in keyword} | {"gold": 0.1})
    assert fused[0].key == "gold"
    assert fused[0].keyword_rank is None and fused[0].dense_rank == 1


def test_agreement_beats_either_list_alone():
    dense = [("a", 0.70), ("b", 0.69), ("both", 0.68)] + [(f"d{i}", 0.3 - i * 0.001) for i in range(20)]
    keyword = [("c", 12.0), ("both", 11.8), ("e", 11.5)] + [(f"k{i}", 3.0 - i * 0.01) for i in range(20)]
    fused = fuse(dense, keyword, {k: s for k, s in dense}, {"c": 0.8, "both": 0.8, "e": 0.7})
    assert fused[0].key == "both"


def test_one_side_switched_off_keeps_that_order_and_its_similarity():
    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    fused = fuse(dense, None, {"a": 0.9, "b": 0.5, "c": -0.2})
    assert [h.key for h in fused] == ["a", "b", "c"]
    assert [h.score for h in fused] == [0.9, 0.5, 0.0]  # cosine clipped to [0, 1]
    assert all(h.keyword_score is None for h in fused)
    keyword = [("x", 7.0), ("y", 3.0)]
    fused = fuse(None, keyword, None, {"x": 0.4, "y": 1.0})
    assert [h.key for h in fused] == ["x", "y"]  # BM25 order...
    assert [h.score for h in fused] == [0.4, 1.0]  # ...and the keyword similarity as the score


def test_empty_lists():
    assert fuse([], [], {}, {}) == []
    fused = fuse([("a", 0.5)], [], {"a": 0.5}, {})
    assert [h.key for h in fused] == ["a"] and fused[0].score == 0.5


@given(
    st.lists(st.tuples(st.integers(0, 30), st.floats(-1, 1)), max_size=40, unique_by=lambda t: t[0]),
    st.lists(st.tuples(st.integers(0, 30), st.floats(0, 60)), max_size=40, unique_by=lambda t: t[0]),
    st.dictionaries(st.integers(0, 30), st.floats(-1, 1)),
    st.dictionaries(st.integers(0, 30), st.floats(0, 1)),
)
@hsettings(max_examples=80, deadline=None)
def test_scores_and_support_are_always_in_unit_interval(dense, keyword, dsim, ksim):
    dense = sorted(dense, key=lambda t: -t[1])
    keyword = sorted(keyword, key=lambda t: -t[1])
    fused = fuse(dense, keyword, dsim, ksim)
    assert len(fused) == len({k for k, _ in dense} | {k for k, _ in keyword})
    for hit in fused:
        assert 0.0 <= hit.score <= 1.0
        assert 0.0 <= hit.support <= 1.0 + 1e-9
    supports = [h.support for h in fused]
    assert supports == sorted(supports, reverse=True)
