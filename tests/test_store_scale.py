"""The local store at scale (issue 14): commits write no index file, readers advance by new rows and tombstones,
compaction builds the approximate index (recall against exact), prunes tombstones, and survives a kill."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kb_qa.schema import Chunk
from kb_qa.store import KnowledgeBase, doctor, records
from kb_qa.store.errors import AnalyserMismatch
from kb_qa.store.terms import fts_document, search_terms
from tests.test_store import add_docs, assert_consistent, unit

REPO = Path(__file__).resolve().parents[1]


def lowrank(rng, n, dim=64, rank=8):
    """Unit vectors of low intrinsic dimension, like text embeddings (isotropic random ones defeat any ANN)."""
    basis = np.random.default_rng(99).standard_normal((rank, dim)).astype(np.float32)
    v = rng.standard_normal((n, rank)).astype(np.float32) @ basis
    v += 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(kb, rng, docs, per_doc, dim=64):
    with kb.writer(embedding_model="m") as w:
        for d in range(docs):
            name = f"big{d}.txt"
            chunks = [Chunk(text=f"{name} part {j} word{j % 7}", source=name, ordinal=j) for j in range(per_doc)]
            w.put_document(name, f"sha-{name}", 10, None, chunks, lowrank(rng, per_doc, dim))
        w.commit()


def exact_top(kb, query, k):
    ids = kb.chunk_ids()
    vectors = kb.chunk_vectors(ids)
    scores = np.array([float(np.dot(vectors[i].astype(np.float64), query.astype(np.float64))) for i in ids])
    return [ids[j] for j in np.argsort(-scores, kind="stable")[:k]]


def test_a_commit_writes_no_index_file_and_a_reader_advances_without_reloading(tmp_path):
    rng = np.random.default_rng(0)
    reader = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(reader, rng, ["a.txt", "b.txt", "c.txt"])
    query = unit(rng, 1)[0]
    reader.dense_search(query, 5)
    view = reader._current_index()
    writer_side = KnowledgeBase.open(tmp_path, "kb")  # another process would do the same
    gone = writer_side.chunk_ids_for_sources(["b.txt"])
    with writer_side.writer(embedding_model="m") as w:
        w.remove_document("b.txt")
        w.commit()
    add_docs(writer_side, rng, ["d.txt"])
    assert not [p.name for p in reader.path.iterdir() if "faiss" in p.name]
    hits = reader.dense_search(query, 20)
    assert reader._current_index() is view and view.ntotal == 15  # advanced in place, not reloaded
    assert not {i for i, _ in hits} & gone
    assert hits == KnowledgeBase.open(tmp_path, "kb").dense_search(query, 20)  # == a fresh reader's full load
    conn = records.connect(reader.path / "kb.sqlite")
    assert {r[0] for r in conn.execute("SELECT chunk_id FROM tombstones")} == gone
    assert_consistent(reader)


def test_compaction_prunes_tombstones_and_old_readers_reload(tmp_path):
    rng = np.random.default_rng(1)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt"])
    old_reader = KnowledgeBase.open(tmp_path, "kb")
    old_reader.dense_search(unit(rng, 1)[0], 3)
    with kb.writer() as w:
        w.remove_document("a.txt")
        w.commit()
    done = kb.compact(ann_min_chunks=1000)  # below: no approximate index, tombstones pruned
    assert any("pruned 5 tombstones" in d for d in done)
    conn = records.connect(kb.path / "kb.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0] == 0
    hits = old_reader.dense_search(unit(rng, 1)[0], 10)  # its tombstones are gone: it must reload, not miss them
    assert {i for i, _ in hits} == kb.chunk_ids_for_sources(["b.txt"])
    assert_consistent(old_reader)


def test_approximate_index_recall_and_changes_on_top_of_it(tmp_path):
    rng = np.random.default_rng(2)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    fill(kb, rng, docs=20, per_doc=150)  # 3000 chunks
    done = kb.compact(ann_min_chunks=1000)
    assert any("built the approximate index of 3000 chunks" in d for d in done)
    queries = lowrank(rng, 40)
    recall = np.mean([len({i for i, _ in kb.dense_search(q, 10)} & set(exact_top(kb, q, 10))) / 10
                      for q in queries])
    assert recall >= 0.95, recall
    # changes after compaction: removals are tombstones over the index, additions an exact delta
    removed = kb.chunk_ids_for_sources(["big3.txt"])
    with kb.writer(embedding_model="m") as w:
        w.remove_document("big3.txt")
        chunks = [Chunk(text="fresh", source="new.txt", ordinal=0)]
        w.put_document("new.txt", "sha-new", 5, None, chunks, queries[:1])
        w.commit()
    hits = kb.dense_search(queries[0], 10)
    assert hits[0][0] == max(kb.chunk_ids()) and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    for q in queries[:10]:
        assert not {i for i, _ in kb.dense_search(q, 50)} & removed
    allowed = kb.chunk_ids_for_sources(["big5.txt", "new.txt"])
    filtered = kb.dense_search(queries[1], 7, allowed)
    assert [i for i, _ in filtered] == [i for i in exact_top(kb, queries[1], 3001) if i in allowed][:7]
    assert_consistent(kb)
    assert doctor.check(kb).ok
    fresh = KnowledgeBase.open(tmp_path, "kb")
    assert fresh.dense_search(queries[2], 10) == kb.dense_search(queries[2], 10)


def test_compaction_below_the_threshold_drops_the_index(tmp_path):
    rng = np.random.default_rng(3)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    fill(kb, rng, docs=4, per_doc=50)
    kb.compact(ann_min_chunks=100)
    assert len(list(kb.path.glob("index-*.faiss"))) == 1
    with kb.writer() as w:
        for d in range(3):
            w.remove_document(f"big{d}.txt")
        w.commit()
    done = kb.compact(ann_min_chunks=100)
    assert any("dropped the approximate index" in d for d in done)
    assert not list(kb.path.glob("index-*.faiss")) and doctor.check(kb).ok
    assert_consistent(kb)


def test_a_rebuild_drops_the_index_and_every_reader_reloads(tmp_path):
    rng = np.random.default_rng(4)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    fill(kb, rng, docs=2, per_doc=30)
    kb.compact(ann_min_chunks=10)
    reader = KnowledgeBase.open(tmp_path, "kb")
    reader.dense_search(lowrank(rng, 1)[0], 3)
    with kb.writer(embedding_model="m") as w:  # one generation: the old chunks and index go together
        w.clear()
        w.put_document("x.txt", "sha-x", 1, None, [Chunk(text="x", source="x.txt")], lowrank(rng, 1))
        w.commit()
    assert not list(kb.path.glob("index-*.faiss"))
    assert {i for i, _ in reader.dense_search(lowrank(rng, 1)[0], 10)} == set(kb.chunk_ids())
    assert_consistent(reader)


@pytest.mark.parametrize("point", ["compact-before-index-write", "compact-after-index-write",
                                   "compact-after-commit"])
def test_kill_during_compaction_leaves_the_previous_or_the_new_index(tmp_path, point):
    rng = np.random.default_rng(5)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    fill(kb, rng, docs=3, per_doc=40)
    query = lowrank(rng, 1)[0]
    expected = kb.dense_search(query, 10)
    kb.close()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from kb_qa.store import KnowledgeBase; "
            "KnowledgeBase.open(sys.argv[2], 'kb').compact(ann_min_chunks=10)")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO), str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, KB_QA_CRASH_AT=point))
    assert proc.returncode == 99, proc.stderr
    kb = KnowledgeBase.open(tmp_path, "kb")
    conn = records.connect(kb.path / "kb.sqlite")
    recorded = records.get_meta(conn, "ann_generation")
    assert (recorded is not None) == (point == "compact-after-commit")  # the new index, or none (the previous)
    assert kb.dense_search(query, 10) == expected
    assert_consistent(kb)
    with kb.writer(embedding_model="m") as w:  # the next writer carries on, and removes any orphan file
        w.put_document("after.txt", "sha-after", 1, None, [Chunk(text="after", source="after.txt")], lowrank(rng, 1))
        w.commit()
    assert doctor.check(kb).ok
    assert_consistent(kb)


def test_the_keyword_index_keeps_no_second_copy_of_the_terms_and_removals_leave_it_whole(tmp_path):
    rng = np.random.default_rng(7)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt", "c.txt"])
    conn = records.connect(kb.path / "kb.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'chunk_terms_content'").fetchone()[0] == 0
    ids = sorted(kb.chunk_ids_for_sources(["b.txt"]))
    texts = {i: c.text for i, c in kb.get_chunks(ids).items()}
    assert kb.chunk_terms(ids) == {i: fts_document(texts[i]) for i in ids}  # decoded exactly as cut at ingest
    with kb.writer() as w:
        w.remove_document("a.txt")
        w.commit()
    conn.execute("INSERT INTO chunk_terms(chunk_terms) VALUES ('integrity-check')")  # raises on a damaged index
    assert not {i for i, _ in kb.keyword_search(search_terms("a.txt paragraph"), 20)} & set(range(1, 6))
    assert_consistent(kb)


def make_format_2(conn, *, keep_terms: bool = True) -> None:
    """Turn a KB of store format 3 into what format 2 wrote (`keep_terms` False: format 1's chunks table): each
    chunk row carries its content's sha256 (indexed), contents have no first_id."""
    terms_col, terms_sel = (", terms BLOB", ", c.terms") if keep_terms else ("", "")
    conn.execute("PRAGMA foreign_keys=OFF")  # documents refer to contents while it is swapped
    conn.executescript(f"""
        BEGIN;
        CREATE TABLE contents_v2(sha256 TEXT PRIMARY KEY, n_chunks INTEGER NOT NULL);
        INSERT INTO contents_v2 SELECT sha256, n_chunks FROM contents;
        CREATE TABLE chunks_v2(id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL REFERENCES contents(sha256),
            ordinal INTEGER NOT NULL, text TEXT NOT NULL, page INTEGER, heading TEXT, start INTEGER NOT NULL,
            end INTEGER NOT NULL, vector BLOB NOT NULL{terms_col});
        INSERT INTO chunks_v2 SELECT c.id, k.sha256, c.ordinal, c.text, c.page, c.heading, c.start, c.end,
            c.vector{terms_sel} FROM chunks c
            JOIN contents k ON c.id BETWEEN k.first_id AND k.first_id + k.n_chunks - 1;
        DROP TABLE chunks;
        ALTER TABLE chunks_v2 RENAME TO chunks;
        CREATE INDEX chunks_sha ON chunks(sha256);
        DROP TABLE contents;
        ALTER TABLE contents_v2 RENAME TO contents;
        COMMIT;""")
    conn.execute("PRAGMA foreign_keys=ON")
    records.set_meta(conn, "schema_version", "2")


def test_a_kb_of_store_format_2_reads_as_it_is_and_its_first_writer_upgrades_it_to_ranges(tmp_path):
    rng = np.random.default_rng(9)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt", "c.txt"])
    query = unit(rng, 1)[0]
    dense = kb.dense_search(query, 6)
    keyword = kb.keyword_search(search_terms("b.txt paragraph"), 4)
    b_ids = kb.chunk_ids_for_sources(["b.txt"])
    chunks = kb.get_chunks(b_ids)
    kb.close()
    conn = records.connect(kb.path / "kb.sqlite")
    make_format_2(conn)
    assert not records.has_content_ranges(conn) and records.has_chunk_sha_column(conn)
    conn.close()
    old = KnowledgeBase.open(tmp_path, "kb")  # a reader before any writer of this version: the sha256 join
    assert old.dense_search(query, 6) == dense and old.keyword_search(search_terms("b.txt paragraph"), 4) == keyword
    assert old.chunk_ids_for_sources(["b.txt"]) == b_ids and old.get_chunks(b_ids) == chunks
    assert doctor.check(old).ok
    with old.writer(embedding_model="m") as w:  # the first writer upgrades it, then writes as format 3
        w.remove_document("a.txt")
        w.put_document("d.txt", "sha-d.txt", 100, None,
                       [Chunk(text=f"d.txt 段落 {k}", source="d.txt", ordinal=k) for k in range(4)], unit(rng, 4))
        w.commit()
    conn = records.connect(kb.path / "kb.sqlite")
    assert records.has_content_ranges(conn) and records.get_meta(conn, "schema_version") == "3"
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'chunks_sha'").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM chunks WHERE sha256 = 'sha-d.txt'").fetchone()[0] == 4  # still filled
    conn.close()
    assert old.get_chunks(b_ids) == chunks and old.chunk_ids_for_sources(["b.txt"]) == b_ids
    assert {c.sources for c in old.get_chunks(old.chunk_ids_for_sources(["d.txt"])).values()} == {("d.txt",)}
    assert not old.chunk_ids_for_sources(["a.txt"])
    assert doctor.check(old).ok
    assert_consistent(old)


def test_a_kill_during_the_format_2_upgrade_leaves_format_2_and_the_next_writer_upgrades_it(tmp_path):
    rng = np.random.default_rng(11)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt"])
    query = unit(rng, 1)[0]
    expected = kb.dense_search(query, 10)
    kb.close()
    conn = records.connect(kb.path / "kb.sqlite")
    make_format_2(conn)
    conn.close()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from kb_qa.store import KnowledgeBase; "
            "w = KnowledgeBase.open(sys.argv[2], 'kb').writer(embedding_model='m'); w.__enter__()")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO), str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, KB_QA_CRASH_AT="upgrade-before-commit"))
    assert proc.returncode == 99, proc.stderr
    conn = records.connect(kb.path / "kb.sqlite")
    assert not records.has_content_ranges(conn) and records.get_meta(conn, "schema_version") == "2"
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'chunks_sha'").fetchone()[0] == 1
    conn.close()
    kb = KnowledgeBase.open(tmp_path, "kb")
    assert kb.dense_search(query, 10) == expected and doctor.check(kb).ok
    with kb.writer(embedding_model="m") as w:
        w.remove_document("a.txt")
        w.commit()
    conn = records.connect(kb.path / "kb.sqlite")
    assert records.has_content_ranges(conn) and records.get_meta(conn, "schema_version") == "3"
    conn.close()
    assert doctor.check(kb).ok
    assert_consistent(kb)


def format_2_kb_not_in_id_ranges(tmp_path):
    """A closed format-2 KB of a.txt and b.txt with one chunk of each swapped to the other content: the counts are
    right, the id ranges are not (a KB kb_qa never writes). Returns (kb, a's chunk ids, b's chunk ids)."""
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, np.random.default_rng(12), ["a.txt", "b.txt"])
    a_ids, b_ids = sorted(kb.chunk_ids_for_sources(["a.txt"])), sorted(kb.chunk_ids_for_sources(["b.txt"]))
    kb.close()
    conn = records.connect(kb.path / "kb.sqlite")
    make_format_2(conn)
    conn.execute("UPDATE chunks SET sha256 = CASE id WHEN ? THEN 'sha-b.txt' ELSE 'sha-a.txt' END WHERE id IN (?, ?)",
                 (a_ids[1], a_ids[1], b_ids[1]))
    conn.close()
    return kb, a_ids, b_ids


def test_a_format_2_kb_whose_contents_are_not_id_ranges_keeps_format_2_and_works(tmp_path):
    kb, a_ids, b_ids = format_2_kb_not_in_id_ranges(tmp_path)
    with kb.writer(embedding_model="m") as w:
        w.remove_document("a.txt")
        w.commit()
    conn = records.connect(kb.path / "kb.sqlite")
    assert not records.has_content_ranges(conn) and records.get_meta(conn, "schema_version") == "2"
    conn.close()
    assert kb.chunk_ids_for_sources(["b.txt"]) == set(b_ids) - {b_ids[1]} | {a_ids[1]}
    assert doctor.check(kb).ok
    assert kb.info().chunks == 5


def test_a_refused_upgrade_inside_the_callers_transaction_undoes_only_itself(tmp_path):
    kb, _a_ids, _b_ids = format_2_kb_not_in_id_ranges(tmp_path)
    conn = records.connect(kb.path / "kb.sqlite")
    conn.execute("BEGIN IMMEDIATE")
    records.set_meta(conn, "callers_change", "kept")
    records.upgrade_content_ranges(conn)  # not ranges: refused, in a savepoint
    assert conn.in_transaction and not records.has_content_ranges(conn)
    conn.execute("COMMIT")
    assert records.get_meta(conn, "callers_change") == "kept" and records.get_meta(conn, "schema_version") == "2"
    assert not records.has_content_ranges(conn)
    conn.close()


def test_a_content_missing_a_chunk_is_reported_and_repair_drops_its_document(tmp_path):
    rng = np.random.default_rng(10)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt", "c.txt"])
    b_ids = sorted(kb.chunk_ids_for_sources(["b.txt"]))
    kb.close()
    conn = records.connect(kb.path / "kb.sqlite")
    conn.execute("BEGIN")
    records.delete_keyword_rows(conn, [b_ids[2]])
    conn.execute("DELETE FROM chunks WHERE id = ?", (b_ids[2],))  # a gap in b.txt's id range
    records.set_meta(conn, "chunk_count", str(records.count_chunks(conn)))
    conn.execute("COMMIT")
    conn.close()
    assert any("chunk count disagrees" in p for p in doctor.check(kb).problems)
    done = doctor.repair(kb)
    assert any("incomplete" in d for d in done), done
    assert doctor.check(kb).ok
    assert {d.source for d in kb.documents()} == {"a.txt", "c.txt"}
    assert_consistent(kb)


def test_a_kb_of_store_format_1_is_refused_with_the_fix_and_repair_upgrades_it(tmp_path):
    rng = np.random.default_rng(8)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt"])
    expected = kb.keyword_search(search_terms("b.txt paragraph"), 4)
    kb.close()
    conn = records.connect(kb.path / "kb.sqlite")  # make it what format 1 wrote: terms kept by FTS5 itself
    conn.execute("DROP TABLE chunk_terms")
    conn.execute("CREATE VIRTUAL TABLE chunk_terms USING fts5(terms, tokenize = 'unicode61 remove_diacritics 2')")
    conn.executemany("INSERT INTO chunk_terms(rowid, terms) VALUES (?, ?)",
                     [(i, fts_document(t)) for i, t in conn.execute("SELECT id, text FROM chunks").fetchall()])
    make_format_2(conn, keep_terms=False)
    records.set_meta(conn, "schema_version", "1")
    conn.close()
    with pytest.raises(AnalyserMismatch, match="store format 1.*kb repair"):
        kb.keyword_search(search_terms("b.txt paragraph"), 4)
    with pytest.raises(AnalyserMismatch, match="kb repair"), kb.writer(embedding_model="m") as w:
        w.remove_document("a.txt")
    assert any("store format 1" in p for p in doctor.check(kb).problems)
    assert kb.dense_search(unit(rng, 1)[0], 3)  # vectors and texts are unchanged: dense search still works
    doctor.repair(kb)
    assert doctor.check(kb).ok and records.get_meta(records.connect(kb.path / "kb.sqlite"), "schema_version") == "3"
    assert kb.keyword_search(search_terms("b.txt paragraph"), 4) == expected
    assert_consistent(kb)


def test_the_re_scoring_fetch_runs_outside_the_index_lock(tmp_path, monkeypatch):
    """Another thread can load or search the index while a search fetches its candidates' vectors."""
    import threading

    rng = np.random.default_rng(12)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    fill(kb, rng, docs=2, per_doc=30)
    query = lowrank(rng, 1)[0]
    expected = kb.dense_search(query, 5)
    free: list[bool] = []
    fetch = kb.chunk_vectors

    def checked(ids):
        got: list[bool] = []
        probe = threading.Thread(target=lambda: got.append(kb._load_lock.acquire(timeout=5)
                                                           and (kb._load_lock.release() or True)))
        probe.start()
        probe.join()
        free.extend(got)
        return fetch(ids)

    monkeypatch.setattr(kb, "chunk_vectors", checked)
    assert kb.dense_search(query, 5) == expected
    assert free == [True]


def test_compaction_trains_the_quantiser_on_a_seeded_sample_of_the_whole_kb(tmp_path, monkeypatch):
    from kb_qa.store import vector_index

    monkeypatch.setattr(vector_index, "TRAIN_SAMPLE", 20)
    rng = np.random.default_rng(13)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    fill(kb, rng, docs=4, per_doc=30)
    trained: list[np.ndarray] = []
    build = vector_index.build_ann
    monkeypatch.setattr(vector_index, "build_ann", lambda batches, dim, training:
                        trained.append(training) or build(batches, dim, training))
    kb.compact(ann_min_chunks=10)
    kb.compact(ann_min_chunks=10)
    assert len(trained) == 2 and trained[0].shape == (20, 64)
    np.testing.assert_array_equal(trained[0], trained[1])  # seeded: a rebuild trains on the same sample
    conn = records.connect(kb.path / "kb.sqlite")
    stored = {i: v for ids, vecs in records.iter_vectors(conn, 64) for i, v in zip(ids.tolist(), vecs, strict=True)}
    conn.close()
    picked = [i for row in trained[0] for i, v in stored.items() if np.array_equal(v, row)]
    assert len(picked) == 20 and max(picked) > 60  # not the first 20 ids: drawn from the whole KB
    # ... and the index written is trained on it: its 4-bit quantiser's ranges are the sample's min and range
    import faiss

    conn = records.connect(kb.path / "kb.sqlite")
    ann = records.get_ann(conn)
    conn.close()
    assert ann is not None
    written = vector_index.read_index(vector_index.index_path(kb.path, ann.generation), ann.sha256, ann.count, 64)
    ranges = faiss.vector_to_array(faiss.downcast_index(faiss.downcast_index(written.index).storage).sq.trained)
    np.testing.assert_allclose(ranges[:64], trained[0].min(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ranges[64:], np.ptp(trained[0], axis=0), rtol=1e-5)
    assert kb.dense_search(lowrank(rng, 1)[0], 5)
