"""The keyword analyser (kb_qa.store.terms) on the cases real questions bring, through a real FTS5 index."""

from __future__ import annotations

import numpy as np
import pytest

from kb_qa.retrieval.keyword import keyword_candidates
from kb_qa.schema import Chunk
from kb_qa.store import KnowledgeBase
from kb_qa.store.terms import ANALYSER_META_KEY, ANALYSER_VERSION, NGRAM_PREFIX, fold, is_ngram, search_terms

DIM = 8


def build(tmp_path, texts: list[str]) -> KnowledgeBase:
    """A KB with one chunk per text (source p0, p1, ...); random vectors: only the keyword side is tested."""
    kb = KnowledgeBase.open(tmp_path / "store", "t", create=True)
    rng = np.random.default_rng(0)
    with kb.writer(embedding_model="m") as w:
        for i, text in enumerate(texts):
            v = rng.standard_normal((1, DIM)).astype(np.float32)
            w.put_document(f"p{i}", f"sha{i}", len(text), None, [Chunk(text=text, source=f"p{i}", ordinal=0)],
                           v / np.linalg.norm(v))
        w.commit()
    return kb


def ranked_sources(kb: KnowledgeBase, question: str, k: int = 10) -> list[str]:
    hits = keyword_candidates(kb, question, k)
    chunks = kb.get_chunks([cid for cid, _ in hits])
    return [chunks[cid].sources[0] for cid, _ in hits]


FILLER = ["今天天气很好，我们去公园散步。", "这家餐厅的菜很好吃，价格也公道。", "The cat sat on the mat all afternoon."]


def test_traditional_question_finds_simplified_passage_and_back(tmp_path):
    kb = build(tmp_path, ["沪通铁路于2020年7月1日正式开通运营，全长137公里。", "龍井茶產於浙江杭州西湖一帶。", *FILLER])
    assert ranked_sources(kb, "滬通鐵路什麼時候通車？")[0] == "p0"
    assert ranked_sources(kb, "龙井茶产于哪里")[0] == "p1"
    # Only terms are folded: the passage keeps its own script.
    assert kb.get_chunks(kb.chunk_ids())[kb.chunk_ids()[1]].text.startswith("龍井茶產於")


def test_full_width_matches_half_width(tmp_path):
    kb = build(tmp_path, ["本机配备 RTX 4090 显卡，显存24GB。", "本机配备集成显卡。", *FILLER])
    assert ranked_sources(kb, "ＲＴＸ　４０９０显卡")[0] == "p0"
    assert search_terms("ＲＴＸ　４０９０") == search_terms("RTX 4090")
    assert fold("ＡＢＣ１２３") == "abc123"


@pytest.mark.parametrize("identifier, question", [
    ("GB/T 7714-2015", "参考文献格式按 GB/T 7714-2015 怎么写"),
    ("RTX 4090", "RTX 4090 的功耗是多少"),
    ("v2.3.1", "v2.3.1 修复了什么问题"),
    ("3.5%", "利率3.5%的产品有哪些"),
    ("2023-05-01", "2023-05-01 发布了什么"),
])
def test_exact_identifier_ranks_first_among_similar_passages(tmp_path, identifier, question):
    # Near-misses hold every part of the identifier (some twice), just not the whole, and come first in the
    # index: only the whole-identifier term puts the exact passage (the last one) on top.
    near = {
        "GB/T 7714-2015": ["GB/T 7714-2005，GB 2015", "GB/T 2015-7714", "GB 7714-2015 附录T", "T 7714、GB/T 7715-2015"],
        "RTX 4090": ["RTX 4080 与 GTX 4090", "RTX 3090，4090元", "RTX 4070 Ti，4090元", "4090 RTX"],
        "v2.3.1": ["v2.3.0 和 v1.3.1", "v3.2.1 与 v1", "v2.1.3", "v1.2.3 v2"],
        "3.5%": ["3.4% 与 5%", "5.3%", "3.5 倍，增长5%", "3.6%，5"],
        "2023-05-01": ["2023-01-05", "2023-05-02 与 2001-05", "2023-06-01，05", "2022-05-01 2023"],
    }[identifier]
    texts = [f"{other} 版本说明：本段给出相关参数。" for other in near]
    texts.append(f"{identifier} 版本说明：本段给出相关参数。")
    kb = build(tmp_path, texts + FILLER)
    assert ranked_sources(kb, question)[0] == f"p{len(near)}"


def test_dates_in_either_notation_are_one_term():
    assert set(search_terms("2023年5月1日")) & set(search_terms("2023-05-01"))
    whole = [t for t in search_terms("2023-05-01") if "\ue000" in t]
    assert whole and whole == [t for t in search_terms("2023年5月1日") if "\ue000" in t]


def words(text: str) -> list[str]:
    """search_terms without the character bigrams."""
    return [t for t in search_terms(text) if not is_ngram(t)]


def test_question_words_and_filler_are_not_terms():
    assert words("请问爬行垫什么材质的好呢？") == ["爬行", "垫", "材质", "好"]
    assert "什么" not in search_terms("沪通铁路什么时候通车")
    assert search_terms("What is the capital of France?") == ["capital", "france"]
    assert search_terms("请问一下是什么呢") == []


def test_question_forms_leave_the_question_but_names_that_begin_alike_stay():
    from kb_qa.retrieval.keyword import content_units, query_terms

    assert query_terms("华沙是哪国的首都？") == ["华沙", "首都"]
    assert query_terms("球队有几名队员？") == ["球队", "队员"]
    assert query_terms("他是第几位总统？") == ["他", "总统"]
    assert query_terms("请说出三个原因。") == ["三个", "原因"]
    assert "哪些地方" not in query_terms("这座城市有哪些地方值得去？")
    assert not {"哪一位", "一位"} & set(query_terms("哪一位球员获得了最有价值球员？"))  # nor search mode's pieces
    assert not {"哪一年", "一年"} & set(query_terms("公司成立于哪一年？"))
    assert "地方" in query_terms("这座城市有哪些地方值得去？")  # the noun of 哪些 + noun stays
    assert {"地方", "值得"} <= content_units("这座城市有哪些地方值得去？")  # there too, no pair across 哪些
    assert content_units("华沙是哪国的首都？") == {"华沙", "首都"}  # no pair of the form: nothing a passage lacks
    assert {"哪吒", "父亲"} <= set(query_terms("哪吒的父亲是谁"))  # a name, not 哪 + a measure word
    assert "几内亚" in query_terms("几内亚的首都是哪里？") and "几何" in query_terms("几何学的创始人")
    assert "哪国" in search_terms("华沙是哪国的首都？") and "几名" in search_terms("球队有几名队员？")  # the analyser


def test_a_name_jieba_cuts_otherwise_in_question_and_passage_is_found_by_its_bigrams(tmp_path):
    # jieba: "锦地罗" whole in the passage, "锦地 / 罗" in the question: no word term of the name is shared, and the
    # passage that shares "全长" would win without the bigrams.
    assert "锦地罗" in words("锦地罗发源于青海") and "锦地罗" not in words("锦地罗的全长是多少")
    kb = build(tmp_path, ["锦地罗发源于青海，流经三省。", "沪通铁路全长137公里，跨越长江。", *FILLER])
    assert ranked_sources(kb, "锦地罗的全长是多少")[0] == "p0"


def test_bigrams_never_equal_a_word_and_skip_stop_words():
    terms = search_terms("锦地罗的全长是多少")
    grams = [t for t in terms if is_ngram(t)]
    assert grams == [NGRAM_PREFIX + "锦地", NGRAM_PREFIX + "地罗"]  # none with 的 / 是 / 多少, none from known words
    assert "锦地" in terms and not is_ngram("锦地")  # the word and its bigram are two terms
    assert not [t for t in search_terms("请问爬行垫什么材质") if is_ngram(t) and "什" in t]
    assert not [t for t in search_terms("The cat sat on the mat, RTX 4090.") if is_ngram(t)]
    assert [t for t in search_terms("北京的铁路正式开通运营") if is_ngram(t)] == []  # every word known: none


def test_filler_does_not_outweigh_the_content_word(tmp_path):
    # p1 shares every filler word with the question, p0 only the content word.
    kb = build(tmp_path, ["爬行垫的材质有PE、XPE和EPE。", "请问一下，这是什么呢？怎么了吗？", *FILLER])
    assert ranked_sources(kb, "请问一下爬行垫是什么材质的呢？")[0] == "p0"


def test_image_links_urls_and_empty_list_markers_make_no_terms(tmp_path):
    noise = "![大模型推理优化策略](https://img.example.com/llm/推理优化.png)\n- \n* \n1.\nhttps://example.com/大模型/推理优化?x=1\n"
    assert search_terms(noise) == []
    terms = words("![图](a.png) 量化是推理优化的策略之一 http://x.cn/a")
    assert terms == ["量化", "推理", "优化", "策略", "之一"]
    kb = build(tmp_path, [noise * 3 + "图片见上。", "大模型推理优化的策略包括量化、批处理和KV缓存。", *FILLER])
    assert ranked_sources(kb, "大模型推理优化有哪些策略？") == ["p1"]


def test_commit_records_the_analyser_version(tmp_path):
    kb = build(tmp_path, FILLER)
    assert kb.get_meta(ANALYSER_META_KEY) == ANALYSER_VERSION


def test_kb_indexed_by_an_older_analyser_asks_for_repair_or_rebuild(tmp_path):
    from kb_qa.errors import UsageError
    from kb_qa.store import AnalyserMismatch, doctor

    kb = build(tmp_path, ["沪通铁路正式开通运营。", *FILLER])
    kb.put_meta(ANALYSER_META_KEY, "1")
    with pytest.raises(AnalyserMismatch, match="--rebuild") as caught:
        keyword_candidates(kb, "沪通铁路", 5)
    assert isinstance(caught.value, UsageError) and "kb repair t" in str(caught.value)
    with pytest.raises(AnalyserMismatch), kb.writer(embedding_model="m") as w:  # no new terms mixed in
        w.remove_document("p1")
    assert any("analyser version 1" in p for p in doctor.check(kb).problems)
    doctor.repair(kb)  # re-cuts every chunk's terms from its stored text
    assert kb.get_meta(ANALYSER_META_KEY) == ANALYSER_VERSION
    assert ranked_sources(kb, "滬通鐵路")[0] == "p0"
