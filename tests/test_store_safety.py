"""A store nothing can brick: half-made and damaged KBs, symlinked files, disk-full errors, atomic rebuilds, the
doctor (issue 17 items 1-4, issue 18 item 3)."""

from __future__ import annotations

import errno
import os
import sqlite3

import numpy as np
import pytest

from kb_qa.errors import StorageError
from kb_qa.store import KnowledgeBase, KnowledgeBaseDamaged, doctor, records, vector_index
from kb_qa.store.terms import search_terms
from tests.test_store import add_docs, assert_consistent, unit


def _store_with(tmp_path, *names):
    rng = np.random.default_rng(0)
    for name in names:
        add_docs(KnowledgeBase.open(tmp_path, name, create=True), rng, [f"{name}-a.txt", f"{name}-b.txt"])


@pytest.mark.parametrize("half_made", ["zero-bytes", "no-tables"])
def test_half_made_kb_is_reported_alone_and_created_on_the_next_run(tmp_path, half_made):
    _store_with(tmp_path, "good")
    (tmp_path / "new").mkdir()
    db = tmp_path / "new" / "kb.sqlite"
    if half_made == "zero-bytes":
        db.write_bytes(b"")  # disk full at creation
    else:
        sqlite3.connect(db).execute("PRAGMA user_version = 1").connection.close()  # killed before the schema
    with pytest.raises(KnowledgeBaseDamaged, match="never fully created"):
        KnowledgeBase.open(tmp_path, "new")
    status = dict(KnowledgeBase.list_status(tmp_path))
    assert status["good"] is None and "never fully created" in status["new"]
    assert KnowledgeBase.open(tmp_path, "good").info().chunks == 10  # the others are untouched
    kb = KnowledgeBase.open(tmp_path, "new", create=True)  # the re-run of the ingest creates it
    add_docs(kb, np.random.default_rng(1), ["x.txt"])
    assert kb.info().documents == 1 and dict(KnowledgeBase.list_status(tmp_path))["new"] is None
    assert not list(kb.path.glob(".kb.sqlite.creating*"))


def test_garbage_db_and_symlinks_are_refused_never_written_through(tmp_path):
    _store_with(tmp_path, "good", "victim")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "kb.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(KnowledgeBaseDamaged, match="not a readable database"):
        KnowledgeBase.open(tmp_path, "junk")
    outside = tmp_path / "outside.sqlite"
    (tmp_path / "victim" / "kb.sqlite").rename(outside)
    (tmp_path / "victim" / "kb.sqlite").symlink_to(outside)
    before = outside.read_bytes()
    with pytest.raises(KnowledgeBaseDamaged, match="symbolic link"):
        KnowledgeBase.open(tmp_path, "victim", create=True)
    with pytest.raises(KnowledgeBaseDamaged, match="symbolic link"):
        with KnowledgeBase(tmp_path, "victim").writer():
            pass
    assert outside.read_bytes() == before
    status = dict(KnowledgeBase.list_status(tmp_path))
    assert status["good"] is None and status["junk"] and status["victim"]


def test_writer_refuses_a_database_with_damaged_pages(tmp_path):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, [f"d{i}.txt" for i in range(100)], n=20)
    kb.close()
    db = kb.path / "kb.sqlite"
    conn = records.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]  # 64 KiB for a new KB (records.PAGE_SIZE)
    conn.close()
    data = bytearray(db.read_bytes())
    assert len(data) > 8 * page
    data[5 * page:7 * page] = os.urandom(2 * page)  # two pages in the middle of the file
    db.write_bytes(bytes(data))
    with pytest.raises(KnowledgeBaseDamaged, match="quick_check|cannot be read"):
        with kb.writer(embedding_model="m"):
            pass
    report = doctor.check(kb)
    assert not report.ok and ("integrity_check" in report.problems[0] or "cannot be read" in report.problems[0])


def test_disk_full_while_writing_the_index_is_one_line_and_loses_nothing(tmp_path, monkeypatch):
    """Compaction writing the approximate index file onto a full disk: one line, no partial file, nothing lost."""
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt"])
    before = kb.dense_search(unit(rng, 1)[0], 10)
    real_write = vector_index.write_index

    def full(index, folder, generation):
        (folder / f".index-{generation}.faiss.tmp").write_bytes(b"partial")  # what a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vector_index, "write_index", full)
    with pytest.raises(StorageError) as caught:
        kb.compact(ann_min_chunks=1)
    message = str(caught.value)
    assert "'kb'" in message and "No space left" in message and "Free at least" in message
    assert "Nothing was lost" in message and "\n" not in message and "rollback" not in message
    assert not list(kb.path.glob("*.tmp")) and not list(kb.path.glob("index-*"))
    monkeypatch.setattr(vector_index, "write_index", real_write)
    fresh = KnowledgeBase.open(tmp_path, "kb")
    assert {d.source for d in fresh.documents()} == {"a.txt", "b.txt"}
    assert fresh.dense_search(unit(np.random.default_rng(0), 3)[2], 10) is not None
    assert_consistent(fresh)
    assert before  # and the next writer carries on
    add_docs(fresh, rng, ["c.txt"])
    assert fresh.info().documents == 3 and doctor.check(fresh).ok


def test_disk_full_at_commit_is_one_line_and_loses_nothing(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt"])
    real_set_meta = records.set_meta

    def full(conn, key, value):
        if key == "chunk_count":  # the commit's last write before COMMIT
            raise sqlite3.OperationalError("database or disk is full")
        real_set_meta(conn, key, value)

    monkeypatch.setattr(records, "set_meta", full)
    with pytest.raises(StorageError) as caught:
        add_docs(kb, rng, ["c.txt"])
    message = str(caught.value)
    assert "committing the changes failed: database or disk is full" in message and "Free at least" in message
    assert "Nothing was lost" in message and "\n" not in message
    monkeypatch.setattr(records, "set_meta", real_set_meta)
    fresh = KnowledgeBase.open(tmp_path, "kb")
    assert {d.source for d in fresh.documents()} == {"a.txt", "b.txt"}
    assert_consistent(fresh)


def test_sqlite_disk_full_while_storing_is_one_line(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt"])

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(records, "insert_content", full)
    with pytest.raises(StorageError, match="storing b.txt failed: database or disk is full"):
        add_docs(kb, rng, ["b.txt"])
    assert [d.source for d in kb.documents()] == ["a.txt"]


def test_writer_close_does_not_mask_the_error_when_sqlite_already_rolled_back(tmp_path):
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    with pytest.raises(ZeroDivisionError):
        with kb.writer() as w:
            w.remove_document("nothing.txt")  # opens the transaction
            w._conn.execute("ROLLBACK")  # as SQLite does by itself after some I/O errors
            raise ZeroDivisionError


def test_small_tmpfs_fills_up_cleanly(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); the injected-ENOSPC tests cover the paths")
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                      capture_output=True, check=False).returncode:
        pytest.skip("mount -t tmpfs is not permitted here (container without CAP_SYS_ADMIN)")
    try:
        rng = np.random.default_rng(0)
        kb = KnowledgeBase.open(mount, "kb", create=True)
        add_docs(kb, rng, ["a.txt"])
        with pytest.raises(StorageError):
            for i in range(200):
                add_docs(kb, rng, [f"big{i}.txt"], n=400)
        kb.close()
        fresh = KnowledgeBase.open(mount, "kb")
        assert fresh.info().documents >= 1 and not list(fresh.path.glob("*.tmp"))
        assert_consistent(fresh)
        fresh.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # lazy: never leave a mount behind


def test_doctor_finds_and_repairs_what_the_records_allow(tmp_path):
    rng = np.random.default_rng(0)
    kb = KnowledgeBase.open(tmp_path, "kb", create=True)
    add_docs(kb, rng, ["a.txt", "b.txt", "c.txt"])
    kb.compact(ann_min_chunks=1)  # an approximate index file the doctor must check
    assert doctor.check(kb).ok and doctor.check(kb).facts["vectors"] == 15 == doctor.check(kb).facts["ann_vectors"]
    expected = kb.keyword_search(search_terms("b.txt paragraph"), 3)
    kb.close()
    conn = records.connect(kb.path / "kb.sqlite")
    # lose 4 keyword rows (the index is contentless: FTS5's 'delete' with the stored terms, as a writer would)
    records.delete_keyword_rows(conn, [r[0] for r in conn.execute("SELECT id FROM chunks ORDER BY id LIMIT 4")])
    conn.close()
    index = next(kb.path.glob("index-*.faiss"))
    index.write_bytes(index.read_bytes()[:200])
    (kb.path / "index-999.faiss").write_bytes(b"old")
    report = doctor.check(kb)
    text = "; ".join(report.problems)
    assert "keyword index has 11 rows for 15 chunks" in text and "index-999.faiss" in text
    assert "vector index" in text
    done = doctor.repair(kb)
    assert any("keyword index" in d for d in done) and any("vector index" in d for d in done)
    assert any("index-999.faiss" in d for d in done)
    assert doctor.check(kb).ok
    assert kb.keyword_search(search_terms("b.txt paragraph"), 3) == expected
    assert_consistent(kb)


@pytest.mark.slow
def test_soak_kill_short(tmp_path):
    """bench/soak_kill.py in short: 30 random SIGKILL/SIGINT points across create, ingest, rebuild, prune and
    remove (forked workers with the imports done once: ~10-30 s; the bench runs 200)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "soak_kill.py"
    proc = subprocess.run([sys.executable, str(script), "--kills", "30", "--files", "100", "--seed", "1"],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check_failed 0" in proc.stdout and "resumed == clean: True" in proc.stdout
    counts = {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", proc.stdout.rsplit("):", 1)[-1])}
    assert counts["sigkill"] + counts["sigint"] == 30
    assert 30 - counts["finished_before_kill"] >= 10, proc.stdout  # most kills land inside a running operation
