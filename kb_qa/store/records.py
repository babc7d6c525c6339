"""The knowledge base's records in SQLite: documents, their content hashes, chunks (text, metadata, vector), and
the keyword index (FTS5). SQLite is the source of truth and the only copy of every vector (`chunks.vector`); the
in-memory exact index and the optional approximate index file (`index-<gen>.faiss`, written by compaction) are
derived from it and can always be rebuilt from it. Nothing here can execute stored data (no pickle).

Tables:
  meta(key, value)                 embedding model/dimension, commit generation, the approximate index's file
                                   (generation, sha256, count, highest chunk id), schema version
  contents(sha256, n_chunks,       one row per distinct file content; its chunks are the ids first_id ..
           first_id)               first_id + n_chunks - 1: one content's chunks are inserted together, in one
                                   transaction of the only writer, so AUTOINCREMENT gives them consecutive ids
                                   (checked at insert). Format 2 kept the content's sha256 in every chunk row and
                                   an index on it instead: 150 bytes a chunk (see `upgrade_content_ranges`)
  documents(source -> sha256)      one row per document path; two paths with the same bytes share one content
  chunks(id, ...)                  ids are AUTOINCREMENT: never reused, never shifted by deletions; `terms` holds
                                   the chunk's keyword terms (what chunk_terms indexed), DEFLATE-compressed with
                                   the chunk's own text as the preset dictionary (~160 bytes instead of ~600)
  chunk_terms(terms)               FTS5, contentless (content=''), rowid = chunks.id: the term index and the
                                   per-row token counts BM25 needs, no second copy of the terms; rows are removed
                                   with FTS5's 'delete' command and the stored terms (exactly what was indexed)
  tombstones(chunk_id, generation) chunks removed, and the commit that removed them: readers holding vectors of an
                                   older generation drop exactly these (no reload); pruned by compaction
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

# 1: terms stored by FTS5 itself (content table); 2: contentless FTS5 + chunks.terms; 3: a content's chunks found
# by their id range (contents.first_id), no chunks.sha256 in new KBs and no index on it in upgraded ones
SCHEMA_VERSION = "3"
SCHEMA_META_KEY = "schema_version"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contents(
    sha256 TEXT PRIMARY KEY,
    n_chunks INTEGER NOT NULL,
    first_id INTEGER                      -- its first chunk's id; its chunks: first_id .. first_id + n_chunks - 1
);
CREATE TABLE IF NOT EXISTS documents(
    source TEXT PRIMARY KEY,              -- path relative to the knowledge base, '/'-separated
    sha256 TEXT NOT NULL REFERENCES contents(sha256),
    size INTEGER NOT NULL,                -- bytes
    origin TEXT,                          -- absolute path the file was read from (for --prune)
    added_at REAL NOT NULL,               -- unix seconds
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_sha ON documents(sha256);
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY AUTOINCREMENT, -- its content: the contents row whose id range holds it
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    heading TEXT,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    vector BLOB NOT NULL,                 -- float32 little-endian, L2-normalised
    terms BLOB                            -- the FTS terms, raw DEFLATE with `text` as dictionary (encode_terms)
);
CREATE TABLE IF NOT EXISTS tombstones(
    chunk_id INTEGER PRIMARY KEY,         -- a removed chunks.id (ids are never reused)
    generation INTEGER NOT NULL           -- the commit generation that removed it
);
CREATE INDEX IF NOT EXISTS tombstones_generation ON tombstones(generation);
"""
# 64 KiB pages for new knowledge bases: a chunk row (1.5 KB vector + text) is 2-3 KB and a row never straddles two
# leaf pages, so each page ends with on average half a row of unused space: 4 KiB pages hold one row (~40% of the
# file unused), 16 KiB pages six (151 B a chunk unused, measured), 64 KiB pages ~27 (55 B). Only takes effect
# before the first table is created.
PAGE_SIZE = 65536
CONTENTS_FIRST_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS contents_first ON contents(first_id)"
FTS_TABLE = ("CREATE VIRTUAL TABLE IF NOT EXISTS chunk_terms "
             "USING fts5(terms, content = '', tokenize = 'unicode61 remove_diacritics 2')")
SCHEMA += FTS_TABLE + ";\n"


@dataclass(frozen=True)
class DocumentRecord:
    source: str
    sha256: str
    size: int
    origin: str | None
    n_chunks: int
    added_at: float
    updated_at: float


@dataclass(frozen=True)
class ChunkRecord:
    id: int
    sha256: str
    ordinal: int
    text: str
    page: int | None
    heading: str | None
    sources: tuple[str, ...]  # every document path holding this content (usually one)


TABLES = ("meta", "contents", "documents", "chunks", "chunk_terms")  # tombstones: added by the first writer


def connect_plain(path: Path) -> sqlite3.Connection:
    """A connection that changes nothing on open (no journal-mode switch): for inspecting a file."""
    return sqlite3.connect(str(path), timeout=30.0, isolation_level=None)


def connect(path: Path, *, journal: str = "WAL") -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) so a commit is one atomic step.
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA journal_mode={journal}")  # WAL: readers never block the writer, nor it them
    conn.execute("PRAGMA synchronous=FULL")  # a committed transaction survives power loss
    conn.execute("PRAGMA foreign_keys=ON")
    # The WAL keeps its largest size (a 4096-chunk batch: ~12 MB) for good unless told: shrink it to 4 MiB when a
    # checkpoint lets the next write start it over (no effect on durability; readers never wait for it).
    conn.execute("PRAGMA journal_size_limit=4194304")
    return conn


def shrink_wal(conn: sqlite3.Connection) -> None:
    """After a commit: copy the WAL into the database and truncate it, unless a reader still needs its frames (then
    nothing waits: busy_timeout 0; the next commit tries again). Without it the WAL keeps a whole batch's pages
    (~12 MB for 4096 chunks) on disk between commits. The commit is already durable: a failure here changes
    nothing and is not reported."""
    try:
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.execute("PRAGMA busy_timeout=30000")  # connect()'s timeout=30.0
    except sqlite3.Error:
        pass


def init_schema(conn: sqlite3.Connection) -> None:
    if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.executescript(SCHEMA)
    upgrade_content_ranges(conn)
    # The format is read from the tables themselves (a KB of schema 1 has no chunks.terms), never from the meta
    # alone: a KB older than the recorded version must not be taken for a new one.
    current = has_terms_column(conn)
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                 (SCHEMA_VERSION if current else "1",))
    if not current and not has_chunks(conn):  # an empty KB of schema 1: nothing to re-cut, upgraded at once
        with _atomically(conn):
            upgrade_keyword_index(conn)
    # A random id per created KB: a KB deleted and re-created under the same name is a different KB, so nothing
    # keyed by it (caches) can confuse the two.
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('kb_id', ?)", (uuid.uuid4().hex,))


def has_terms_column(conn: sqlite3.Connection) -> bool:
    return any(row[1] == "terms" for row in conn.execute("PRAGMA table_info(chunks)"))


def has_chunk_sha_column(conn: sqlite3.Connection) -> bool:
    """Whether chunks carry their content's sha256 (a KB created by store format 1 or 2)."""
    return any(row[1] == "sha256" for row in conn.execute("PRAGMA table_info(chunks)"))


def has_content_ranges(conn: sqlite3.Connection) -> bool:
    """Whether contents record their chunks' id range (store format 3; a KB of format 1 or 2 until a writer of
    this version upgrades it: `upgrade_content_ranges`). Readers of an older KB join on chunks.sha256 instead."""
    return any(row[1] == "first_id" for row in conn.execute("PRAGMA table_info(contents)"))


def upgrade_content_ranges(conn: sqlite3.Connection) -> None:
    """Format 1/2 -> 3, in one transaction (a kill leaves the old format, which still reads and writes): each
    content's first chunk id recorded, the ranges checked against the rows, then the index on chunks.sha256
    dropped (84 bytes a chunk). The column itself stays (filled by later inserts too, so a reader of the older
    layout stays right), as rewriting every row would cost a copy of the KB; `--rebuild` keeps it as well. A KB
    whose chunks are not in consecutive ranges (never written by kb_qa) is left as it is, index and all."""
    if has_content_ranges(conn):
        conn.execute(CONTENTS_FIRST_INDEX)
        return
    try:
        with _atomically(conn):
            if has_content_ranges(conn):  # another writer upgraded it meanwhile
                return
            conn.execute("ALTER TABLE contents ADD COLUMN first_id INTEGER")
            conn.execute("UPDATE contents SET first_id = (SELECT MIN(id) FROM chunks WHERE sha256 = contents.sha256)")
            # n distinct ids from first to first + n - 1: exactly that range. Read from the index on chunks.sha256
            # alone (~80 bytes an entry), not the 2.3 KB rows.
            broken = conn.execute(
                "SELECT COUNT(*) FROM contents k WHERE first_id IS NULL "
                "OR n_chunks != (SELECT COUNT(*) FROM chunks WHERE sha256 = k.sha256) "
                "OR n_chunks != (SELECT MAX(id) FROM chunks WHERE sha256 = k.sha256) - first_id + 1").fetchone()[0]
            if broken:
                raise _NotInRanges
            conn.execute(CONTENTS_FIRST_INDEX)
            conn.execute("DROP INDEX IF EXISTS chunks_sha")
            if has_terms_column(conn):  # format 1 stays 1 (its keyword index still needs `kb repair`)
                set_meta(conn, SCHEMA_META_KEY, SCHEMA_VERSION)
            if os.environ.get("KB_QA_CRASH_AT") == "upgrade-before-commit":  # the durability tests' kill (writer.py)
                os._exit(99)
    except _NotInRanges:
        return  # rolled back: the KB keeps its format-2 layout


@contextmanager
def _atomically(conn: sqlite3.Connection) -> Iterator[None]:
    """All or nothing: a transaction of its own (BEGIN IMMEDIATE ... COMMIT), or, inside the caller's transaction,
    a savepoint, so a failure undoes exactly this block and the caller's own changes stay theirs to commit."""
    began = not conn.in_transaction
    conn.execute("BEGIN IMMEDIATE" if began else "SAVEPOINT atomically")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK" if began else "ROLLBACK TO atomically")
            if not began:
                conn.execute("RELEASE atomically")
        raise
    conn.execute("COMMIT" if began else "RELEASE atomically")


class _NotInRanges(Exception):
    """A content's chunks are not one consecutive id range: the KB keeps the format-2 layout."""


def content_join(conn: sqlite3.Connection, content: str = "k", chunk: str = "c") -> str:
    """The SQL condition that chunk row `chunk` belongs to contents row `content`, in this KB's layout."""
    if has_content_ranges(conn):
        return f"{chunk}.id BETWEEN {content}.first_id AND {content}.first_id + {content}.n_chunks - 1"
    return f"{chunk}.sha256 = {content}.sha256"


def upgrade_keyword_index(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: the contentless keyword index and the chunks.terms column, both empty (the caller re-cuts
    the terms of existing chunks: `kb repair`). Drops the old keyword rows."""
    conn.execute("DROP TABLE IF EXISTS chunk_terms")
    conn.execute(FTS_TABLE)
    if not has_terms_column(conn):
        conn.execute("ALTER TABLE chunks ADD COLUMN terms BLOB")
    set_meta(conn, SCHEMA_META_KEY, SCHEMA_VERSION)


def keyword_format_problem(conn: sqlite3.Connection, kb_name: str) -> str | None:
    """Why this KB's keyword index cannot be used by this version (one line with the fix), or None."""
    if has_terms_column(conn) or not has_chunks(conn):
        return None
    recorded = get_meta(conn, SCHEMA_META_KEY, "1")
    return (f"knowledge base {kb_name!r} keeps its keyword index in store format {recorded}, this version of "
            f"kb_qa uses {SCHEMA_VERSION} (a third of the disk): run `kb-qa kb repair {kb_name}` (re-cuts the "
            f"terms from the stored texts, nothing re-embedded) or re-ingest it with --rebuild")


def check_keyword_format(conn: sqlite3.Connection, kb_name: str) -> None:
    from kb_qa.store.errors import AnalyserMismatch

    problem = keyword_format_problem(conn, kb_name)
    if problem is not None:
        raise AnalyserMismatch(problem)


# -- the stored terms: raw DEFLATE (no header, 15-bit window) with the chunk's text as the preset dictionary. The
# terms are mostly words of that text, so they compress to ~160 bytes for a 300-character chunk (~340 without the
# dictionary, ~600 as text). Decoding needs the same text, which lives in the same row and never changes.
def encode_terms(text: str, terms: str) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, text.encode("utf-8"))
    return packer.compress(terms.encode("utf-8")) + packer.flush()


def decode_terms(text: str, blob: bytes | None) -> str:
    if not blob:
        return ""
    unpacker = zlib.decompressobj(-15, zdict=text.encode("utf-8"))
    return (unpacker.decompress(blob) + unpacker.flush()).decode("utf-8")


def delete_keyword_rows(conn: sqlite3.Connection, ids: Iterable[int]) -> None:
    """Remove chunks' rows from the contentless keyword index: FTS5's 'delete' with exactly the terms that were
    indexed (the stored ones), before the chunk rows themselves go."""
    stored = chunk_terms(conn, ids)
    conn.executemany("INSERT INTO chunk_terms(chunk_terms, rowid, terms) VALUES ('delete', ?, ?)",
                     list(stored.items()))


def clear_keyword_index(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO chunk_terms(chunk_terms) VALUES ('delete-all')")


def missing_tables(conn: sqlite3.Connection) -> set[str]:
    """The schema's tables this database lacks (all of them: a file that was never initialised)."""
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return set(TABLES) - present


@overload
def get_meta(conn: sqlite3.Connection, key: str) -> str | None: ...
@overload
def get_meta(conn: sqlite3.Connection, key: str, default: str) -> str: ...
@overload
def get_meta(conn: sqlite3.Connection, key: str, default: str | None) -> str | None: ...
def get_meta(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else default


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                 (key, value))


@dataclass(frozen=True)
class AnnRecord:
    """What meta says of the approximate index file (`index-<generation>.faiss`, written by compaction): its
    generation, checksum, vector count, and the highest chunk id it covers (the rows above it are the exact delta)."""

    generation: int
    sha256: str | None
    count: int
    max_id: int


_ANN_KEYS = ("ann_generation", "ann_sha256", "ann_count", "ann_max_id")


def get_ann(conn: sqlite3.Connection) -> AnnRecord | None:
    """The recorded approximate index; None: there is none (every search is exact over the stored vectors)."""
    generation = int(get_meta(conn, "ann_generation", "0"))
    if not generation:
        return None
    return AnnRecord(generation, get_meta(conn, "ann_sha256"), int(get_meta(conn, "ann_count", "-1")),
                     int(get_meta(conn, "ann_max_id", "0")))


def set_ann(conn: sqlite3.Connection, record: AnnRecord | None) -> None:
    """Record `record` as the approximate index, or (None) forget it; in the caller's transaction."""
    if record is None:
        conn.executemany("DELETE FROM meta WHERE key = ?", ((key,) for key in _ANN_KEYS))
        return
    for key, value in zip(_ANN_KEYS, (record.generation, record.sha256, record.count, record.max_id), strict=True):
        set_meta(conn, key, str(value))


def count_chunks(conn: sqlite3.Connection) -> int:
    """Chunk rows, counted (a scan: O(chunks)). Readers use `chunk_count`, which the commit records in meta."""
    return conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]


def chunk_count(conn: sqlite3.Connection) -> int:
    """Chunks of the committed version: recorded in meta by every commit (O(1)); counted for older stores."""
    value = get_meta(conn, "chunk_count")
    return int(value) if value is not None else count_chunks(conn)


def has_chunks(conn: sqlite3.Connection) -> bool:
    """Whether any chunk row exists (O(1), unlike a count)."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM chunks)").fetchone()[0] == 1


def max_chunk_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM chunks").fetchone()[0])


def count_documents(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]


def document(conn: sqlite3.Connection, source: str) -> DocumentRecord | None:
    rows = list(_documents(conn, "WHERE d.source = ?", (source,)))
    return rows[0] if rows else None


def documents(conn: sqlite3.Connection) -> list[DocumentRecord]:
    return list(_documents(conn, "ORDER BY d.source", ()))


def _documents(conn: sqlite3.Connection, tail: str, args: tuple) -> Iterator[DocumentRecord]:
    sql = ("SELECT d.source, d.sha256, d.size, d.origin, c.n_chunks, d.added_at, d.updated_at "
           "FROM documents d JOIN contents c ON c.sha256 = d.sha256 " + tail)
    for row in conn.execute(sql, args):
        yield DocumentRecord(*row)


def content_exists(conn: sqlite3.Connection, sha256: str) -> bool:
    return conn.execute("SELECT 1 FROM contents WHERE sha256 = ?", (sha256,)).fetchone() is not None


def insert_content(conn: sqlite3.Connection, sha256: str, chunks: list, vectors: np.ndarray,
                   terms: list[str]) -> list[int]:
    """Rows for a new content: its chunks with vectors and keyword terms. Returns the new chunk ids."""
    ranges = has_content_ranges(conn)
    conn.execute("INSERT INTO contents(sha256, n_chunks) VALUES (?, ?)", (sha256, len(chunks)))
    # A KB of format 1/2 (until upgraded, or never: see upgrade_content_ranges) keeps the sha256 in each chunk row.
    with_sha = has_chunk_sha_column(conn)
    sql = ("INSERT INTO chunks(" + ("sha256, " if with_sha else "") + "ordinal, text, page, heading, start, end, "
           "vector, terms) VALUES (" + ("?," if with_sha else "") + "?,?,?,?,?,?,?,?)")
    ids = []
    for chunk, vector, chunk_terms in zip(chunks, vectors, terms, strict=True):
        row = (chunk.ordinal, chunk.text, chunk.page, chunk.heading, chunk.start, chunk.end,
               np.asarray(vector, dtype="<f4").tobytes(), encode_terms(chunk.text, chunk_terms))
        cur = conn.execute(sql, (sha256, *row) if with_sha else row)
        assert cur.lastrowid is not None  # always set after a successful INSERT into a rowid table
        ids.append(cur.lastrowid)
        conn.execute("INSERT INTO chunk_terms(rowid, terms) VALUES (?, ?)", (cur.lastrowid, chunk_terms))
    if ranges:
        if ids != list(range(ids[0], ids[0] + len(ids))):  # one writer, one transaction: cannot happen
            raise RuntimeError(f"content {sha256[:12]}: its chunks did not get consecutive ids ({ids[:3]}...)")
        conn.execute("UPDATE contents SET first_id = ? WHERE sha256 = ?", (ids[0], sha256))
    return ids


def upsert_document(conn: sqlite3.Connection, source: str, sha256: str, size: int, origin: str | None) -> None:
    now = time.time()
    conn.execute(
        "INSERT INTO documents(source, sha256, size, origin, added_at, updated_at) VALUES (?,?,?,?,?,?) "
        "ON CONFLICT(source) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, "
        "origin = excluded.origin, updated_at = excluded.updated_at",
        (source, sha256, size, origin, now, now),
    )


def delete_document(conn: sqlite3.Connection, source: str) -> None:
    conn.execute("DELETE FROM documents WHERE source = ?", (source,))


def delete_orphan_contents(conn: sqlite3.Connection) -> list[int]:
    """Remove every content no document refers to any more (a scan of contents); returns the chunk ids removed."""
    orphans = [r[0] for r in conn.execute(
        "SELECT sha256 FROM contents WHERE sha256 NOT IN (SELECT sha256 FROM documents)")]
    removed: list[int] = []
    belongs = content_join(conn)
    for sha in orphans:
        ids = [r[0] for r in conn.execute(f"SELECT c.id FROM contents k JOIN chunks c ON {belongs} "
                                          f"WHERE k.sha256 = ?", (sha,))]
        removed.extend(ids)
        delete_keyword_rows(conn, ids)
        for part in _in_batches(ids):
            conn.execute(f"DELETE FROM chunks WHERE id IN ({','.join('?' * len(part))})", part)
        conn.execute("DELETE FROM contents WHERE sha256 = ?", (sha,))
    return removed


def iter_vectors(conn: sqlite3.Connection, dim: int, batch: int = 4096, *, after_id: int = 0,
                 up_to_id: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids int64 [n], vectors float32 [n, dim]) in id order, `batch` rows at a time; only ids in
    (`after_id`, `up_to_id`]: a reader loads just the chunks committed since it last looked (ids only grow)."""
    if up_to_id is None:
        cur = conn.execute("SELECT id, vector FROM chunks WHERE id > ? ORDER BY id", (after_id,))
    else:
        cur = conn.execute("SELECT id, vector FROM chunks WHERE id > ? AND id <= ? ORDER BY id", (after_id, up_to_id))
    while rows := cur.fetchmany(batch):
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
        yield ids, vecs


def sample_vectors(conn: sqlite3.Connection, dim: int, n: int, seed: int,
                   up_to_id: int | None = None) -> np.ndarray:
    """The stored vectors (float32 [min(n, chunks), dim], in id order) of `n` chunks drawn uniformly without
    replacement by a generator seeded with `seed` (ids <= `up_to_id`): what the quantiser is trained on, spread
    over the whole knowledge base instead of its first documents."""
    if up_to_id is None:
        cur = conn.execute("SELECT id FROM chunks ORDER BY id")
    else:
        cur = conn.execute("SELECT id FROM chunks WHERE id <= ? ORDER BY id", (up_to_id,))
    ids = np.fromiter((r[0] for r in cur), dtype=np.int64)
    if len(ids) > n:
        ids = np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))
    found = chunk_vectors(conn, ids.tolist())
    if not found:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([found[int(i)] for i in ids if int(i) in found]).astype(np.float32, copy=False)


def add_tombstones(conn: sqlite3.Connection, ids: Iterable[int], generation: int) -> None:
    conn.executemany("INSERT OR REPLACE INTO tombstones(chunk_id, generation) VALUES (?, ?)",
                     ((int(i), generation) for i in ids))


def tombstones_after(conn: sqlite3.Connection, generation: int) -> np.ndarray:
    """Chunk ids removed by commits after `generation` (int64); the table is absent in a KB no writer of this
    version has opened yet: nothing was tombstoned."""
    try:
        rows = conn.execute("SELECT chunk_id FROM tombstones WHERE generation > ?", (generation,)).fetchall()
    except sqlite3.OperationalError:
        return np.empty(0, dtype=np.int64)
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


def prune_tombstones(conn: sqlite3.Connection, up_to_generation: int) -> int:
    """Forget tombstones of commits <= `up_to_generation` (readers older than that reload); returns how many."""
    cur = conn.execute("DELETE FROM tombstones WHERE generation <= ?", (up_to_generation,))
    set_meta(conn, "tombstones_from", str(up_to_generation))
    return cur.rowcount


def get_chunks(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, ChunkRecord]:
    ids = [int(i) for i in ids]
    if not ids:
        return {}
    out: dict[int, ChunkRecord] = {}
    # format 3: the content with the highest first_id <= the chunk's id (one index probe), if its range holds it
    content_of = ("k.sha256 = (SELECT sha256 FROM contents WHERE first_id <= c.id ORDER BY first_id DESC LIMIT 1) "
                  "AND c.id < k.first_id + k.n_chunks" if has_content_ranges(conn) else "k.sha256 = c.sha256")
    for start in range(0, len(ids), 500):  # stay below SQLite's bound-parameter limit
        part = ids[start:start + 500]
        marks = ",".join("?" * len(part))
        rows = conn.execute(
            f"SELECT c.id, k.sha256, c.ordinal, c.text, c.page, c.heading, "
            f"(SELECT group_concat(source, char(0)) FROM (SELECT source FROM documents d "
            f" WHERE d.sha256 = k.sha256 ORDER BY source)) "
            f"FROM chunks c JOIN contents k ON {content_of} WHERE c.id IN ({marks})", part)
        for cid, sha, ordinal, text, page, heading, sources in rows:
            out[cid] = ChunkRecord(cid, sha, ordinal, text, page, heading,
                                   tuple(sources.split("\x00")) if sources else ())
    return out


def chunk_ids(conn: sqlite3.Connection) -> list[int]:
    return [int(r[0]) for r in conn.execute("SELECT id FROM chunks ORDER BY id")]


def chunk_ids_for_sources(conn: sqlite3.Connection, sources: Iterable[str]) -> set[int]:
    ids: set[int] = set()
    belongs = content_join(conn)
    for source in sources:
        ids.update(r[0] for r in conn.execute(
            f"SELECT c.id FROM documents d JOIN contents k ON k.sha256 = d.sha256 JOIN chunks c ON {belongs} "
            f"WHERE d.source = ?", (source,)))
    return ids


def _in_batches(ids: Iterable[int], size: int = 500) -> Iterator[list[int]]:
    """`ids` in lists of at most `size`: stays below SQLite's bound-parameter limit."""
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def fts_match(terms: Iterable[str], max_terms: int = 64) -> str | None:
    """An FTS5 MATCH expression: the distinct `terms` OR-ed, each quoted so no FTS5 syntax leaks through."""
    distinct = list(dict.fromkeys(t for t in terms if t))[:max_terms]
    if not distinct:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in distinct)


def keyword_search(conn: sqlite3.Connection, terms: Iterable[str], k: int,
                   allowed: Iterable[int] | None = None, *, frequencies: TermFrequencies | None = None,
                   approximate_from: int | None = None) -> list[tuple[int, float]]:
    """BM25 over the FTS5 terms: [(chunk id, bm25 score >= 0, higher = better)], best first, at most `k`;
    with `allowed`, only those chunk ids. `frequencies`: a cache of document frequencies kept with `conn`.
    `approximate_from`: from this many indexed rows on, the top k may be approximate when it cannot be proved
    cheaply (`keyword_topk.top_k`); None: always exact."""
    match = fts_match(terms)
    if match is None or k <= 0:
        return []
    # FTS5's bm25() is negated: lower = better.
    if allowed is None:
        from kb_qa.store import keyword_topk

        distinct = list(dict.fromkeys(t for t in terms if t))[:64]  # what fts_match keeps
        with read_snapshot(conn):  # the frequencies, the averages and FTS5's rows all of one committed state
            try:
                df = frequencies.lookup(conn, distinct) if frequencies else document_frequencies(conn, distinct)
                return keyword_topk.top_k(conn, distinct, df, k, approximate_from=approximate_from)
            except sqlite3.OperationalError:  # FTS5's shadow tables not as expected (an older SQLite): plain query
                return keyword_topk.plain(conn, distinct, k)
    out: list[tuple[int, float]] = []
    for part in _in_batches(sorted(set(allowed))):
        marks = ",".join("?" * len(part))
        rows = conn.execute(
            f"SELECT rowid, bm25(chunk_terms) FROM chunk_terms WHERE chunk_terms MATCH ? AND rowid IN ({marks})",
            (match, *part))
        out.extend((int(r), -float(s)) for r, s in rows)
    out.sort(key=lambda pair: -pair[1])
    return out[:k]


@contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """The block's reads see one committed state (a deferred read transaction; in WAL it blocks no writer), or,
    inside the caller's transaction, that one."""
    began = not conn.in_transaction
    if began:
        conn.execute("BEGIN")
    try:
        yield
    finally:
        if began and conn.in_transaction:
            conn.execute("COMMIT")  # nothing was written: ends the read transaction


_VOCAB = "kb_qa_chunk_vocab"  # temp-schema fts5vocab table over chunk_terms, one per connection


def document_frequencies(conn: sqlite3.Connection, terms: Iterable[str]) -> dict[str, int]:
    """{term: chunks containing it} for each of `terms` found, from FTS5's own term index (a temp fts5vocab
    table, created once per connection in the temp schema: nothing is written to the knowledge base). It walks
    each term's whole doclist: O(document frequency), ~0.1 us a posting (34 ms for a term in 320k chunks);
    `TermFrequencies` keeps the counts while nothing is committed."""
    terms = list(dict.fromkeys(terms))
    if not terms:
        return {}
    conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{_VOCAB} USING fts5vocab(main, chunk_terms, row)")
    out: dict[str, int] = {}
    for start in range(0, len(terms), 500):
        part = terms[start:start + 500]
        marks = ",".join("?" * len(part))
        out.update(conn.execute(f"SELECT term, doc FROM temp.{_VOCAB} WHERE term IN ({marks})", part))
    return out


class TermFrequencies:
    """`document_frequencies` counted once per committed state of the database, for ONE connection.

    The keyword index changes only when a transaction commits. `PRAGMA data_version` changes on that connection
    whenever another connection (of any process) has committed since it last looked, and `total_changes` counts
    the connection's own changes: the counts are kept while both are unchanged and dropped the moment either
    moves, so no count survives a commit by anyone. Read both in the same snapshot as the counts are used in
    (`read_snapshot`). Not thread-safe by itself: the caller serialises use of the connection anyway."""

    MAX_TERMS = 100_000  # ~10 MB at most; past it the counts start over

    def __init__(self) -> None:
        self._state: tuple[int, int] | None = None
        self._df: dict[str, int] = {}

    def lookup(self, conn: sqlite3.Connection, terms: Iterable[str]) -> dict[str, int]:
        """{term: document frequency} for each of `terms` found (absent: in no chunk)."""
        terms = list(dict.fromkeys(terms))
        with read_snapshot(conn):  # the state read and the counts made in the same snapshot
            state = (int(conn.execute("PRAGMA data_version").fetchone()[0]), conn.total_changes)
            if state != self._state or len(self._df) > self.MAX_TERMS:
                self._state, self._df = state, {}
            missing = [t for t in terms if t not in self._df]
            if missing:
                found = document_frequencies(conn, missing)
                self._df.update((t, int(found.get(t, 0))) for t in missing)
        return {t: self._df[t] for t in terms if self._df[t]}


def chunk_terms(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, str]:
    """The indexed terms of each chunk as stored at ingest: one string, terms separated by single spaces."""
    out: dict[int, str] = {}
    for part in _in_batches(ids):
        marks = ",".join("?" * len(part))
        for cid, text, blob in conn.execute(f"SELECT id, text, terms FROM chunks WHERE id IN ({marks})", part):
            out[int(cid)] = decode_terms(text, blob)
    return out


def chunk_vectors(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, np.ndarray]:
    """{chunk id: its stored vector (float32 [dim])} for each id that exists."""
    out: dict[int, np.ndarray] = {}
    for part in _in_batches(ids):
        marks = ",".join("?" * len(part))
        rows = conn.execute(f"SELECT id, vector FROM chunks WHERE id IN ({marks})", part).fetchall()
        if rows:
            mat = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
            out.update((int(cid), mat[i]) for i, (cid, _) in enumerate(rows))
    return out
