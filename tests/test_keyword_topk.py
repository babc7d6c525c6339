"""The keyword top k at scale (issue 14, store/keyword_topk.py): exact below `keyword_approximate_from`, never the
O(KB) plain query past it, exact BM25 scores either way; document frequencies cached per committed state; the
bench's tie-aware recall."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kb_qa.schema import Chunk
from kb_qa.store import KnowledgeBase, keyword_topk, records
from kb_qa.store.terms import search_terms
from tests.test_store import DIM, unit

REPO = Path(__file__).resolve().parents[1]


def bench_scale():
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "bench" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(kb, texts: list[str], rng, prefix="d"):
    with kb.writer(embedding_model="m") as w:
        for n, text in enumerate(texts):
            name = f"{prefix}{n}.txt"
            w.put_document(name, f"sha-{name}", 1, None, [Chunk(text=text, source=name)], unit(rng, 1))
        w.commit()


def exact_scores(kb, terms, ids):
    """FTS5's own BM25 of each of `ids` for the OR of `terms` (the plain query's score)."""
    conn = records.connect(kb.path / "kb.sqlite")
    try:
        return dict(records.keyword_search(conn, terms, len(ids), ids))
    finally:
        conn.close()


def plain_top(kb, terms, k):
    conn = records.connect(kb.path / "kb.sqlite")
    try:
        return keyword_topk.plain(conn, terms, k)
    finally:
        conn.close()


@pytest.fixture
def copies_kb(tmp_path, monkeypatch):
    """30 copies of a passage with the rare term twice (best R) and no common term, 5 of one with it once and the
    common term thrice (lower R, higher score): MaxScore cannot separate 30 chunks tied on R."""
    monkeypatch.setattr(keyword_topk, "RARE_POSTINGS", 36)  # "zeta" (35 chunks) rare, "common" (55) common
    monkeypatch.setattr(keyword_topk, "MIN_CANDIDATES", 5)
    monkeypatch.setattr(keyword_topk, "APPROXIMATE_CANDIDATES", 12)
    rng = np.random.default_rng(3)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    texts = [f"zeta zeta copy{n}" for n in range(30)] + [f"zeta common common common other{n}" for n in range(5)]
    texts += [f"common filler{n}" for n in range(50)] + [f"filler{n} plain words" for n in range(80)]
    write(kb, texts, rng)
    return kb


def record_plain(monkeypatch):
    calls: list[list[str]] = []
    plain = keyword_topk.plain
    monkeypatch.setattr(keyword_topk, "plain",
                        lambda conn, terms, k: calls.append(list(terms)) or plain(conn, terms, k))
    return calls


def test_below_the_size_ties_end_in_the_exact_plain_query(copies_kb, monkeypatch):
    monkeypatch.setattr(keyword_topk, "MAX_CANDIDATES", 20)  # fewer than the 30 copies: MaxScore gives up
    terms = search_terms("zeta common")
    truth = plain_top(copies_kb, terms, 5)
    calls = record_plain(monkeypatch)
    copies_kb.keyword_approximate_from = 10**6  # more chunks than the KB has: exact
    got = copies_kb.keyword_search(terms, 5)
    assert [s for _, s in got] == pytest.approx([s for _, s in truth], rel=1e-9)
    assert sorted(terms) in [sorted(c) for c in calls]  # the fallback over every term ran


def test_past_the_size_ties_are_answered_from_the_candidates_without_the_plain_query(copies_kb, monkeypatch):
    terms = search_terms("zeta common")
    truth = plain_top(copies_kb, terms, 5)
    ids = {i for i, _ in truth}
    assert all("common" in copies_kb.get_chunks([i])[i].text for i in ids)  # the 5 "other" chunks win
    calls = record_plain(monkeypatch)
    copies_kb.keyword_approximate_from = 100
    got = copies_kb.keyword_search(terms, 5)
    assert sorted(terms) not in [sorted(c) for c in calls]  # no O(KB) query
    assert calls == [["zeta"]]  # only the rare term's candidates were ranked by FTS5
    exact = exact_scores(copies_kb, terms, [i for i, _ in got])
    assert [s for _, s in got] == pytest.approx([exact[i] for i, _ in got], rel=1e-9)  # exact scores
    # the first 12 rows by R are all copies: only spending the budget on distinct R finds the better chunks
    assert {i for i, _ in got} == ids
    assert bench_scale().tie_aware_recall([exact[i] for i, _ in got], [s for _, s in truth]) == 1.0


def common_terms_kb(tmp_path, monkeypatch) -> KnowledgeBase:
    """40 chunks where "common" and "part" count as common terms (RARE_POSTINGS lowered), a rare word, a unique
    id and "calderón" (a term the tokenizer folds: always left to FTS5) each."""
    monkeypatch.setattr(keyword_topk, "RARE_POSTINGS", 30)
    monkeypatch.setattr(keyword_topk, "MIN_CANDIDATES", 5)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    write(kb, [" ".join(["common"] * (1 + d % 3) + ["part"] * (d % 2) + [words[d % 8]] * (1 + d % 4)
                        + [f"id{d}", "common", "calderón"]) for d in range(40)], np.random.default_rng(6))
    return kb


def test_below_the_size_the_top_k_equals_the_plain_query_when_common_terms_are_skipped(tmp_path, monkeypatch):
    kb = common_terms_kb(tmp_path, monkeypatch)
    split = []  # the common terms' part added for the candidates: the MaxScore path, not the plain query
    add_common = keyword_topk._add_common
    monkeypatch.setattr(keyword_topk, "_add_common", lambda *a, **k: split.append(1) or add_common(*a, **k))
    for query in ["common alpha", "common part beta id3", "gamma common", "common part", "calderón common delta",
                  "id7 common"]:
        terms = list(dict.fromkeys(search_terms(query)))
        fast = kb.keyword_search(terms, 5)
        assert [s for _, s in fast] == pytest.approx([s for _, s in plain_top(kb, terms, 5)], rel=1e-9), query
    assert split, "no query took the MaxScore path"


def test_past_the_size_a_provable_top_k_is_the_exact_one(tmp_path, monkeypatch):
    kb = common_terms_kb(tmp_path, monkeypatch)
    kb.keyword_approximate_from = 1
    approximated: list[int] = []
    spread = keyword_topk._spread
    monkeypatch.setattr(keyword_topk, "_spread", lambda *a: approximated.append(1) or spread(*a))
    proved = 0
    for query in ["common alpha", "common part beta id3", "gamma common", "id7 common", "id12 part"]:
        terms = list(dict.fromkeys(search_terms(query)))
        before = len(approximated)
        fast = kb.keyword_search(terms, 3)
        if len(approximated) == before:  # the MaxScore bound proved it: the plain query's ranking
            proved += 1
            truth = plain_top(kb, terms, 3)
            assert [s for _, s in fast] == pytest.approx([s for _, s in truth], rel=1e-9), query
    assert proved >= 3


def test_past_the_size_every_term_frequent_takes_the_conjunctive_candidates(tmp_path, monkeypatch):
    monkeypatch.setattr(keyword_topk, "RARE_POSTINGS", 5)
    monkeypatch.setattr(keyword_topk, "APPROXIMATE_RARE_POSTINGS", 10)  # every term here has more postings
    rng = np.random.default_rng(8)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    texts = [f"river bank n{n}" for n in range(20)] + [f"river n{n} far" for n in range(20)]
    texts += [f"bank m{n} near" for n in range(20)] + [f"other m{n} words" for n in range(60)]
    texts += ["river bank river bank best"]  # holds both, more often: the exact best
    write(kb, texts, rng)
    kb.keyword_approximate_from = 10
    calls = record_plain(monkeypatch)
    terms = search_terms("river bank")
    got = kb.keyword_search(terms, 5)
    assert calls == []  # FTS5 only found candidates (no ranking query at all)
    truth = plain_top(kb, terms, 5)
    exact = exact_scores(kb, terms, [i for i, _ in got])
    assert [s for _, s in got] == pytest.approx([exact[i] for i, _ in got], rel=1e-9)
    assert got[0][0] == truth[0][0] and len(got) == 5
    assert bench_scale().tie_aware_recall([exact[i] for i, _ in got], [s for _, s in truth]) == 1.0
    # a query whose terms never meet in one chunk still finds candidates (all but one term, then the rarest)
    got = kb.keyword_search(search_terms("far near"), 5)
    truth = plain_top(kb, search_terms("far near"), 5)
    assert len(got) == 5 and {round(s, 9) for _, s in got} == {round(s, 9) for _, s in truth}


def test_common_term_counts_are_unicode61_tokens():
    """_token_count against FTS5's own tokenizer (an in-memory contentless table and its instance vocabulary)."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize = 'unicode61 remove_diacritics 2')")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    rows = ["\ue002町子 町子 a町子 町子b 町子", "町子町子 町子,町子 _町子_", "1974\ue0002 1974 2 x1974",
            "co-op op coop", "ab\u0301 ab a\u0301b", "café naïve cafe", "©x x© x²", "हिन्दी x"]
    conn.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", list(enumerate(rows, 1)))
    for rowid, text in enumerate(rows, 1):
        for term in ["町子", "1974", "2", "op", "co", "ab", "\ue002町子", "cafe", "naive", "x"]:
            truth = conn.execute("SELECT count(*) FROM v WHERE term = ? AND doc = ?", (term, rowid)).fetchone()[0]
            assert keyword_topk._token_count(keyword_topk._as_indexed(text), term) == truth, (text, term)


def test_marked_terms_do_not_count_as_the_plain_term(tmp_path, monkeypatch):
    """"长谷川町子" is indexed as "长 谷川 町子 \ue002川町 \ue002町子": the word "町子" once, not twice (it was also
    counted inside the analyser's marked n-gram, so MaxScore's "proved" top k had wrong scores)."""
    monkeypatch.setattr(keyword_topk, "RARE_POSTINGS", 3)
    monkeypatch.setattr(keyword_topk, "MIN_CANDIDATES", 2)
    rng = np.random.default_rng(9)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    write(kb, [f"rare{n} 长谷川町子" for n in range(3)] + [f"町子 w{n}" for n in range(8)]
          + [f"x{n} y" for n in range(20)], rng)
    split = []
    add_common = keyword_topk._add_common
    monkeypatch.setattr(keyword_topk, "_add_common", lambda *a: split.append(1) or add_common(*a))
    calls = record_plain(monkeypatch)
    terms = ["rare1", "町子"]
    got = kb.keyword_search(terms, 1)
    assert split and calls == [["rare1"]]  # MaxScore proved it: the score is the Python one
    truth = plain_top(kb, terms, 1)
    assert [(i, round(s, 9)) for i, s in got] == [(i, round(s, 9)) for i, s in truth]


def test_document_frequencies_are_cached_until_any_commit(tmp_path, monkeypatch):
    rng = np.random.default_rng(10)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    write(kb, ["apple pie", "apple tart"], rng)
    counted: list[list[str]] = []
    count = records.document_frequencies
    monkeypatch.setattr(records, "document_frequencies", lambda conn, terms: counted.append(list(terms))
                        or count(conn, terms))
    assert kb.document_frequencies(["apple", "pie"]) == {"apple": 2, "pie": 1}
    assert kb.document_frequencies(["apple"]) == {"apple": 2} and len(counted) == 1  # from the cache
    kb.keyword_search(["apple", "pie"], 2)
    assert len(counted) == 1
    # another process commits: the next look-up counts again and sees it
    code = ("import sys\nsys.path.insert(0, sys.argv[1])\nimport numpy as np\nfrom kb_qa.schema import Chunk\n"
            "from kb_qa.store import KnowledgeBase\nkb = KnowledgeBase.open(sys.argv[2], 'kb')\n"
            "with kb.writer(embedding_model='m') as w:\n"
            f"    v = np.ones((1, {DIM}), np.float32) / {DIM} ** 0.5\n"
            "    w.put_document('x.txt', 'sha-x', 1, None, [Chunk(text='apple crumble', source='x.txt')], v)\n"
            "    w.commit()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO), str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert kb.document_frequencies(["apple", "crumble"]) == {"apple": 3, "crumble": 1} and len(counted) == 2
    assert kb.document_frequencies(["apple"]) == {"apple": 3} and len(counted) == 2


def test_term_frequencies_follow_the_connections_own_changes(tmp_path):
    conn = records.connect(tmp_path / "db.sqlite")
    records.init_schema(conn)
    cache = records.TermFrequencies()
    assert cache.lookup(conn, ["pear"]) == {}
    conn.execute("INSERT INTO chunk_terms(rowid, terms) VALUES (1, 'pear')")  # this connection's own change
    assert cache.lookup(conn, ["pear"]) == {"pear": 1}
    other = records.connect(tmp_path / "db.sqlite")
    other.execute("INSERT INTO chunk_terms(rowid, terms) VALUES (2, 'pear')")  # another connection's commit
    assert cache.lookup(conn, ["pear"]) == {"pear": 2}


def test_tie_aware_recall_counts_any_of_the_tied_copies():
    recall = bench_scale().tie_aware_recall
    truth = [9.0, 7.0, 7.0]  # the 2nd and 3rd best are two of many tied copies
    assert recall([9.0, 7.0, 7.0 - 1e-9], truth) == 1.0  # other copies than the plain query's: all right
    assert recall([9.0, 7.0, 6.5], truth) == pytest.approx(2 / 3)  # a worse chunk is not
    assert recall([7.0, 7.0], truth) == pytest.approx(2 / 3)  # fewer returned: the missing ones count as wrong
    assert recall([], []) == 1.0 and recall([1.0], []) == 0.0
