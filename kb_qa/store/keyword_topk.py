"""The top k of FTS5's BM25 without scoring every chunk that contains a common term.

`SELECT ... WHERE chunk_terms MATCH 'a OR b OR the' ORDER BY bm25(...) LIMIT k` makes FTS5 visit and score every
row containing any term: with "the" or "的" in the query that is most of the KB (O(KB) per question). The score
is a sum over the query's terms, so it splits exactly into R(d), the part of the rare terms, plus C(d), the part
of the common ones, and C(d) <= Σ_common idf_t (k1 + 1) =: UB whatever the chunk (BM25's term factor is below
k1 + 1). So (MaxScore, Turtle & Flood 1995):
  1. FTS5 ranks by R alone, over the rare terms' few postings (ORDER BY bm25): R is exactly FTS5's own number, its
     IDF and length normalisation do not depend on the other terms. FTS5 scores every posting to sort them
     whatever the LIMIT, so ONE query fetches up to MAX_CANDIDATES rows and the rounds below only read further;
  2. C(d) is added for the first m candidates from their stored terms (counting only the common terms), FTS5's
     per-row token count (%_docsize) and average (%_data averages record), with FTS5's constants;
  3. every chunk outside the m has S <= R_m + UB (R_m the m-th R; 0 if fewer than m rows matched): if the k-th
     best S found is at least that, the top k is exact; else m grows (the m already scored are kept), and past
     MAX_CANDIDATES the plain query runs. (Many chunks tied on R, e.g. copies of one passage, need many rounds.)
Terms a tokenizer could split or fold (not one run of ASCII letters/digits or of CJK characters) always count as
rare, so FTS5 scores them itself. Scores equal the plain query's up to float rounding (tested).
"""

from __future__ import annotations

import math
import re
import sqlite3

from kb_qa.store import records

K1, B = 1.2, 0.75  # FTS5 bm25() defaults
RARE_POSTINGS = 2_000  # rare terms: the rarest, while their document frequencies sum to at most this (~3 us each)
MIN_CANDIDATES = 50
MAX_CANDIDATES = 5_000
_SIMPLE = re.compile(r"^(?:[0-9a-z]+|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)$")


def quoted(terms: list[str]) -> str:
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def plain(conn: sqlite3.Connection, terms: list[str], k: int) -> list[tuple[int, float]]:
    rows = conn.execute(
        "SELECT rowid, bm25(chunk_terms) AS s FROM chunk_terms WHERE chunk_terms MATCH ? ORDER BY s LIMIT ?",
        (quoted(terms), k))
    return [(int(rowid), -float(score)) for rowid, score in rows]  # FTS5's bm25() is negated: lower = better


def _varints(blob: bytes) -> list[int]:
    """SQLite's varints (big-endian 7-bit groups, a 9th byte of 8 bits), as FTS5 writes its shadow records."""
    out, i = [], 0
    while i < len(blob):
        value = 0
        for n in range(9):
            byte = blob[i]
            i += 1
            if n == 8:
                value = (value << 8) | byte
                break
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        out.append(value)
    return out


def _averages(conn: sqlite3.Connection) -> tuple[int, float] | None:
    """(rows, average tokens per row) as FTS5's bm25() sees them."""
    row = conn.execute("SELECT block FROM chunk_terms_data WHERE id = 1").fetchone()
    if not row or not row[0]:
        return None
    values = _varints(bytes(row[0]))
    if len(values) < 2 or values[0] <= 0:
        return None
    return values[0], values[1] / values[0]


def _idf(n: int, df: int) -> float:
    idf = math.log((n - df + 0.5) / (df + 0.5))
    return idf if idf > 0 else 1e-6  # FTS5's floor for terms in more than half of the rows


def top_k(conn: sqlite3.Connection, terms: list[str], df: dict[str, int], k: int) -> list[tuple[int, float]]:
    """The plain query's top `k` for the distinct `terms` (with their document frequencies `df`)."""
    # A term the tokenizer folds or splits ("calderón" is indexed as "calderon") has no vocabulary entry under its
    # own spelling: it is never dropped, and always left to FTS5.
    folded = [t for t in terms if not _SIMPLE.match(t)]
    present = folded + sorted((t for t in terms if _SIMPLE.match(t) and df.get(t, 0) > 0), key=lambda t: df[t])
    if not present:
        return []
    rare: list[str] = []
    common: list[str] = []
    postings = 0
    for term in present:
        if not rare or term in folded or postings + df[term] <= RARE_POSTINGS:
            rare.append(term)
            postings += df.get(term, 0)
        else:
            common.append(term)
    averages = _averages(conn) if common else None
    if not common or averages is None:
        return plain(conn, present, k)
    n, avgdl = averages
    idf = {t: _idf(n, df[t]) for t in common}
    bound = sum(idf.values()) * (K1 + 1)
    fetched = plain(conn, rare, MAX_CANDIDATES + 1)  # one FTS5 query: it scores every posting to sort anyway
    scores: dict[int, float] = {}
    m = max(4 * k, MIN_CANDIDATES)
    while fetched:
        rows = fetched[:m]
        scores.update(_add_common(conn, rows[len(scores):], idf, avgdl))  # only the rows not scored yet
        best = sorted(scores.items(), key=lambda kv: -kv[1])[:k]
        outside = (fetched[m][1] if len(fetched) > m else 0.0) + bound  # no chunk outside the m can score more
        if len(best) == k and best[-1][1] >= outside:
            return best
        if len(fetched) <= m:
            break  # every chunk with a rare term is scored; chunks with only common terms might still rank
        if m >= MAX_CANDIDATES:
            break
        m = min(m * 4, MAX_CANDIDATES)
    return plain(conn, present, k)


def _add_common(conn: sqlite3.Connection, rows: list[tuple[int, float]], idf: dict[str, float],
                avgdl: float) -> dict[int, float]:
    if not rows:
        return {}
    ids = [cid for cid, _ in rows]
    texts = records.chunk_terms(conn, ids)  # the keyword index is contentless: the terms live in chunks.terms
    sizes: dict[int, int] = {}
    for start in range(0, len(ids), 500):  # stay below SQLite's bound-parameter limit
        part = ids[start:start + 500]
        marks = ",".join("?" * len(part))
        sizes.update((int(i), _varints(bytes(sz))[0]) for i, sz in
                     conn.execute(f"SELECT id, sz FROM chunk_terms_docsize WHERE id IN ({marks})", part))
    # A common term's count in a row: its whole runs of letters/digits (what unicode61 makes a token), found by
    # one regex per term in C instead of splitting the whole row into tokens in Python.
    finders = {t: re.compile(r"(?<![^\W_])" + re.escape(t) + r"(?![^\W_])") for t in idf}
    scores = {}
    for cid, rare_score in rows:
        text = texts.get(cid) or ""
        norm = K1 * (1 - B + B * sizes.get(cid, 0) / avgdl)
        extra = 0.0
        for t, w in idf.items():
            if t in text:  # a substring test first: most rows lack most common terms
                count = len(finders[t].findall(text))
                if count:
                    extra += w * (count * (K1 + 1)) / (count + norm)
        scores[cid] = rare_score + extra
    return scores
