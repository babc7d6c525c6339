"""Retrieval on a small real knowledge base (real MiniLM embeddings, real jieba/FTS5 keyword index)."""

from __future__ import annotations

import pytest

from kb_qa.retrieval.retriever import MAX_MERGED, KnowledgeBaseRetriever, Retriever, join_overlapping, retriever_for

DOCS = {
    "eiffel.txt": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889 for "
                  "the World's Fair and is 330 metres tall.",
    "glm.txt": "ChatGLM2-6B 是清华大学和智谱AI发布的开源中英双语对话模型。它的对话上下文长度为8192个词元，"
               "推理速度比第一代提升了42%。",
    "cats.md": "# Cats\n\nCats are small furry animals. A cat sleeps for about fifteen hours a day.",
    "tea.txt": "龙井茶产于浙江杭州西湖一带，是中国十大名茶之一，以色绿、香郁、味甘、形美著称。",
}


def write_docs(folder, docs):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def kb_app(app, tmp_path):
    docs = write_docs(tmp_path / "docs", DOCS)
    (docs / "copy_of_tea.txt").write_text(DOCS["tea.txt"], encoding="utf-8")  # same content, second path
    report = app.ingest("main", [docs])
    assert not report.failed
    return app


def test_finds_the_right_document_in_either_language(kb_app):
    r = Retriever(kb_app)
    top = r.search("How tall is the Eiffel Tower?", "main")[0]
    assert top.source == "eiffel.txt" and top.kb == "main"
    top = r.search("ChatGLM2的上下文长度是多少？", "main")[0]
    assert top.source == "glm.txt"
    assert "8192" in top.text


def test_scores_are_similarities_in_unit_interval(kb_app):
    sources = Retriever(kb_app).search("龙井茶产于哪里？", "main", top_k=10)
    assert sources
    for s in sources:
        assert 0.0 <= s.score <= 1.0
        assert s.dense_score is not None and 0.0 <= s.dense_score <= 1.0
        assert s.keyword_score is not None and 0.0 <= s.keyword_score <= 1.0
    best = sources[0]
    assert best.source in ("tea.txt", "copy_of_tea.txt")
    assert best.keyword_score > 0.5  # most of the question's information-carrying words are in it
    # The score is the calibrated relevance probability: sources come in the order of their scores.
    assert [s.score for s in sources] == sorted((s.score for s in sources), reverse=True)


def test_threshold_refuses_when_the_best_passage_is_below_it(kb_app):
    r = Retriever(kb_app)
    everything = r.search("cats sleeping", "main", top_k=10, score_threshold=0.0)
    assert len(everything) >= 3
    best = everything[0].score
    assert r.search("cats sleeping", "main", top_k=10, score_threshold=best - 1e-6) == everything
    assert r.search("cats sleeping", "main", top_k=10, score_threshold=min(1.0, best + 1e-4)) == []


def test_refusal_on_by_default(kb_app):
    r = Retriever(kb_app)
    assert kb_app.settings.retrieval.score_threshold > 0
    assert r.search("How tall is the Eiffel Tower?", "main")[0].source == "eiffel.txt"
    assert r.search("What is the capital of Mongolia and its population?", "main") == []


def test_same_content_under_two_paths_is_one_hit(kb_app):
    sources = Retriever(kb_app).search("龙井茶", "main", top_k=10)
    tea = [s for s in sources if "龙井" in s.text]
    assert len(tea) == 1


def test_several_knowledge_bases_at_once_and_duplicates_across_them(kb_app, tmp_path):
    other = write_docs(tmp_path / "other", {
        "moon.txt": "The Moon is Earth's only natural satellite. Its distance is about 384,400 km.",
        "tea_again.txt": DOCS["tea.txt"],  # also in KB 'main'
        "bread.txt": "Bread is baked from flour, water and yeast; the dough rises before baking.",
        "river.txt": "The Yangtze is the longest river in Asia and flows into the East China Sea.",
        "guitar.txt": "A classical guitar has six nylon strings and is played with the fingers.",
    })
    kb_app.ingest("second", [other])
    r = Retriever(kb_app)
    sources = r.search("How far away is the Moon?", ["main", "second"], top_k=10)
    assert sources[0].kb == "second" and sources[0].source == "moon.txt"
    assert {s.kb for s in sources} == {"main", "second"}
    tea = [s for s in r.search("龙井茶产于哪里", ["main", "second"], top_k=10) if "龙井" in s.text]
    assert len(tea) == 1


def test_filter_by_file(kb_app):
    r = Retriever(kb_app)
    sources = r.search("How tall is the Eiffel Tower?", "main", top_k=10, files=["cats.md", "tea.txt"],
                       score_threshold=0.0)  # off-topic for those files: refused by default
    assert sources and {s.source for s in sources} <= {"cats.md", "tea.txt"}
    assert r.search("anything", "main", files=["missing.txt"]) == []


def test_each_side_can_be_switched_off(kb_app):
    r = Retriever(kb_app)
    dense_only = r.search("How tall is the Eiffel Tower?", "main", dense=True, keyword=False)
    assert dense_only[0].source == "eiffel.txt"
    assert all(s.keyword_score is None for s in dense_only)
    keyword_only = r.search("龙井茶", "main", dense=False, keyword=True)
    assert "龙井" in keyword_only[0].text
    assert all(s.dense_score is None for s in keyword_only)
    assert r.search("zzqx xyzzy", "main", dense=False, keyword=True) == []
    with pytest.raises(ValueError, match="switched off"):
        r.search("x", "main", dense=False, keyword=False)


def test_keyword_index_follows_ingest(kb_app, tmp_path):
    r = Retriever(kb_app)
    assert r.search("量子纠缠", "main", dense=False, keyword=True) == []
    new = write_docs(tmp_path / "new", {"quantum.txt": "量子纠缠是量子力学中的一种现象。"})
    kb_app.ingest("main", [new])
    assert r.search("量子纠缠", "main", dense=False, keyword=True)[0].source == "quantum.txt"


def test_neighbouring_overlapping_chunks_are_merged(app, tmp_path):
    app.settings.ingest.chunk_size = 60
    app.settings.ingest.chunk_overlap = 20
    sentences = [f"Sentence {i} says the blue heron nests near river bend number {i}." for i in range(3)]
    docs = write_docs(tmp_path / "d", {"heron.txt": " ".join(sentences),
                                       "other.txt": "Completely unrelated text about baking bread at home."})
    app.ingest("m", [docs])
    assert 3 <= app.kb("m").info().chunks - 1 <= MAX_MERGED
    sources = Retriever(app).search("blue heron nests near river bend", "m", top_k=5)
    heron = [s for s in sources if s.source == "heron.txt"]
    assert len(heron) == 1  # every chunk of it ranked, and they are one passage
    merged = heron[0].text
    for sentence in sentences:
        assert merged.count(sentence) == 1  # the splitter's overlap is not repeated


def test_join_overlapping():
    assert join_overlapping("abc def", "def ghi") == "abc def ghi"
    assert join_overlapping("abc", "xyz") == "abc\nxyz"
    assert join_overlapping("一二三四", "三四五六") == "一二三四五六"


def test_unknown_kb_is_an_error(kb_app):
    from kb_qa.store import KnowledgeBaseNotFound

    with pytest.raises(KnowledgeBaseNotFound):
        Retriever(kb_app).search("x", "nope")


def test_langchain_retriever(kb_app):
    retriever = KnowledgeBaseRetriever(app=kb_app, kbs=["main"], top_k=2)
    docs = retriever.invoke("How tall is the Eiffel Tower?")
    assert len(docs) == 2
    assert docs[0].metadata["source"] == "eiffel.txt" and docs[0].metadata["kb"] == "main"
    assert 0.0 <= docs[0].metadata["score"] <= 1.0
    assert "330 metres" in docs[0].page_content


def test_reranker_scores_are_the_cross_encoders_and_set_the_order(kb_app):
    """Each source's score is the CrossEncoder's own probability for (question, passage) and the ranking follows
    it. The model is built from the local MiniLM folder, so its classification head is untrained: its numbers are
    arbitrary but fixed once loaded, so the plumbing is checked against the model itself, not against constants."""
    from kb_qa.embeddings import resolve_model_path
    from kb_qa.retrieval import rerank

    question = "How tall is the Eiffel Tower?"
    plain = retriever_for(kb_app).search(question, "main", top_k=4)
    path = resolve_model_path("all-MiniLM-L6-v2")
    kb_app.settings.retrieval.reranker_model = path
    r = retriever_for(kb_app)
    sources = r.search(question, "main", top_k=4)
    assert len(sources) == 4
    first = rerank.get_reranker(path)
    chunks = kb_app.kb("main").get_chunks([s.chunk_id for s in sources])
    expected = first.score(question, [chunks[s.chunk_id].text for s in sources])
    assert [s.score for s in sources] == pytest.approx(expected, abs=1e-3)
    assert all(0.0 <= p <= 1.0 for p in expected)
    assert [s.score for s in sources] == sorted((s.score for s in sources), reverse=True)
    assert [s.score for s in sources] != pytest.approx([s.score for s in plain], abs=1e-3)  # not fusion's
    r.search("cats", "main")
    assert rerank.get_reranker(path) is first  # loaded once
