"""The knowledge-base store: records + FAISS index, incremental changes, atomic commits, locking, corruption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kb_qa.schema import Chunk
from kb_qa.store import EmbeddingMismatch, KnowledgeBase, KnowledgeBaseBusy, KnowledgeBaseNotFound, records
from kb_qa.store.terms import search_terms

WORKER = Path(__file__).with_name("store_worker.py")
DIM = 16


def unit(rng, n, dim=DIM):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_docs(kb, rng, names, n=5, model="m"):
    with kb.writer(embedding_model=model) as w:
        for name in names:
            chunks = [Chunk(text=f"{name} 段落 {k} paragraph {k}", source=name, ordinal=k) for k in range(n)]
            w.put_document(name, "sha-" + name, 100, None, chunks, unit(rng, n))
        w.commit()


def assert_consistent(kb: KnowledgeBase) -> None:
    """Vector count == chunk rows == keyword rows; every document's content and chunk count agree."""
    kb.close()
    conn = records.connect(kb.path / "kb.sqlite")  # the test inspects the tables themselves
    n_chunks = records.count_chunks(conn)
    assert conn.execute("SELECT COUNT(*) FROM chunk_terms").fetchone()[0] == n_chunks
    held = 0
    for first, n in conn.execute("SELECT first_id, n_chunks FROM contents"):  # a content's chunks: an id range
        assert conn.execute("SELECT COUNT(*) FROM chunks WHERE id BETWEEN ? AND ?", (first, first + n - 1)
                            ).fetchone()[0] == n
        held += n
    assert held == n_chunks  # no chunk outside every content's range
    assert conn.execute("SELECT COUNT(*) FROM documents WHERE sha256 NOT IN (SELECT sha256 FROM contents)"
                        ).fetchone()[0] == 0
    index = kb._current_index()
    assert (index.ntotal if index is not None else 0) == n_chunks
    if n_chunks:
        ids = {r[0] for r in conn.execute("SELECT id FROM chunks")}
        found = kb.dense_search(unit(np.random.default_rng(1), 1, kb.info().dimension)[0], n_chunks)
        assert {i for i, _ in found} == ids


def test_add_search_remove_keeps_other_results(tmp_path):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt", "c.txt"])
    queries = unit(rng, 4)
    before = kb.dense_search_batch(queries, 15)
    a_ids = kb.chunk_ids_for_sources(["a.txt"])
    with kb.writer() as w:
        assert w.remove_document("a.txt")
        w.commit()
    after = kb.dense_search_batch(queries, 15)
    for old, new in zip(before, after, strict=True):
        assert [hit for hit in old if hit[0] not in a_ids] == new  # same ids, same scores, same order
    assert kb.info().documents == 2 and kb.info().chunks == 10
    assert_consistent(kb)


def test_same_bytes_under_two_names_are_stored_once(tmp_path):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt"])
    with kb.writer(embedding_model="m") as w:
        w.put_document("copy/a.txt", "sha-a.txt", 100, None)  # no chunks needed: content known
        w.commit()
    assert kb.info().chunks == 5 and kb.info().documents == 2
    chunk = next(iter(kb.get_chunks(kb.chunk_ids_for_sources(["a.txt"])).values()))
    assert chunk.sources == ("a.txt", "copy/a.txt")
    with kb.writer() as w:
        w.remove_document("a.txt")
        w.commit()
    assert kb.info().chunks == 5  # still referenced by the copy
    with kb.writer() as w:
        w.remove_document("copy/a.txt")
        w.commit()
    assert kb.info().chunks == 0
    assert_consistent(kb)


def test_changed_content_replaces_old_chunks(tmp_path):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt"])
    old_ids = kb.chunk_ids_for_sources(["a.txt"])
    with kb.writer(embedding_model="m") as w:
        chunks = [Chunk(text="新的内容 new text", source="a.txt")]
        w.put_document("a.txt", "sha-new", 50, None, chunks, unit(rng, 1))
        w.commit()
    new_ids = kb.chunk_ids_for_sources(["a.txt"])
    assert len(new_ids) == 1 and not (new_ids & old_ids) and min(new_ids) > max(old_ids)  # ids never reused
    assert kb.keyword_search(search_terms("新的内容"), 5)[0][0] in new_ids
    assert_consistent(kb)


def test_uncommitted_changes_are_discarded(tmp_path):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt"])
    with pytest.raises(RuntimeError):
        with kb.writer(embedding_model="m") as w:
            w.remove_document("a.txt")
            raise RuntimeError("crash before commit")
    assert kb.info().documents == 1
    assert_consistent(kb)


def test_embedding_model_mismatch_is_refused_with_the_fix(tmp_path):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt"])
    with pytest.raises(EmbeddingMismatch, match="--rebuild"):
        kb.check_embedding("other-model")
    with pytest.raises(EmbeddingMismatch, match="16 dims"):
        add_docs(kb, rng, ["b.txt"], model="other-model")
    with kb.writer(embedding_model="other-model") as w:  # a rebuild may switch models
        w.clear()
        chunks = [Chunk(text="x", source="b.txt")]
        w.put_document("b.txt", "sha-b", 1, None, chunks, unit(rng, 1, dim=8))
        w.commit()
    assert kb.info().embedding_model == "other-model" and kb.info().dimension == 8
    assert_consistent(kb)


@pytest.mark.parametrize("damage", ["flip-bytes", "truncate", "delete"])
def test_damaged_index_is_detected_and_searches_stay_exact_until_rebuilt(tmp_path, damage, caplog):
    """The approximate index file is derived: damaged, it is never searched (exact search over the stored vectors
    instead, same results), the doctor reports it and compaction rebuilds it from the records."""
    from kb_qa.store import doctor

    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt"])
    queries = unit(rng, 3)
    expected = kb.dense_search_batch(queries, 10)  # exact: no index file yet
    assert not list(kb.path.glob("index-*.faiss"))
    kb.compact(ann_min_chunks=1)
    assert kb.dense_search_batch(queries, 10) == expected  # re-scored exactly: same ids, same scores
    path = next(kb.path.glob("index-*.faiss"))
    if damage == "flip-bytes":
        data = bytearray(path.read_bytes())
        data[-40:-20] = bytes(20)  # zero some bytes: still a readable file, wrong numbers
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.unlink()
    fresh = KnowledgeBase.open(tmp_path, "kb")
    assert fresh.dense_search_batch(queries, 10) == expected
    assert "searching" in caplog.text and "exactly" in caplog.text
    assert not doctor.check(fresh).ok
    fresh.compact(ann_min_chunks=1)  # rebuilt from the records
    conn = records.connect(fresh.path / "kb.sqlite")
    assert records.get_meta(conn, "ann_sha256") and next(fresh.path.glob("index-*.faiss")).is_file()
    assert doctor.check(fresh).ok and fresh.dense_search_batch(queries, 10) == expected
    assert_consistent(fresh)


def test_second_writer_gets_busy_error(tmp_path):
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[1]);"
         "from kb_qa.store import KnowledgeBase;"
         "kb = KnowledgeBase.open(sys.argv[2], 'kb');"
         "cm = kb.writer(); cm.__enter__(); print('locked', flush=True); time.sleep(30)",
         str(Path(__file__).resolve().parents[1]), str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(KnowledgeBaseBusy, match="busy"):
            with kb.writer(lock_timeout_s=0.5):
                pass
        assert time.monotonic() - started >= 0.4  # it waited before giving up
    finally:
        holder.kill()
        holder.wait()
    with kb.writer(lock_timeout_s=5):  # the lock dies with its holder
        pass


def test_missing_kb_and_bad_names(tmp_path):
    with pytest.raises(KnowledgeBaseNotFound):
        KnowledgeBase.open(tmp_path, "nope")
    from kb_qa.naming import InvalidName

    for bad in ["..", "../x", "a/b", "a\\b", "/abs", ".hidden", "", "a\x00b", "x" * 65, "a..b", " a"]:
        with pytest.raises(InvalidName):
            KnowledgeBase.open(tmp_path, bad, create=True)
    assert [p.name for p in tmp_path.iterdir()] == []
    KnowledgeBase.open(tmp_path, "中文知识库_v1.2", create=True)


def test_delete_kb(tmp_path):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt"])
    kb.close()
    KnowledgeBase.delete(tmp_path, "kb")
    assert KnowledgeBase.list_names(tmp_path) == [] and not (tmp_path / "kb").exists()


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
def test_crash_at_each_commit_step_leaves_a_consistent_version(tmp_path, point):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt"])
    kb.close()
    env = dict(os.environ, KB_QA_CRASH_AT=point)
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path), "kb", "1", "7"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 99, proc.stderr
    kb = KnowledgeBase.open(tmp_path, "kb")
    docs = {d.source for d in kb.documents()}
    if point == "after-commit":
        assert len(docs) == 5  # the new version
    else:
        assert docs == {"a.txt", "b.txt"}  # the previous version
    assert_consistent(kb)
    add_docs(kb, rng, ["c.txt"])  # and the next writer carries on
    assert_consistent(kb)
    assert not list(kb.path.glob("*.faiss*"))  # a commit writes no index file


@pytest.mark.slow
def test_kill_during_commits_at_many_points(tmp_path):
    """SIGKILL a writer at many moments; every reopen is consistent and the next writer carries on."""
    rng = np.random.default_rng(42)
    previous_docs = 0
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), "kb", "1000", str(attempt)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.readline()  # wait until its first commit is through: imports take a while
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kb = KnowledgeBase.open(tmp_path, "kb")
        assert_consistent(kb)
        docs = kb.info().documents
        assert docs >= min(previous_docs, 6)  # committed work is never lost (removals keep it near 7)
        previous_docs = docs
        kb.close()


def test_recreated_kb_reports_its_own_chunk_count(tmp_path):
    """A KB deleted and re-created under the same name is a new KB: N (chunks, the IDF's corpus size) must be its
    own, not a count cached for the old one (the old cache was keyed by folder and index generation)."""
    from kb_qa.retrieval.keyword import TermStats

    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt", "c.txt"])  # 15 chunks, generation 1
    assert TermStats(kb, ["paragraph"]).n_docs == 15
    kb.close()
    KnowledgeBase.delete(tmp_path, "kb")
    again = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(again, rng, ["z.txt"])  # 5 chunks, generation 1 again
    stats = TermStats(again, ["paragraph"])
    assert stats.n_docs == 5 and stats.df == {"paragraph": 5}
    assert again.chunk_count() == 5 == again.info().chunks


def test_chunk_count_follows_commits_and_rebuilds(tmp_path):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt"])
    assert kb.chunk_count() == 10
    with kb.writer() as w:
        w.remove_document("a.txt")
        w.commit()
    assert kb.chunk_count() == 5
    with kb.writer(embedding_model="m") as w:
        w.clear()
        w.commit()
    assert kb.chunk_count() == 0 and kb.info().chunks == 0


def test_batch_searches_equal_single_ones_and_filters_are_exact(tmp_path):
    rng = np.random.default_rng(3)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, [f"d{i}.txt" for i in range(8)])
    queries = unit(rng, 3)
    batch = kb.dense_search_batch(queries, 7)
    assert batch == [kb.dense_search(q, 7) for q in queries]
    assert all(len(hits) == 7 for hits in batch)
    allowed = kb.chunk_ids_for_sources(["d2.txt", "d5.txt"])  # 10 ids
    full = kb.dense_search(queries[0], 40)
    filtered = kb.dense_search(queries[0], 4, allowed)
    assert filtered == [hit for hit in full if hit[0] in allowed][:4]  # exact: what a full ranking would keep
    assert kb.dense_search(queries[0], 4, set()) == []

    term_lists = [search_terms("d2.txt paragraph"), search_terms("段落 3"), search_terms("???")]
    kw = kb.keyword_search_batch(term_lists, 5)
    assert kw == [kb.keyword_search(t, 5) for t in term_lists]
    assert kw[2] == [] and len(kw[0]) == 5 and all(s > 0 for _, s in kw[0])
    assert kw[0][0][0] in kb.chunk_ids_for_sources(["d2.txt"])  # the rare term wins
    only = kb.keyword_search(search_terms("paragraph"), 50, allowed)
    assert {cid for cid, _ in only} == allowed
    with pytest.raises(TypeError):
        kb.keyword_search("paragraph", 5)  # text is the analyser's input, not the store's


def test_store_reads_used_by_retrieval(tmp_path):
    rng = np.random.default_rng(4)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt"], n=3)
    ids = sorted(kb.chunk_ids_for_sources(["a.txt"]))
    vectors = kb.chunk_vectors(ids + [10**9])
    assert sorted(vectors) == ids and all(v.shape == (DIM,) and abs(np.linalg.norm(v) - 1) < 1e-5
                                          for v in vectors.values())
    hit = kb.dense_search(vectors[ids[0]], 1)[0]
    assert hit[0] == ids[0] and hit[1] == pytest.approx(1.0, abs=1e-5)
    terms = kb.chunk_terms(ids)
    assert terms[ids[0]] == "a.txt 段落 0 paragraph 0".replace("a.txt", "a txt")
    assert kb.document_frequencies(["paragraph", "a", "nowhere"]) == {"paragraph": 6, "a": 3, "nowhere": 0}


def test_store_imports_nothing_above_it():
    """The store is the lowest layer: no module under kb_qa/store imports retrieval, qa, llm, app or a front end."""
    import ast

    banned = ("kb_qa.retrieval", "kb_qa.qa", "kb_qa.llm", "kb_qa.app", "kb_qa.api", "kb_qa.cli", "kb_qa.ingest")
    folder = Path(__file__).resolve().parents[1] / "kb_qa" / "store"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(banned), f"{path.name} imports {name}"
