"""The per-KB calibration: pseudo-questions, the fit, the stored model."""

from __future__ import annotations

import numpy as np

from kb_qa.retrieval.calibration import (
    META_KEY,
    VERSION,
    Calibration,
    Evidence,
    _Question,
    calibration_for,
    evidence,
    fit,
    fit_answerable,
    fit_refusal,
    kb_evidence,
    prior,
    pseudo_question,
    query_like,
    seen_in,
    sentences,
    unknown_share,
)
from kb_qa.retrieval.fusion import fuse_calibrated
from kb_qa.retrieval.keyword import content_units, coverage
from kb_qa.store.terms import NGRAM_PREFIX, search_terms


def test_pseudo_question_takes_a_sentence_out():
    text = "龙井茶产于浙江杭州西湖一带。它是中国十大名茶之一，以色绿香郁著称。每年清明前采摘的明前茶最为名贵。"
    assert len(sentences(text)) == 3
    q, rest = pseudo_question(text, 1, search_terms)
    assert q in text and q not in rest and len(rest) >= 0.4 * len(text)
    assert pseudo_question("一句话而已。", 0, search_terms) is None


def _questions(rng, n, useful, noise):
    """n questions of 30 candidates; the relevant one is high on the `useful` feature, `noise` is random."""
    out = []
    for _ in range(n):
        rows = np.ones((30, 4))
        rows[:, 1:] = rng.uniform(0, 0.5, size=(30, 3))
        target = int(rng.integers(30))
        rows[target, useful] += 0.4
        out.append(_Question(rows, target, None, 1))
    return out


def test_fit_trusts_only_the_feature_that_discriminates():
    rng = np.random.default_rng(0)
    cal = fit(_questions(rng, 150, useful=3, noise=1))  # bm25 finds it, dense and share are noise
    assert cal.weights["bm25"] > 4 * max(cal.weights["dense"], 0.1)
    assert cal.fused.hit1 > 0.7 and cal.questions == 150
    assert all(v >= 0 for k, v in cal.weights.items() if k != "bias")
    assert cal.probability(0.2, 0.2, 0.9) > cal.probability(0.2, 0.2, 0.1)
    again = Calibration.from_json(cal.to_json())
    assert again.weights == cal.weights and again.fused == cal.fused
    assert Calibration.from_json("not json") is None


def test_fused_list_is_in_score_order():
    cal = prior()
    hits = fuse_calibrated([("a", 0.9), ("b", 0.5)], [("b", 10.0), ("c", 3.0)], {"a": 0.9, "b": 0.5, "c": 0.1},
                           {"a": 0.0, "b": 1.0, "c": 0.5}, {"b": 1.0, "c": 0.3}, lambda key: cal)
    assert [h.key for h in hits][0] == "b"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    only = fuse_calibrated(None, [("c", 3.0)], None, {"c": 0.5}, {"c": 0.3}, lambda key: cal)
    assert only[0].dense_score is None and 0 < only[0].score < 1


def test_calibration_is_measured_once_and_stored(app, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, topic in enumerate(["火车", "茶叶", "长城", "熊猫", "电脑", "黄河"]):
        (docs / f"d{i}.txt").write_text(
            f"{topic}是本文的主题。关于{topic}的第一个事实是它很有名，许多人研究{topic}的历史。"
            f"第二个事实是{topic}与第{i}号文件有关，内容包括编号{i}{i}{i}。最后{topic}的介绍到此为止。",
            encoding="utf-8")
    assert not app.ingest("cal", [docs]).failed
    kb = app.kb("cal")
    cal = calibration_for(kb, app.embeddings, 20)
    assert cal.questions >= 3 and cal.generation == kb.info().generation
    stored = Calibration.from_json(kb.get_meta(META_KEY))
    assert stored is not None and stored.weights == cal.weights


def test_unknown_share_weighs_terms_the_kb_lacks_by_idf():
    idf = {"沪通": 6.0, "铁路": 2.0, "时候": 1.0}
    df = {"沪通": 0, "铁路": 5, "时候": 9}
    assert unknown_share(idf, df) == 6.0 / 9.0
    assert unknown_share(idf, df, {"铁路"}) == 8.0 / 9.0  # treated as missing (a document left out)
    assert unknown_share({}, {}) == 0.0 and unknown_share(idf, {"沪通": 1, "铁路": 5, "时候": 9}) == 0.0
    # Character bigrams are left out: "沪通"'s bigram being in the KB must not make the name look known.
    gram = NGRAM_PREFIX + "沪通"
    assert unknown_share({**idf, gram: 6.0}, {**df, gram: 3}) == 6.0 / 9.0


def _refusal_questions(rng, n, u_answerable, u_unanswerable):
    """`_questions` with each question's unknown-term share drawn from the given (low, high) ranges."""
    out = []
    for q in _questions(rng, n, useful=3, noise=1):
        q.unknown_answerable = float(rng.uniform(*u_answerable))
        q.unknown_unanswerable = float(rng.uniform(*u_unanswerable))
        out.append(q)
    return out


def test_refusal_weight_grows_with_what_unknown_terms_tell_and_keeps_the_order():
    rng = np.random.default_rng(1)
    informative = fit(_refusal_questions(rng, 150, (0.0, 0.1), (0.5, 0.9)))  # no answer <=> many unknown terms
    blind = fit(_refusal_questions(rng, 150, (0.0, 0.5), (0.0, 0.5)))  # the same unknown share either way
    assert informative.refusal["unknown"] > 1.0 > blind.refusal["unknown"] >= 0.0
    assert informative.refusal["bias"] == 0.0 and informative.refusal["scale"] == 1.0
    p_known = informative.probability(0.2, 0.6, 0.6, unknown=0.0)
    p_unknown = informative.probability(0.2, 0.6, 0.6, unknown=0.8)
    assert p_unknown < p_known
    # one value per question: the order of its candidates is unchanged
    a, b = informative.probability(0.2, 0.9, 0.9, 0.8), informative.probability(0.2, 0.3, 0.3, 0.8)
    assert a > b and informative.probability(0.2, 0.9, 0.9, 0.0) > informative.probability(0.2, 0.3, 0.3, 0.0)
    assert fit_refusal([], np.zeros(4)) == {"bias": 0.0, "scale": 1.0, "unknown": 0.0}
    again = Calibration.from_json(informative.to_json())
    assert again is not None and again.refusal == informative.refusal


def test_evidence_reads_the_best_keyword_share_and_how_far_the_best_passage_stands_out():
    ev = evidence([0.1, 0.6, 0.3], [0.5, 0.5, 0.8], 0.25)
    assert ev.keyword == 0.6 and abs(ev.dense_lift - 0.2) < 1e-9 and ev.unknown == 0.25
    # a blind embedding model: every passage the same cosine, however high -> no lift
    flat = evidence([], [0.7, 0.7, 0.7], 0.0)
    assert flat.keyword == 0.0 and abs(flat.dense_lift) < 1e-9
    assert evidence([1.5], [], 2.0) == Evidence(1.0, 1.0, 0.0)  # clipped to [0, 1]


def _answerable_questions(rng, n, keyword_pos, keyword_neg):
    """`_questions` with an answerable / unanswerable Evidence pair each; the lift is noise in both."""
    out = _questions(rng, n, useful=3, noise=1)
    for q in out:
        q.evidence_answerable = Evidence(float(rng.uniform(*keyword_pos)), 0.0, float(rng.uniform(0, 0.2)))
        q.evidence_unanswerable = Evidence(float(rng.uniform(*keyword_neg)), float(rng.uniform(0.3, 0.7)),
                                           float(rng.uniform(0, 0.2)))
    return out


def test_answerability_model_learns_what_separates_and_only_ever_lowers_the_probability():
    rng = np.random.default_rng(2)
    informative = fit(_answerable_questions(rng, 150, (0.4, 0.8), (0.0, 0.3)))
    blind = fit(_answerable_questions(rng, 150, (0.0, 0.5), (0.0, 0.5)))
    a, b = informative.answerable, blind.answerable
    assert a["keyword"] > 3.0 > 1.0 > b["keyword"] >= 0.0
    assert "unknown" not in a and a["dense_lift"] >= 0.0  # U acts through fit_refusal's weight only
    strong, weak = Evidence(0.9, 0.0, 0.1), Evidence(0.05, 0.0, 0.1)
    assert informative.answerable_logit(strong) > 0 > informative.answerable_logit(weak)
    plain = informative.probability(0.2, 0.6, 0.6, 0.0)
    assert informative.probability(0.2, 0.6, 0.6, evidence=strong) == plain  # never raised
    assert informative.probability(0.2, 0.6, 0.6, evidence=weak) < plain / 2
    # one value per question: the order of its candidates is unchanged
    assert informative.probability(0.2, 0.9, 0.9, evidence=weak) > informative.probability(0.2, 0.3, 0.3, evidence=weak)
    # unknown terms still lower it, read from the evidence
    assert informative.probability(0.2, 0.6, 0.6, evidence=Evidence(0.9, 0.8, 0.1)) <= plain
    again = Calibration.from_json(informative.to_json())
    assert again is not None and again.answerable == informative.answerable
    assert fit_answerable([]) == {} and fit_answerable(_questions(rng, 5, 3, 1)) == {}
    assert prior().probability(0.2, 0.6, 0.6, evidence=weak) == prior().probability(0.2, 0.6, 0.6)


def test_query_like_questions_are_a_few_of_the_sentences_terms_in_order():
    terms = ["沪通", "铁路", "江苏", "南通", "上海", "通车", "时间", "长度"]
    for seed in range(20):
        q = query_like(terms, seed)
        assert 3 <= len(q) <= 6 and q == [t for t in terms if t in q]
    assert query_like(terms, 7) == query_like(terms, 7)
    assert query_like(["一", "二"], 0) == ["一", "二"] and query_like([], 0) == []


def test_a_term_cut_otherwise_than_in_the_passage_is_not_unknown():
    assert seen_in(["锦地", "野马"], ["錦地羅（學名：），是茅膏菜科的植物。"]) == {"锦地"}  # folded: 錦 -> 锦
    assert seen_in(["锦地"], []) == set()

    class _Stats:
        idf = {"锦地": 3.0, "罗": 1.0, "全长": 2.0, "野马": 3.0}
        df = {"锦地": 0, "罗": 4, "全长": 2, "野马": 0}

    assert unknown_share(_Stats.idf, _Stats.df) == 6.0 / 9.0


def test_a_calibration_of_another_version_is_measured_again(app, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, topic in enumerate(["火车", "茶叶", "长城", "熊猫"]):
        (docs / f"d{i}.txt").write_text(f"{topic}是本文的主题。关于{topic}的第一个事实是它很有名。第二个事实是"
                                        f"{topic}与第{i}号文件有关。最后{topic}的介绍到此为止。", encoding="utf-8")
    assert not app.ingest("old", [docs]).failed
    kb = app.kb("old")
    old = prior()
    old.version, old.generation, old.questions = VERSION - 1, kb.info().generation, 7
    old.answerable = {"bias": 0.0, "keyword": 1.0, "unknown": 0.0, "dense_lift": 0.0}  # version 3's layout
    kb.put_meta(META_KEY, old.to_json())
    assert Calibration.from_json(kb.get_meta(META_KEY)) is None  # another version reads as none
    cal = calibration_for(kb, app.embeddings, 20)
    assert cal.version == VERSION and cal.questions != 7
    assert "unknown" not in cal.answerable and set(cal.answerable) == {"bias", "keyword", "dense_lift", "coverage"}
    assert Calibration.from_json(kb.get_meta(META_KEY)).version == VERSION  # stored again in this version


def test_content_units_are_character_pairs_that_survive_another_cut():
    units = content_units("锦地罗的全长是多少？")
    assert units == {"锦地", "地罗", "全长"}  # stop words (的, 是, 多少) and punctuation out
    # the passage cuts the name otherwise (or writes it in Traditional script): its pairs are still there
    assert coverage(units, ["錦地羅（學名），全長約10厘米。"]) == 1.0
    # the best single passage, not the union: 全长 in one, 锦地罗 in another is 2/3 at most
    assert coverage(units, ["全长约10厘米。", "锦地罗很远"]) == 2.0 / 3.0
    assert coverage(units, []) == 0.0 and coverage(set(), ["锦地罗"]) == 0.0
    assert content_units("RTX 4090 的显存多大") == {"rtx", "4090", "显存"}  # other scripts' words count too
    assert content_units("Who won Super Bowl 50?") == set()  # no Chinese: the term share says it already


class _EvidenceKB:
    """The store methods `kb_evidence` reads: chunk texts by id (and counts the reads)."""

    texts = {1: "锦地罗是茅膏菜科的植物，全长约10厘米。", 2: "茅膏菜科的另一种植物。", 3: "无关的文字。"}

    def __init__(self):
        self.reads = 0

    def get_chunks(self, ids):
        self.reads += 1

        class _Rec:
            def __init__(self, text):
                self.text = text
        return {i: _Rec(self.texts[i]) for i in ids if i in self.texts}


class _EvidenceStats:
    idf = {"锦地": 3.0, "罗": 1.0, "全长": 2.0, "野马": 3.0}
    df = {"锦地": 0, "罗": 4, "全长": 2, "野马": 0}

    def bm25_upper(self):
        return 10.0


def test_kb_evidence_reads_the_best_passages_once_for_every_measure():
    kb = _EvidenceKB()
    ev = kb_evidence(kb, "锦地罗的全长是多少", _EvidenceStats(), [(1, 6.0), (2, 2.0), (3, 1.0)], [(1, 0.5), (3, 0.2)])
    assert kb.reads == 1  # the best passages' texts once, for U and C
    assert ev.keyword == 0.6 and abs(ev.dense_lift - 0.15) < 1e-9
    assert ev.unknown == 3.0 / 9.0  # 锦地 is in a passage's text (cut otherwise), 野马 nowhere
    assert ev.coverage == 1.0  # chunk 1 says all of 锦地 / 地罗 / 全长
    without = kb_evidence(kb, "锦地罗的全长是多少", _EvidenceStats(), [(2, 2.0), (3, 1.0)], [(3, 0.2)], {"全长"})
    assert without.keyword == 0.2 and without.coverage == 0.0 and without.unknown == 8.0 / 9.0
    empty = kb_evidence(_EvidenceKB(), "锦地罗", _EvidenceStats(), [], [])
    assert empty == Evidence(0.0, 6.0 / 9.0, 0.0, 0.0)


def test_answerability_model_weighs_coverage_when_it_separates():
    rng = np.random.default_rng(3)
    out = _questions(rng, 150, useful=3, noise=1)
    for q in out:  # the keyword share says little, the coverage much
        q.evidence_answerable = Evidence(float(rng.uniform(0.1, 0.5)), 0.0, 0.1, float(rng.uniform(0.6, 1.0)))
        q.evidence_unanswerable = Evidence(float(rng.uniform(0.0, 0.4)), 0.3, 0.1, float(rng.uniform(0.0, 0.4)))
    cal = fit(out)
    assert cal.answerable["coverage"] > 3.0 and cal.answerable["coverage"] > 2 * cal.answerable["keyword"]
    said, unsaid = Evidence(0.3, 0.0, 0.1, 0.9), Evidence(0.3, 0.0, 0.1, 0.1)
    assert cal.answerable_logit(said) > 0 > cal.answerable_logit(unsaid)
    assert "coverage" in cal.summary()
