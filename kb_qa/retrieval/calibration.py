"""How good is each retriever on *this* knowledge base? Measured without labels, from pseudo-questions drawn from
the KB's own chunks, and turned into the relevance model that fusion ranks with and refusal thresholds on.

Pseudo-questions (the inverse cloze task, Lee et al. 2019): one sentence is taken out of a sampled chunk and asked
as a question; the relevant passage is the *rest* of that chunk. Taking the sentence out matters: a sentence asked
against the chunk that still contains it is found by copied words, and would teach fusion to trust keyword
matching more than real questions deserve. Every other chunk of the same document is left out of the candidates
(the splitter's overlap can repeat the sentence there), so no near-copy is counted as a wrong answer.

For each pseudo-question the real candidate lists are taken (dense top-N from the FAISS index, keyword top-N from
FTS5) and every candidate is described by three similarities that exist for any KB and any embedding model:

    dense    max(0, cosine) of question and chunk                                        (dense.py)
    share    IDF-weighted share of the question's terms found in the chunk                (keyword.py)
    bm25     BM25 of the chunk / the largest BM25 the question could reach in this KB     (keyword.py)

A logistic regression on these (label: "this is the passage the question came from") gives

    P(relevant | candidate) = sigmoid(b + w_dense * dense + w_share * share + w_bm25 * bm25)

fitted per KB: a retriever that cannot tell its candidates apart here (an English embedding model on Chinese text)
gets a weight near 0 by itself, and one that can gets what it earns. The probability is the fused ranking value,
the score a `Source` shows, and what `retrieval.score_threshold` is compared with, so sources are listed in the
order of their score and the threshold means the same thing for every embedding model: "estimated probability
that this passage is the one the question is about". The fit is ridge-regularised towards a prior (PRIOR) so a
KB too small to calibrate still gets a sensible model; weights are never negative (a higher similarity never
lowers relevance).

Refusal: the threshold reads P after per-question terms that say how well the KB *as a whole* covers the
question (one value for every candidate of the KB, so they move refusal, never the ranking):

    z' = z - w_unknown * U + min(0, logit P(answerable | K, L, C))                   (`Evidence`, `probability`)
    P(answerable | K, L, C) = sigmoid(a + a_kw * K + a_d * L + a_c * C)

    K  the best BM25 share among the keyword candidates (BM25 / the question's bound: how much of the question's
       informative weight one passage matches; the strongest single separator of answerable from same-language
       off-topic questions measured on the dev sets)
    L  the dense lift: the best dense similarity minus the mean over the dense candidates (a blind embedding model
       gives every passage of a question about the same cosine, so only standing out counts, never the level)
    C  the coverage: the largest share of the question's content (pairs of adjacent Chinese characters, words of
       other scripts; stop words out: `keyword.content_units`) that one of the best COVERAGE_PASSAGES keyword
       passages contains as text. About the question against its best passage, not the KB, and indifferent to
       how jieba cut a name; an off-topic question's best passage shares a few common words, an answer most of
       the question (measured: bench/README.md)
    U  the question's IDF share of terms no chunk of the KB contains (`unknown_share`), not counting terms found
       inside the best keyword passages' text (`seen_in`: jieba cuts an unknown name by its context,
       so "锦地罗" in a passage can be "锦地 / 罗" in the question)

Every one of K, L, U and C comes from `kb_evidence`, the one function both serving (retriever.py) and the fit
below use, so they cannot drift apart.

w_unknown is fitted on the pseudo-questions asked twice, once answerable and once as if their whole source document
were missing (`fit_refusal`). The answerability model is fitted on *query-like* pseudo-questions (`query_like`: 3-6
of a sentence's terms, as a user types them; a sentence asked whole or with itself removed is a poor model of a
real question's K), asked against the KB as it is and against the KB without their document (`fit_answerable`).
It only lowers the probability (min(0, .)): the pairs are a made-up 50/50 mix, and a question the KB covers well
keeps the ranking model's probability.

Measured reliability (hit@1, hit@5, MRR@10 on the pseudo-questions, per retriever and fused; fused figures are
2-fold cross-validated) is stored with the model in the KB's meta and shown by `kb show` and `kb_qa.eval`.

Deliberately not here: reading or writing the store (the `calibrate` caller passes a KB), the query-time fusion
(fusion.py).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

log = logging.getLogger(__name__)

VERSION = 4  # bump when pseudo-questions or features change: stored calibrations of another version are redone
#             (`Calibration.from_json` reads another version as none: the KB is measured again on first use)
#             4: answerability model on (K, L, C); its pinned "unknown" column dropped
META_KEY = "retrieval_calibration"
MAX_QUESTIONS = 120  # pseudo-questions per KB (3 embeddings each: seconds with a small model on an idle CPU)
FEATURES = ("dense", "share", "bm25")
# Prior model (used as the ridge centre): a hedge between the two sides for a KB too small to measure.
PRIOR = {"bias": -6.0, "dense": 3.0, "share": 3.0, "bm25": 3.0}
# Refusal recalibration prior: the identity (probability as the ranking model says, no unknown-term penalty).
IDENTITY = {"bias": 0.0, "scale": 1.0, "unknown": 0.0}
# Answerability model prior (ridge centre): no evidence either way (P = 0.5, so min(0, logit) = 0: no refusal).
ANSWERABLE_FEATURES = ("keyword", "dense_lift", "coverage")  # the Evidence fields it reads, in column order
ANSWERABLE_PRIOR = {"bias": 0.0, **dict.fromkeys(ANSWERABLE_FEATURES, 0.0)}
RIDGE = 2.0  # strength of the pull towards PRIOR, in pseudo-question units (so it fades as samples grow)

_SENTENCE = re.compile(r"[^。！？!?；;\n]+(?:[。！？!?；;]+|$)|[^\n]+")
_EN_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass
class PartReliability:
    hit1: float = 0.0
    hit5: float = 0.0
    mrr10: float = 0.0


@dataclass(frozen=True)
class Evidence:
    """What one KB offers one question as a whole (see the module docstring), each in [0, 1]."""

    keyword: float = 0.0  # K: best BM25 share among the keyword candidates
    unknown: float = 0.0  # U: IDF share of the question's terms the KB lacks
    dense_lift: float = 0.0  # L: best dense similarity minus the mean over the dense candidates
    coverage: float = 0.0  # C: largest share of the question's content units one best keyword passage contains


def evidence(bm25_shares: Sequence[float], dense_scores: Sequence[float], unknown: float,
             coverage: float = 0.0) -> Evidence:
    """`Evidence` from a KB's candidate lists: BM25 shares of its keyword candidates, dense_score of its dense
    candidates (either may be empty: that side is off or found nothing), U and C as measured."""
    keyword = min(1.0, max(bm25_shares, default=0.0))
    lift = (max(dense_scores) - sum(dense_scores) / len(dense_scores)) if dense_scores else 0.0
    return Evidence(max(0.0, keyword), _unit(unknown), _unit(lift), _unit(coverage))


def _unit(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


COVERAGE_PASSAGES = 3  # best keyword candidates whose text C reads (measured: top 1 or 3 separate alike)


def kb_evidence(kb, question: str, stats, keyword: Sequence[tuple[int, float]],
                dense: Sequence[tuple[int, float]], absent: set[str] | frozenset[str] = frozenset(), *,
                units: set[str] | None = None) -> Evidence:
    """What `kb` offers `question` as a whole (`Evidence`), from its candidate lists: `keyword` [(chunk id, raw
    BM25)] and `dense` [(chunk id, cosine)], best first, as retrieved (either may be empty); `stats`: the
    question's TermStats in `kb`; `absent`: terms treated as missing from the KB (a pseudo-question's document
    left out); `units`: the question's `content_units`, if the caller has them (one question, several KBs). The
    texts of the best keyword passages are read and folded once, for U and C. The one definition serving and
    calibration share."""
    from kb_qa.retrieval.keyword import content_units, folded_coverage
    from kb_qa.store.terms import fold, strip_noise

    upper = stats.bm25_upper() or 1.0
    head = [c for c, _ in keyword[:max(SEEN_PASSAGES, COVERAGE_PASSAGES)]]
    recs = kb.get_chunks(head) if head else {}
    folded = [fold(strip_noise(recs[c].text)) for c in head if c in recs]
    return evidence([min(1.0, s / upper) for _, s in keyword], [dense_score(s) for _, s in dense],
                    _unknown_share_seen(stats, absent, folded[:SEEN_PASSAGES]),
                    folded_coverage(content_units(question) if units is None else units,
                                    folded[:COVERAGE_PASSAGES]))


@dataclass
class Calibration:
    """A KB's relevance model and the reliability it measured. `weights` keys: bias + FEATURES."""

    weights: dict[str, float]
    questions: int = 0  # pseudo-questions used (0 = the prior alone)
    dense: PartReliability = field(default_factory=PartReliability)
    keyword: PartReliability = field(default_factory=PartReliability)
    fused: PartReliability = field(default_factory=PartReliability)
    generation: int = -1  # index generation it was measured on
    version: int = VERSION
    seconds: float = 0.0
    # one-retriever models, for when a side is switched off
    dense_only: dict[str, float] = field(default_factory=dict)
    keyword_only: dict[str, float] = field(default_factory=dict)
    # refusal recalibration of the logit z above: z' = bias + scale * z - unknown * U (U: `unknown_share`); the
    # identity until measured. One value per question shifts every candidate alike: ranking never changes.
    refusal: dict[str, float] = field(default_factory=lambda: dict(IDENTITY))
    answerable_questions: int = 0  # pseudo-questions behind `refusal`: answerable ones + as many without answer
    # P(answerable | Evidence): keys of ANSWERABLE_PRIOR; {} = not measured (the `refusal` recalibration is used)
    answerable: dict[str, float] = field(default_factory=dict)

    def answerable_logit(self, ev: Evidence) -> float:
        """logit P(answerable | ev) by this KB's answerability model (0 = no evidence either way)."""
        a = self.answerable or ANSWERABLE_PRIOR
        return a.get("bias", 0.0) + sum(a.get(k, 0.0) * getattr(ev, k) for k in ANSWERABLE_FEATURES)

    def probability(self, dense: float | None, share: float | None, bm25: float | None,
                    unknown: float = 0.0, evidence: Evidence | None = None) -> float:
        """P(relevant) of one candidate; None = that retriever is switched off (its one-side model is used).
        `evidence`: what the KB offers the question as a whole; with an answerability model it lowers the
        probability by the odds that the KB does not answer the question (`unknown` is then read from it).
        Without: `unknown`, the question's IDF share of terms that occur nowhere in this KB (`unknown_share`),
        goes through the older U-only recalibration."""
        if dense is None and (share is None and bm25 is None):
            return 0.0
        if dense is None:
            w = self.keyword_only or self.weights
        elif share is None and bm25 is None:
            w = self.dense_only or self.weights
        else:
            w = self.weights
        z = w.get("bias", 0.0) + w.get("dense", 0.0) * (dense or 0.0) + w.get("share", 0.0) * (share or 0.0) \
            + w.get("bm25", 0.0) * (bm25 or 0.0)
        r = self.refusal or IDENTITY
        shift = 0.0
        if evidence is not None:
            unknown = evidence.unknown
            if self.answerable:
                shift = min(0.0, self.answerable_logit(evidence))
        return _sigmoid(r.get("bias", 0.0) + r.get("scale", 1.0) * z - r.get("unknown", 0.0) * unknown + shift)

    def summary(self) -> str:
        """One line for `kb show` / eval output."""
        if not self.questions:
            return "not measured (prior weights)"
        r = self.refusal or IDENTITY
        return (f"{self.questions} pseudo-questions: dense hit@1 {self.dense.hit1:.2f} / MRR {self.dense.mrr10:.2f}, "
                f"keyword hit@1 {self.keyword.hit1:.2f} / MRR {self.keyword.mrr10:.2f}, fused hit@1 "
                f"{self.fused.hit1:.2f} / MRR {self.fused.mrr10:.2f}; weights dense {self.weights['dense']:.2f}, "
                f"share {self.weights['share']:.2f}, bm25 {self.weights['bm25']:.2f}; refusal scale {r['scale']:.2f}, "
                f"unknown-term weight {r['unknown']:.2f}"
                + ("; answerable: " + ", ".join(f"{k.replace('_', ' ')} {self.answerable.get(k, 0.0):.2f}"
                                                 for k in (*ANSWERABLE_FEATURES, "bias")) if self.answerable else ""))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Calibration | None:
        if not text:
            return None
        try:
            raw = json.loads(text)
            if raw.get("version") != VERSION:
                return None
            for part in ("dense", "keyword", "fused"):
                raw[part] = PartReliability(**raw.get(part, {}))
            return cls(**raw)
        except (ValueError, TypeError, KeyError):
            return None  # unreadable or from another layout: measured again


def prior() -> Calibration:
    return Calibration(weights=dict(PRIOR), dense_only=_sub(PRIOR, ("dense",)),
                       keyword_only=_sub(PRIOR, ("share", "bm25")))


def _sub(weights: dict[str, float], keep: Sequence[str]) -> dict[str, float]:
    return {k: (v if k == "bias" or k in keep else 0.0) for k, v in weights.items()}


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


# -- pseudo-questions ----------------------------------------------------------------------------------------
def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of the sentences of `text` (Chinese and Western end punctuation, line breaks)."""
    spans = []
    for m in _SENTENCE.finditer(text):
        start = m.start()
        for part in _EN_SPLIT.split(m.group()):
            idx = text.find(part, start)
            if idx < 0:
                continue
            if part.strip():
                spans.append((idx, idx + len(part)))
            start = idx + len(part)
    return spans


def pseudo_question(text: str, seed: int, terms_of) -> tuple[str, str] | None:
    """(question, rest of the chunk) from `text`, or None when the chunk has no usable sentence: the sentence
    must carry >= 4 terms and leave >= 40% of the chunk behind. `seed` picks among the usable ones."""
    spans = sentences(text)
    if len(spans) < 2:
        return None
    usable = []
    for start, end in spans:
        sentence = text[start:end].strip()
        if len(terms_of(sentence)) >= 4 and (len(text) - (end - start)) >= 0.4 * len(text):
            usable.append((start, end))
    if not usable:
        return None
    start, end = usable[seed % len(usable)]
    rest = (text[:start] + text[end:]).strip()
    return text[start:end].strip(), rest


# -- fitting --------------------------------------------------------------------------------------------------
def fit_logistic(x: np.ndarray, y: np.ndarray, prior_w: np.ndarray, ridge: float, groups: int,
                 free: np.ndarray | None = None) -> np.ndarray:
    """Ridge logistic regression towards `prior_w` by Newton steps; weights of the features (not the bias) kept
    >= 0. `groups`: pseudo-questions behind the rows (the ridge is per question, so it fades with more data).
    `free`: mask of the columns fitted (others stay at the prior)."""
    n, d = x.shape
    w = prior_w.astype(np.float64).copy()
    free = np.ones(d, dtype=bool) if free is None else free
    # per-question scale (rows ~ questions x candidates), never under 1 so a handful of questions cannot run away
    lam = max(1.0, ridge * n / max(groups, 1) ** 2) * np.ones(d)
    for _ in range(50):
        z = x @ w
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
        grad = x.T @ (p - y) + lam * (w - prior_w)
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(lam) + 1e-9 * np.eye(d)
        step = np.zeros(d)
        idx = np.where(free)[0]
        step[idx] = np.linalg.solve(hess[np.ix_(idx, idx)], grad[idx])
        step = np.clip(step, -5.0, 5.0)  # damped Newton: no overshoot on nearly separable data
        w_new = w - step
        w_new[1:] = np.maximum(w_new[1:], 0.0)
        if np.max(np.abs(w_new - w)) < 1e-6:
            w = w_new
            break
        w = w_new
    return w


@dataclass
class _Question:
    rows: np.ndarray  # candidates x (1 + FEATURES)
    target: int  # row of the relevant passage
    dense_rank: int | None  # 1-based rank of the relevant passage by each retriever alone (None = not listed)
    keyword_rank: int | None
    # For the refusal recalibration: U of the question against the KB without the sentence (answerable: the rest
    # of the chunk is there) and against the KB without the whole source document (the same question, but now
    # nothing in the KB answers it: the rows other than `target` are its candidates).
    unknown_answerable: float = 0.0
    unknown_unanswerable: float = 0.0
    # The question's `Evidence` in both cases (None: not measured, e.g. synthetic questions of the tests)
    evidence_answerable: Evidence | None = None
    evidence_unanswerable: Evidence | None = None


def _reliability(ranks: Sequence[int | None]) -> PartReliability:
    n = max(len(ranks), 1)
    hit1 = sum(1 for r in ranks if r is not None and r <= 1) / n
    hit5 = sum(1 for r in ranks if r is not None and r <= 5) / n
    mrr = sum(1.0 / r for r in ranks if r is not None and r <= 10) / n
    return PartReliability(round(hit1, 4), round(hit5, 4), round(mrr, 4))


def _rank_of_target(q: _Question, w: np.ndarray) -> int:
    z = q.rows @ w
    return int(np.sum(z > z[q.target])) + 1


def fit(questions: Sequence[_Question]) -> Calibration:
    """The KB's model from its pseudo-questions (the prior alone when there are none)."""
    if not questions:
        return prior()
    names = ("bias",) + FEATURES
    prior_w = np.array([PRIOR[k] for k in names])
    x = np.vstack([q.rows for q in questions])
    y = np.concatenate([np.eye(len(q.rows))[q.target] for q in questions])
    g = len(questions)
    w = fit_logistic(x, y, prior_w, RIDGE, g)
    dense_w = fit_logistic(x, y, _masked(prior_w, (0, 1)), RIDGE, g, free=_mask(4, (0, 1)))
    keyword_w = fit_logistic(x, y, _masked(prior_w, (0, 2, 3)), RIDGE, g, free=_mask(4, (0, 2, 3)))
    # Fused reliability, 2-fold cross-validated: each half is ranked by the model fitted on the other half.
    ranks: list[int] = []
    halves = (questions[0::2], questions[1::2])
    for train, test in ((halves[0], halves[1]), (halves[1], halves[0])):
        if not train or not test:
            continue
        xt = np.vstack([q.rows for q in train])
        yt = np.concatenate([np.eye(len(q.rows))[q.target] for q in train])
        wt = fit_logistic(xt, yt, prior_w, RIDGE, len(train))
        ranks += [_rank_of_target(q, wt) for q in test]
    refusal = fit_refusal(questions, w)
    return Calibration(
        weights=dict(zip(names, map(float, w), strict=True)), questions=g, refusal=refusal,
        answerable=fit_answerable(questions),
        answerable_questions=g,
        dense=_reliability([q.dense_rank for q in questions]),
        keyword=_reliability([q.keyword_rank for q in questions]),
        fused=_reliability(ranks or [_rank_of_target(q, w) for q in questions]),
        dense_only=dict(zip(names, map(float, dense_w), strict=True)),
        keyword_only=dict(zip(names, map(float, keyword_w), strict=True)),
    )


def fit_refusal(questions: Sequence[_Question], w: np.ndarray) -> dict[str, float]:
    """How much an unknown term lowers the probability a threshold reads, from the KB's own questions.

    Each pseudo-question is used twice: as asked (its passage is there: one candidate relevant) and as if its whole
    source document were missing from the KB (leave-one-document-out: every candidate irrelevant, and the terms
    only that document has become unknown to the KB, as an off-topic question's names are). A logistic fit of
    the label on (bias + z, U) over both, z the ranking model's logit, gives the weight of U; the ridge pulls it
    towards 0. The ranking inside a question is unchanged (U is one value per question); only the probability
    moves: down for a question whose informative terms the KB has never seen."""
    xs, ys = [], []
    for q in questions:
        z = q.rows @ w
        for unknown, rows, labels in (
                (q.unknown_answerable, z, np.eye(len(z))[q.target]),
                (q.unknown_unanswerable, np.delete(z, q.target), np.zeros(len(z) - 1))):
            if len(rows):
                xs.append(np.column_stack([np.ones(len(rows)), rows, np.full(len(rows), -unknown)]))
                ys.append(labels)
    if not xs:
        return dict(IDENTITY)
    x, y = np.vstack(xs), np.concatenate(ys)
    prior_w = np.array([IDENTITY["bias"], IDENTITY["scale"], IDENTITY["unknown"]])
    # Only the unknown-term weight is kept. Fitted freely, the scale steepens the curve on these copied-text
    # questions, and the bias carries the made-up 50/50 mix of answerable and unanswerable questions (a real KB's
    # share of unanswered questions is unknown); both raised the refusal of answerable real questions (measured
    # on the dev sets: bench/bench_retrieval_fusion.py). So the bias is fitted alongside, then dropped: a question
    # whose terms the KB knows keeps the ranking model's probability, one with unknown terms is lowered.
    r = fit_logistic(x, y, prior_w, RIDGE, 2 * len(questions), free=np.array([True, False, True]))
    return {"bias": 0.0, "scale": 1.0, "unknown": float(r[2])}


def fit_answerable(questions: Sequence[_Question]) -> dict[str, float]:
    """P(answerable | Evidence) from the KB's query-like pseudo-questions, each asked as answerable and as
    unanswerable (leave-one-document-out); {} when no question carries evidence. Ridge towards "no evidence"
    (ANSWERABLE_PRIOR); the weights keep their sign: more matched weight (K), a passage standing out (L) or more
    of the question said by one passage (C) never lowers answerability.

    U is not a column: a query-like question's terms come from its passage, so its U is ~0 (measured: 90th
    percentile 0.02 on cmrc2018_trial), while a real answerable question often has a word the KB was never indexed
    with (22% of cmrc2018_trial's). Fitted on these pairs, its weight came out ~3.7 and refused 3-4% of the dev
    sets' answerable questions (bench_retrieval_fusion.py); it acts through `fit_refusal`'s weight only."""
    xs, ys = [], []
    for q in questions:
        for ev, label in ((q.evidence_answerable, 1.0), (q.evidence_unanswerable, 0.0)):
            if ev is not None:
                xs.append([1.0] + [getattr(ev, k) for k in ANSWERABLE_FEATURES])
                ys.append(label)
    if not xs or len(set(ys)) < 2:
        return {}
    names = ("bias",) + ANSWERABLE_FEATURES
    prior_w = np.array([ANSWERABLE_PRIOR[k] for k in names])
    w = fit_logistic(np.asarray(xs), np.asarray(ys), prior_w, RIDGE, len(xs))
    return dict(zip(names, map(float, w), strict=True))


def unknown_share(idf: dict[str, float], df: dict[str, int], absent: set[str] | frozenset[str] = frozenset(),
                  seen: set[str] | frozenset[str] = frozenset()) -> float:
    """U: the IDF-weighted share of the question's terms that no chunk of the KB contains (df 0, or in `absent`:
    terms treated as missing), in [0, 1]. An off-topic question's names and rare words are such terms; an
    answerable question's mostly are not (its passage has them). `seen`: terms found inside a passage's text all
    the same (`seen_in`), which are not counted. Word terms only: a character bigram (`store.terms.is_ngram`) of
    an unknown name is often in the KB all the same (two common characters), and counting it would hide the name."""
    from kb_qa.store.terms import is_ngram

    idf = {t: v for t, v in idf.items() if not is_ngram(t)}
    total = sum(idf.values())
    if total <= 0:
        return 0.0
    return min(1.0, sum(v for t, v in idf.items() if (df.get(t, 0) == 0 or t in absent) and t not in seen) / total)


SEEN_PASSAGES = 5  # best keyword candidates whose text is searched for the question's unindexed terms


def seen_in(terms, texts: Sequence[str]) -> set[str]:
    """The `terms` that occur inside one of `texts` (passage texts, as stored): a term no chunk was indexed with
    may still be in the text, cut otherwise. jieba cuts a name it does not know by its context ("锦地罗" in the
    passage, "锦地 / 罗" in "锦地罗的全长是多少"; "潘仕成为何" -> "潘仕 / 成为"), so such a term is a segmentation
    artefact, not a word the KB lacks. Texts are folded as terms are (NFKC, lower case, Simplified)."""
    from kb_qa.store.terms import fold, strip_noise

    return _seen_in_folded(terms, [fold(strip_noise(t)) for t in texts])


def _seen_in_folded(terms, folded: Sequence[str]) -> set[str]:
    """`seen_in` for texts already folded."""
    return {t for t in terms if t and any(t in f for f in folded)}


def _unknown_share_seen(stats, absent: set[str] | frozenset[str], folded: Sequence[str]) -> float:
    """`unknown_share` not counting the unknown terms found in `folded` (the best keyword passages' texts, folded
    as terms are)."""
    unknown = [t for t, d in stats.df.items() if d == 0 or t in absent]
    return unknown_share(stats.idf, stats.df, absent, _seen_in_folded(unknown, folded) if unknown else set())


def _mask(d: int, keep: Sequence[int]) -> np.ndarray:
    m = np.zeros(d, dtype=bool)
    m[list(keep)] = True
    return m


def _masked(w: np.ndarray, keep: Sequence[int]) -> np.ndarray:
    out = np.zeros_like(w)
    out[list(keep)] = w[list(keep)]
    return out


# -- measuring a KB -------------------------------------------------------------------------------------------
def calibrate(kb, embeddings, candidates: int = 50, max_questions: int = MAX_QUESTIONS) -> Calibration:
    """Draw pseudo-questions from `kb`'s chunks, collect the real candidates of each, fit the model."""
    from kb_qa.retrieval.dense import cosines, dense_candidates
    from kb_qa.retrieval.keyword import (
        TermStats,
        keyword_candidates,
        keyword_similarities,
        keyword_similarity,
        query_terms,
    )
    from kb_qa.store.terms import search_terms

    started = time.perf_counter()
    generation = kb.info().generation
    ids = _chunk_ids(kb)
    if len(ids) < 3:
        cal = prior()
        cal.generation = generation
        return cal
    step = max(1, len(ids) // (max_questions * 2))  # look at twice as many chunks: some have no usable sentence
    picked = ids[::step][: max_questions * 2]
    recs = kb.get_chunks(picked)
    drawn: list[tuple[int, str, str, str]] = []  # (chunk id, sha, question, rest)
    sources_of: dict[int, list[str]] = {}
    for cid in picked:
        rec = recs.get(cid)
        if rec is None:
            continue
        pq = pseudo_question(rec.text, cid, query_terms)
        if pq is not None:
            drawn.append((cid, rec.sha256, pq[0], pq[1]))
            sources_of[cid] = list(rec.sources)
        if len(drawn) >= max_questions:
            break
    if not drawn:
        cal = prior()
        cal.generation = generation
        return cal
    vectors = embeddings.encode_queries([q for _, _, q, _ in drawn])
    rest_vectors = embeddings.encode([r for _, _, _, r in drawn])
    # Query-like questions for the answerability model: a few of the sentence's terms, as a user would type them
    # plus one or two words of another sentence of the KB: a real question shares only part of its words with its
    # passage (paraphrase, the asker's own words); terms drawn from the passage alone make answering look easy
    # (measured: refused_answerable 0.018-0.058 on the dev sets without them, 0.017-0.040 with them)
    short = [_joined(query_like(query_terms(q), cid)
                     + query_like(query_terms(drawn[(i + 1) % len(drawn)][2]), cid + 1)[: 1 + cid % 2])
             for i, (cid, _, q, _) in enumerate(drawn)]
    short_vectors = embeddings.encode_queries(short)
    sha_of = {cid: rec.sha256 for cid, rec in recs.items()}
    # BM25's average chunk length, estimated on the sampled chunks (in terms, as the FTS5 index counts them)
    avgdl = max(1.0, float(np.mean([len(search_terms(rec.text)) for rec in recs.values()])))
    questions: list[_Question] = []
    for (cid, sha, question, rest), qvec, rvec, sterms, svec in zip(drawn, vectors, rest_vectors, short,
                                                                     short_vectors, strict=True):
        dense = dense_candidates(kb, qvec, candidates)
        stats = TermStats(kb, query_terms(question))
        keyword = keyword_candidates(kb, question, candidates)
        unknown = list({c for c, _ in dense + keyword if c not in sha_of})
        sha_of.update({c: r.sha256 for c, r in kb.get_chunks(unknown).items()} if unknown else {})
        dense = [(c, s) for c, s in dense if sha_of.get(c) != sha]  # the source document is never a negative
        keyword = [(c, s) for c, s in keyword if sha_of.get(c) != sha]
        upper = stats.bm25_upper() or 1.0
        pool = list(dict.fromkeys([c for c, _ in dense] + [c for c, _ in keyword]))
        dsim = cosines(kb, qvec, pool)
        ksim = keyword_similarities(kb, question, pool, stats)
        bm = {c: s / upper for c, s in keyword}
        rows = [[1.0, dense_score(dsim.get(c, 0.0)), ksim.get(c, 0.0), min(1.0, bm.get(c, 0.0))] for c in pool]
        rest_terms = search_terms(rest)
        t_dense = dense_score(float(np.dot(np.asarray(qvec, dtype=np.float32), np.asarray(rvec, dtype=np.float32))))
        t_share = keyword_similarity(stats.idf, set(rest_terms))
        t_bm25 = min(1.0, bm25(stats, rest_terms, avgdl) / upper)
        rows.append([1.0, t_dense, t_share, t_bm25])
        target = len(rows) - 1
        d_rank = 1 + sum(1 for _, s in dense if dense_score(s) > t_dense)
        k_raw = t_bm25 * upper
        k_rank = (1 + sum(1 for _, s in keyword if s > k_raw)) if t_bm25 > 0 else None
        # Terms counted out of the KB: a question term is unknown once no chunk outside what is removed has it.
        doc_ids = kb.chunk_ids_for_sources(sources_of.get(cid, [])) | {cid}
        own = kb.chunk_terms(doc_ids)
        in_chunk = set(own.get(cid, "").split())
        in_doc: dict[str, int] = {}
        for text in own.values():
            for t in set(text.split()):
                in_doc[t] = in_doc.get(t, 0) + 1
        rest_set = set(rest_terms)
        # answerable: only the removed sentence had it (the source chunk, not its rest)
        u_pos = unknown_share(stats.idf, stats.df, {t for t, d in stats.df.items()
                                                    if d - (t in in_chunk) <= 0 and t not in rest_set})
        # unanswerable: every chunk that has it belongs to the source document
        u_neg = unknown_share(stats.idf, stats.df, {t for t, d in stats.df.items() if d - in_doc.get(t, 0) <= 0})
        ev_pos, ev_neg = _answerability_pair(kb, sterms, svec, candidates, sha, sha_of, in_doc)
        questions.append(_Question(np.asarray(rows, dtype=np.float64), target,
                                   d_rank if d_rank <= candidates else None, k_rank, u_pos, u_neg, ev_pos, ev_neg))
    cal = fit(questions)
    cal.generation = generation
    cal.seconds = round(time.perf_counter() - started, 2)
    return cal


def query_like(terms: Sequence[str], seed: int) -> list[str]:
    """A search-style question from a sentence's distinct terms: 3 to 6 of them (as many as the sentence has, if
    fewer), drawn at random (reproducibly, from `seed`), kept in order. A sentence asked whole matches its own
    passage by every word, one with its sentence removed by almost none; a user's question sits between: a few of
    the passage's words, the rare ones among them or not."""
    terms = list(dict.fromkeys(terms))
    rng = np.random.default_rng(seed)
    m = min(len(terms), 3 + int(rng.integers(4)))
    keep = sorted(rng.choice(len(terms), size=m, replace=False)) if m else []
    return [terms[i] for i in keep]


def _joined(terms: Sequence[str]) -> str:
    """The question text of query-like terms. It is cut again, as a user's question is, without the passage's
    context: a name jieba does not know may then be cut otherwise than in the passage ("锦地罗" -> "锦地 / 罗"),
    and become a term the KB was never indexed with, as happens to real questions."""
    return "".join(terms) if all(_CJK_TERM.search(t) for t in terms) else " ".join(terms)


_CJK_TERM = re.compile(r"[\u3400-\u9fff]")


def _answerability_pair(kb, question: str, qvec, candidates: int, sha: str, sha_of: dict[int, str],
                        in_doc: dict[str, int]) -> tuple[Evidence | None, Evidence | None]:
    """The `Evidence` of a query-like question against the KB as it is (its passage is there: answerable) and
    against the KB without the question's source document (leave-one-document-out: unanswerable, its terms only
    that document has become unknown)."""
    from kb_qa.retrieval.dense import dense_candidates
    from kb_qa.retrieval.keyword import TermStats, query_terms

    terms = query_terms(question)
    if not terms:
        return None, None
    stats = TermStats(kb, terms)
    keyword = kb.keyword_search(list(terms), candidates)
    dense = dense_candidates(kb, qvec, candidates)
    missing = list({c for c, _ in dense + keyword if c not in sha_of})
    if missing:
        sha_of.update({c: r.sha256 for c, r in kb.get_chunks(missing).items()})
    kept = [(c, s) for c, s in keyword if sha_of.get(c) != sha]
    dense_kept = [(c, s) for c, s in dense if sha_of.get(c) != sha]
    absent = {t for t, d in stats.df.items() if d - in_doc.get(t, 0) <= 0}
    from kb_qa.retrieval.keyword import content_units

    units = content_units(question)
    return (kb_evidence(kb, question, stats, keyword, dense, units=units),
            kb_evidence(kb, question, stats, kept, dense_kept, absent, units=units))


def dense_score(cosine: float) -> float:
    """max(0, cosine), clipped to [0, 1] (the dense similarity fusion uses)."""
    return min(1.0, max(0.0, float(cosine)))


def _chunk_ids(kb) -> list[int]:
    """Every chunk id of the KB, ascending."""
    return kb.chunk_ids()


def bm25(stats, doc_terms: Sequence[str], avgdl: float, k1: float = 1.2, b: float = 0.75) -> float:
    """FTS5's bm25() of one chunk given as its term list (the question's terms and IDFs from `stats`):
    sum_t idf(t) * tf (k1 + 1) / (tf + k1 (1 - b + b |D| / avgdl)), idf = ln((N - n_t + 0.5) / (n_t + 0.5))
    floored at 1e-6 as FTS5 does."""
    counts: dict[str, int] = {}
    for t in doc_terms:
        counts[t] = counts.get(t, 0) + 1
    length = max(1, len(doc_terms))
    total = 0.0
    for t, d in stats.df.items():
        tf = counts.get(t, 0)
        if not tf:
            continue
        idf = max(math.log((stats.n_docs - d + 0.5) / (d + 0.5)), 1e-6) if stats.n_docs else 1e-6
        total += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avgdl))
    return total


# -- the stored calibration -------------------------------------------------------------------------------------
_cache: dict[tuple[str, int], Calibration] = {}
_cache_lock = threading.Lock()


def stored(kb) -> Calibration | None:
    """The calibration stored in `kb` for its current index generation, if any (nothing is computed)."""
    cal = Calibration.from_json(kb.get_meta(META_KEY))
    if cal is None or cal.generation != kb.info().generation:
        return None
    return cal


def calibration_for(kb, embeddings, candidates: int = 50, *, save: bool = True) -> Calibration:
    """`kb`'s calibration for its current contents: from memory, else the KB's meta, else measured now (and
    stored, when the KB is not busy: a reader never waits for a writer)."""
    key = (str(kb.path), kb.info().generation)
    cal = _cache.get(key)
    if cal is not None:
        return cal
    with _cache_lock:
        cal = _cache.get(key)
        if cal is None:
            cal = stored(kb)
            if cal is None:
                cal = calibrate(kb, embeddings, candidates)
                if save and cal.generation == key[1]:
                    try:
                        kb.put_meta(META_KEY, cal.to_json(), lock_timeout_s=0.5)
                    except Exception as exc:  # noqa: BLE001 - busy or read-only: measured again next process
                        log.info("calibration of %s not stored: %s", kb.name, exc)
            _cache[key] = cal
    return cal
