"""`python -m kb_qa.eval` on a tiny BEIR folder made in the test."""

from __future__ import annotations

import json

import pytest

from kb_qa.eval import BenchError, doc_name, evaluate, format_table, ingest_bench, load_bench, main

PASSAGES = {
    "p1": "The Eiffel Tower in Paris was finished in 1889 and is 330 metres tall.",
    "p2": "龙井茶产于浙江杭州西湖一带，是中国十大名茶之一。",
    "p3": "Cats sleep for about fifteen hours a day and are small furry animals.",
    "p4": "长城是中国古代的军事防御工程，东起山海关，西至嘉峪关。",
    "p5": "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in plants.",
    "p6": "ChatGLM2-6B 的对话上下文长度为8192个词元。",
}
QUERIES = {
    "q1": ("How tall is the Eiffel Tower?", "p1"),
    "q2": ("龙井茶产于哪里？", "p2"),
    "q3": ("How long do cats sleep?", "p3"),
    "q4": ("长城西至哪里？", "p4"),
    "q5": ("What does photosynthesis produce?", "p5"),
    "q6": ("ChatGLM2的上下文长度是多少？", "p6"),
}


def make_bench(folder, passages=PASSAGES, queries=QUERIES):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": pid, "title": "", "text": text}, ensure_ascii=False) + "\n"
                    for pid, text in passages.items())
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n"
                    for qid, (text, _) in queries.items())
        f.write(json.dumps({"_id": "q-empty", "text": ""}) + "\n")  # skipped: empty, no gold
    with open(folder / "qrels.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{qid}\t{pid}\t1\n" for qid, (_, pid) in queries.items())
    return folder


def test_load_bench(tmp_path):
    bench = load_bench(make_bench(tmp_path / "b"))
    assert len(bench.corpus) == 6 and len(bench.queries) == 6 and bench.skipped_queries == 1
    assert bench.qrels["q2"] == {"p2"}
    with pytest.raises(BenchError, match="missing"):
        load_bench(tmp_path)


def test_doc_names_are_safe_and_distinct():
    assert doc_name("c30f963062d76") == "c30f963062d76.txt"
    a, b = doc_name("a/b"), doc_name("a:b")
    assert "/" not in a and a != b and a.endswith(".txt")


def test_evaluate_reports_all_modes(app, tmp_path):
    bench = load_bench(make_bench(tmp_path / "b"))
    report, names = ingest_bench(app, bench, "evalkb", tmp_path / "docs")
    assert not report.failed and len(names) == 6
    result = evaluate(app, bench, "evalkb", names)
    assert set(result["modes"]) == {"dense", "keyword", "fused"}
    for figures in result["modes"].values():
        assert figures["questions"] == 6
        assert 0 <= figures["hit@1"] <= figures["hit@5"] <= figures["hit@10"] <= 1
        assert figures["hit@1"] <= figures["mrr@10"] <= figures["hit@10"]
        assert 0 <= figures["context_recall"] <= 1
        assert 0 < figures["p50_ms"] <= figures["p95_ms"]
    fused = result["modes"]["fused"]
    assert fused["hit@1"] >= 5 / 6 and fused["context_recall"] == 1.0
    assert result["token_count"] == "estimate" and result["chunks"] == 6
    table = format_table(result)
    assert "fused" in table and "hit@5" in table and "ctx rec" in table


def test_cli_json(tmp_path, capsys, monkeypatch, embedder):
    # The CLI builds its own App; hand it the session's already loaded model instead of loading it twice more.
    monkeypatch.setattr("kb_qa.embeddings.SentenceTransformerEmbeddings", lambda _settings: embedder)
    bench = make_bench(tmp_path / "bench")
    kb_dir = tmp_path / "kbdir"
    assert main(["--bench", str(bench), "--kb-dir", str(kb_dir), "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["questions"] == 6 and out["passages"] == 6 and out["chunks_embedded"] == 6
    assert out["modes"]["keyword"]["hit@5"] == 1.0
    # The KB is kept with --kb-dir: a second run embeds nothing.
    assert main(["--bench", str(bench), "--kb-dir", str(kb_dir), "--json", "-q", "--modes", "fused"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["chunks_embedded"] == 0 and list(again["modes"]) == ["fused"]


def test_questions_file_errors_name_the_line(tmp_path):
    from kb_qa.retrieval.evaluation import QuestionsError, load_questions

    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "ok", "source": "a.txt"}\n{"source": "a.txt"}\n', encoding="utf-8")
    with pytest.raises(QuestionsError, match="line 2"):
        load_questions(bad)
    bad.write_text('{"question": "ok", "source": 3}\n', encoding="utf-8")
    with pytest.raises(QuestionsError, match="'source'"):
        load_questions(bad)


def test_evaluate_an_existing_kb(app, tmp_path):
    from kb_qa.retrieval.evaluation import evaluate_questions, format_report, load_questions, source_matches

    bench = load_bench(make_bench(tmp_path / "b"))
    ingest_bench(app, bench, "mine", tmp_path / "docs" / "sub")
    qfile = tmp_path / "q.jsonl"
    lines = [{"question": "How tall is the Eiffel Tower?", "source": "p1.txt", "answer": "330 metres"},
             {"question": "龙井茶产于哪里？", "source": ["p2.txt"], "answer": "杭州"},
             {"question": "How long do cats sleep?", "source": "p3.txt", "answer": "no such words"},
             {"question": "What is the GDP of Mongolia in 2020?", "source": None}]
    qfile.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    report = evaluate_questions(app, "mine", load_questions(qfile))
    assert report["answerable"] == 3 and report["off_topic"] == 1
    assert report["hit@1"] == 1.0 and report["mrr@10"] == 1.0
    assert report["answer_in_retrieved"] == pytest.approx(2 / 3, abs=1e-3)
    # Six one-sentence passages give no pseudo-question, so this KB is scored by the prior alone and the default
    # threshold does not refuse on it (retriever.py); refusal on a calibrated KB: tests/test_retrieval.py.
    assert report["refused_answerable"] == 0.0 and report["refused_off_topic"] == 0.0
    assert report["p50_ms"] > 0 and "calibration" in format_report(report)
    assert source_matches("sub/p1.txt", "p1.txt") and not source_matches("sub/p1.txt", "other/p1.txt")
