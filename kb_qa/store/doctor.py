"""The store's doctor: `check(kb)` says what is wrong with a knowledge base, `repair(kb)` fixes what the records
allow and says what it did. Both are what `kb-qa kb check [NAME]` / `kb-qa kb repair NAME` print.

check: the files (regular, not symlinks, a database with the schema), SQLite's full `integrity_check`, the counts
that must agree (chunks == keyword rows == recorded count == stored vectors of the KB's dimension; each content's
chunk count; no document without content, no content without document), the approximate index file if one is
recorded (present, checksum, count, dimension), and orphan files (index files SQLite does not name, temporary
files of a crashed writer or compaction).
repair (under the write lock): drop orphan files and contents, re-create the FTS table from the chunk texts,
rebuild the approximate index (if the KB has one) from the stored vectors as a new generation, make every reader
reload its vectors (`vectors_rebased_at`), and record the count. It cannot mend a
database whose pages are damaged (integrity_check fails): that needs a re-ingest, and it says so.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from kb_qa.store import records, vector_index
from kb_qa.store.errors import is_io_error, storage_error
from kb_qa.store.knowledge_base import _MISSING, DB_FILE, KnowledgeBase
from kb_qa.store.terms import ANALYSER_META_KEY, ANALYSER_VERSION, fts_document


@dataclass
class CheckReport:
    name: str
    problems: list[str] = field(default_factory=list)
    facts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _orphan_files(kb: KnowledgeBase, generation: int) -> list[str]:
    out = []
    for path in sorted(kb.path.iterdir()):
        match = vector_index._INDEX_FILE.match(path.name)
        if (match and int(match.group(1)) != generation) or path.name.endswith(".tmp") \
                or path.name.startswith(f".{DB_FILE}.creating"):
            out.append(path.name)
    return out


def check(kb: KnowledgeBase) -> CheckReport:
    """What is wrong with `kb`. A disk that fails while checking raises `StorageError` (that is not damage, and
    repairing would not help)."""
    with kb._io("checking it"):
        return _check(kb)


def _check(kb: KnowledgeBase) -> CheckReport:
    report = CheckReport(kb.name)
    state = kb._state()
    problem = kb._problem_of(state)
    if state == _MISSING:
        from kb_qa.store.errors import KnowledgeBaseNotFound

        raise KnowledgeBaseNotFound(f"knowledge base {kb.name!r} does not exist (looked in {kb.path})")
    if problem is not None:
        report.problems.append(problem)
        return report
    conn = records.connect_plain(kb.path / DB_FILE)
    try:
        verdict = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
        if verdict != ["ok"]:
            report.problems.append("SQLite integrity_check failed: " + "; ".join(verdict))
            return report
        chunks = records.count_chunks(conn)
        terms = conn.execute("SELECT COUNT(*) FROM chunk_terms").fetchone()[0]
        report.facts.update(documents=records.count_documents(conn), chunks=chunks, keyword_rows=terms)
        if terms != chunks:
            report.problems.append(f"keyword index has {terms} rows for {chunks} chunks")
        recorded = records.get_meta(conn, "chunk_count")
        if recorded is not None and int(recorded) != chunks:
            report.problems.append(f"recorded chunk count {recorded} != {chunks} chunk rows")
        format_problem = records.keyword_format_problem(conn, kb.name)
        if format_problem is not None:
            report.problems.append(f"keyword index in store format {records.get_meta(conn, 'schema_version', '1')}"
                                   f", not {records.SCHEMA_VERSION} (`kb repair` re-cuts it)")
        analyser = records.get_meta(conn, ANALYSER_META_KEY) or "1"
        if chunks and analyser != ANALYSER_VERSION:
            report.problems.append(f"keyword index cut by term analyser version {analyser}, not {ANALYSER_VERSION}")
        belongs = records.content_join(conn)  # format 3: the content's id range; older: chunks.sha256
        bad = conn.execute(f"SELECT COUNT(*) FROM contents k WHERE n_chunks != "
                           f"(SELECT COUNT(*) FROM chunks c WHERE {belongs})").fetchone()[0]
        if bad:
            report.problems.append(f"{bad} contents whose chunk count disagrees with their chunks")
        held = conn.execute(f"SELECT COALESCE(SUM((SELECT COUNT(*) FROM chunks c WHERE {belongs})), 0) "
                            f"FROM contents k").fetchone()[0]  # O(chunks): each range is a rowid range
        outside = chunks - held
        if outside:
            report.problems.append(f"{outside} chunks of no content")
        dangling = conn.execute("SELECT COUNT(*) FROM documents WHERE sha256 NOT IN "
                                "(SELECT sha256 FROM contents)").fetchone()[0]
        if dangling:
            report.problems.append(f"{dangling} documents without content")
        orphans = conn.execute("SELECT COUNT(*) FROM contents WHERE sha256 NOT IN "
                               "(SELECT sha256 FROM documents)").fetchone()[0]
        if orphans:
            report.problems.append(f"{orphans} contents no document refers to")
        ann = records.get_ann(conn)
        generation = ann.generation if ann else 0
        dim = records.get_meta(conn, "embedding_dim")
        if dim is not None:
            vectors = conn.execute("SELECT COUNT(*) FROM chunks WHERE length(vector) = ?",
                                   (int(dim) * 4,)).fetchone()[0]
            report.facts["vectors"] = vectors
            if vectors != chunks:
                report.problems.append(f"{chunks - vectors} chunks have no vector of {dim} dimensions")
        if dim is not None and ann:
            path = vector_index.index_path(kb.path, ann.generation)
            index = vector_index.read_index(path, ann.sha256, ann.count, int(dim))
            if index is None:
                report.problems.append(f"vector index {path.name} is missing, damaged or disagrees with its "
                                       f"records (searches are exact until `kb repair` or `kb compact`)")
            else:
                report.facts["ann_vectors"] = int(index.ntotal)
        for name in _orphan_files(kb, generation):
            report.problems.append(f"orphan file {name}")
    except sqlite3.DatabaseError as exc:
        if is_io_error(exc):
            raise
        report.problems.append(f"database cannot be read: {exc}")
    finally:
        conn.close()
    return report


def repair(kb: KnowledgeBase, *, lock_timeout_s: float = 10.0) -> list[str]:
    """Fix what can be fixed from the records; returns what was done (empty: nothing needed doing)."""
    done: list[str] = []
    before = check(kb)
    if any(p.startswith(("SQLite integrity_check", "database cannot")) for p in before.problems) \
            or kb.problem() is not None:
        raise_from = before.problems[0] if before.problems else kb.problem()
        from kb_qa.store.errors import KnowledgeBaseDamaged

        raise KnowledgeBaseDamaged(f"knowledge base {kb.name!r} cannot be repaired from its records "
                                   f"({raise_from}); re-ingest its documents with --rebuild into a new one")
    with kb._write_lock(lock_timeout_s):
        keep = _repair_records(kb, done)
        for name in _orphan_files(kb, keep):
            try:
                (kb.path / name).unlink(missing_ok=True)
                done.append(f"removed orphan file {name}")
            except OSError as exc:  # the repair itself stands; `kb check` keeps listing the file
                done.append(f"could not remove orphan file {name}: {exc.strerror or exc}")
    kb.close()  # the next search loads the new generation
    return done


def _drop_damaged_contents(conn) -> list[str]:
    """Format 3: remove the documents of contents whose id range lacks some chunk rows; returns their paths (the
    contents themselves are then orphans, removed by the caller)."""
    damaged = [r[0] for r in conn.execute(
        "SELECT sha256 FROM contents k WHERE n_chunks != (SELECT COUNT(*) FROM chunks c WHERE c.id BETWEEN "
        "k.first_id AND k.first_id + k.n_chunks - 1)")]
    sources: list[str] = []
    for sha in damaged:
        sources.extend(r[0] for r in conn.execute("SELECT source FROM documents WHERE sha256 = ?", (sha,)))
        conn.execute("DELETE FROM documents WHERE sha256 = ?", (sha,))
    return sources


def _drop_chunks_of_no_content(conn) -> list[int]:
    """Remove chunk rows no content holds (their keyword rows first); returns their ids."""
    belongs = records.content_join(conn)
    ids = [r[0] for r in conn.execute(f"SELECT id FROM chunks WHERE id NOT IN "
                                      f"(SELECT c.id FROM contents k JOIN chunks c ON {belongs})")]
    if ids:
        records.delete_keyword_rows(conn, ids)
        conn.executemany("DELETE FROM chunks WHERE id = ?", ((i,) for i in ids))
    return ids


def _repair_records(kb: KnowledgeBase, done: list[str]) -> int:
    """The records' part of `repair`, in one transaction; returns the generation of the approximate index file
    it wrote (0: none, the KB is searched exactly). A disk
    failure rolls it all back, removes the index file it wrote, and raises `StorageError`."""
    written = None
    committed = False
    try:
        conn = records.connect(kb.path / DB_FILE)
        try:
            records.init_schema(conn)  # the tombstones table of a KB from before it existed
            conn.execute("BEGIN IMMEDIATE")
            removed = records.delete_orphan_contents(conn)
            generation = int(records.get_meta(conn, "index_generation", "0")) + 1
            if removed:
                done.append(f"dropped {len(removed)} chunks of contents no document refers to")
                records.add_tombstones(conn, removed, generation)
            conn.execute("DELETE FROM documents WHERE sha256 NOT IN (SELECT sha256 FROM contents)")
            removed = _drop_chunks_of_no_content(conn)
            if removed:
                done.append(f"dropped {len(removed)} chunks of no content")
                records.add_tombstones(conn, removed, generation)
            if records.has_content_ranges(conn):
                # a content missing some of its range's chunks cannot be told apart from its neighbours by a
                # shorter count (ids are its identity): it goes with its documents, which the next ingest re-adds
                gone = _drop_damaged_contents(conn)
                if gone:
                    done.append(f"dropped {len(gone)} documents whose chunks were incomplete (re-ingest them)")
                    records.add_tombstones(conn, records.delete_orphan_contents(conn), generation)
            else:
                conn.execute("UPDATE contents SET n_chunks = "
                             "(SELECT COUNT(*) FROM chunks WHERE sha256 = contents.sha256)")
            records.upgrade_keyword_index(conn)  # an empty contentless index (and chunks.terms, for format 1)
            rows = conn.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
            for start in range(0, len(rows), 4096):  # terms cut once, written to the index and to chunks.terms
                cut = [(cid, text, fts_document(text)) for cid, text in rows[start:start + 4096]]
                conn.executemany("INSERT INTO chunk_terms(rowid, terms) VALUES (?, ?)",
                                 ((cid, terms) for cid, _, terms in cut))
                conn.executemany("UPDATE chunks SET terms = ? WHERE id = ?",
                                 ((records.encode_terms(text, terms), cid) for cid, text, terms in cut))
            done.append(f"re-created the keyword index from {len(rows)} chunk texts")
            count = len(rows)
            dim = records.get_meta(conn, "embedding_dim")
            keep = 0
            if dim is not None and records.get_ann(conn):
                from kb_qa.store.compaction import build_index  # (lazy: compaction imports the writer)

                index = build_index(conn, int(dim))
                written, sha = vector_index.write_index(index, kb.path, generation)
                records.set_ann(conn, records.AnnRecord(generation, sha, int(index.ntotal),
                                                        records.max_chunk_id(conn)))
                records.prune_tombstones(conn, generation)
                keep = generation
                done.append(f"rebuilt the vector index from {index.ntotal} stored vectors "
                            f"(generation {generation})")
            elif dim is not None:
                done.append(f"checked the {count} stored vectors (searched exactly: no index file to rebuild)")
            records.set_meta(conn, "index_generation", str(generation))
            records.set_meta(conn, "vectors_rebased_at", str(generation))  # every reader reloads
            records.set_meta(conn, "chunk_count", str(count))
            records.set_meta(conn, ANALYSER_META_KEY, ANALYSER_VERSION)  # the terms were just re-cut
            if not conn.in_transaction:  # SQLite rolled it back itself after an I/O error it reported
                raise sqlite3.OperationalError("disk I/O error (SQLite rolled the transaction back)")
            conn.execute("COMMIT")
            committed = True
        finally:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite may have rolled it back itself after an I/O error
            conn.close()
    except (OSError, sqlite3.OperationalError, RuntimeError) as exc:
        if not is_io_error(exc):
            raise
        if written is not None and not committed:
            try:
                written.unlink(missing_ok=True)
            except OSError:
                pass  # an orphan file: `kb check` lists it, the next writer removes it
        done.clear()
        raise storage_error(kb.name, "repairing it", exc, kb.path,
                            outcome="nothing was changed: the previous version is intact") from exc
    return keep
