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
Terms a tokenizer could split or fold (not one run of lowercase ASCII letters/digits, CJK characters and the analyser's
private-use markers) always count as rare, so FTS5 scores them itself. Scores equal the plain query's up to float
rounding (tested).

Past a size (`approximate_from` indexed rows: `store.ann_min_chunks`, the switch the dense side has), the plain
query -- O(every posting of every term), 0.3-1.3 s at 10^6 chunks -- never runs for a query of several terms;
instead (Elasticsearch's "common terms" query: high-frequency terms only score chunks that match a low-frequency
term):
  - the MaxScore rounds stop at APPROXIMATE_CANDIDATES candidates; if the top k is not proved by then (e.g. ~914
    copies of one passage tied on R: no bound separates them), the best of the candidates scored with every term
    is returned: the rare terms' chunks, spread over distinct R (`_spread`), and up to a quarter of the budget
    more holding all (or all but one) of the terms, as the rarest term can be a fragment the best chunks lack.
    Where the top k is provable within the first round the result is the exact one;
  - when even the rarest term has more than APPROXIMATE_RARE_POSTINGS postings (FTS5 would score each, ~3 us),
    the candidates are the chunks holding all the terms, then (if fewer than k) all but one of them, then the
    rarest term: FTS5 finds them without scoring (it skips through the doclists: ~1-5 ms), at most the budget,
    in rowid order, and each is scored exactly with every term from its stored terms.
Every score returned is the chunk's exact BM25; what may differ from the plain query is which chunks are returned
(bench/bench_scale.py measures a tie-aware recall@10 against it). A query of one term stays exact.
"""

from __future__ import annotations

import math
import re
import sqlite3
import unicodedata

from kb_qa.store import records

K1, B = 1.2, 0.75  # FTS5 bm25() defaults
RARE_POSTINGS = 2_000  # rare terms: the rarest, while their document frequencies sum to at most this (~3 us each)
MIN_CANDIDATES = 50
MAX_CANDIDATES = 5_000
APPROXIMATE_CANDIDATES = 200  # past the size: chunks scored with every term at most (~10-20 us each, warm)
APPROXIMATE_RARE_POSTINGS = 5_000  # past the size: the most postings FTS5 is asked to rank (~3 us each)
# One unicode61 token that tokenizer indexes unchanged: lowercase ASCII letters/digits, CJK ideographs and the
# analyser's private-use markers (store.terms: identifier joins, n-gram prefix), in any mix (one run of token chars).
_SIMPLE = re.compile(r"^[0-9a-z\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ue000-\ue002]+$")


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


def top_k(conn: sqlite3.Connection, terms: list[str], df: dict[str, int], k: int, *,
          approximate_from: int | None = None) -> list[tuple[int, float]]:
    """The plain query's top `k` for the distinct `terms` (with their document frequencies `df`); from
    `approximate_from` indexed rows on, possibly approximate (see the module docstring)."""
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
    approximate = approximate_from is not None and n >= approximate_from
    budget = min(max(APPROXIMATE_CANDIDATES, 4 * k), MAX_CANDIDATES) if approximate else MAX_CANDIDATES
    # Every term's weight, for the candidates scored from 0 past the size (no folded term there: all have a df)
    every = {t: _idf(n, df[t]) for t in present if t in df} if approximate else {}
    if approximate and not folded and postings > APPROXIMATE_RARE_POSTINGS:  # every term frequent
        return _conjunctive(conn, present, every, k, budget, avgdl)
    idf = {t: _idf(n, df[t]) for t in common}
    bound = sum(idf.values()) * (K1 + 1)
    fetched = plain(conn, rare, MAX_CANDIDATES + 1)  # one FTS5 query: it scores every posting to sort anyway
    scores: dict[int, float] = {}
    m = max(4 * k, MIN_CANDIDATES)
    if approximate:
        m = min(m, budget // 2)  # one round, the rest of the budget for `_spread`
    while fetched:
        rows = fetched[:m]
        scores.update(_add_common(conn, rows[len(scores):], idf, avgdl))  # only the rows not scored yet
        best = sorted(scores.items(), key=lambda kv: -kv[1])[:k]
        outside = (fetched[m][1] if len(fetched) > m else 0.0) + bound  # no chunk outside the m can score more
        if len(best) == k and best[-1][1] >= outside:
            return best  # proved: the exact top k
        if approximate:
            extra = 0
            if not folded:  # (`common` is not empty: there are two terms or more)
                # The rarest term can be a stray fragment (a question cut mid-word) the best chunks lack: the
                # chunks holding (all but one of) the terms are candidates too, each scored with every term.
                held = [c for c in _holding_most(conn, present, k, max(2 * k, budget // 4), rarest_last=False)
                        if c not in scores]
                scores.update(_add_common(conn, [(c, 0.0) for c in held], every, avgdl))
                extra = len(held)
            return _spread(conn, fetched, scores, idf, avgdl, k, budget + extra)
        if len(fetched) <= m:
            break  # every chunk with a rare term is scored; chunks with only common terms might still rank
        if m >= MAX_CANDIDATES:
            break
        m = min(m * 4, MAX_CANDIDATES)
    return plain(conn, present, k)


def _spread(conn: sqlite3.Connection, fetched: list[tuple[int, float]], scores: dict[int, float],
            idf: dict[str, float], avgdl: float, k: int, budget: int) -> list[tuple[int, float]]:
    """Past the size, when the first round did not prove the top k: the best of at most `budget` candidates that
    hold a rare term (`fetched`: by R, best first; `scores`: those already scored with every term), spent on
    distinct R first. Chunks tied on R are most often copies (the same passage in many files), and the first
    `budget` rows by R can all be copies of one passage while the next R's chunks score more in all: so one
    chunk of each R value is scored first (half the budget left), then the other chunks of the best-scoring R
    values until k chunks are in hand."""
    groups: list[list[int]] = []  # chunk ids of equal R, in R order
    last = None
    for cid, r in fetched:
        if last is None or abs(r - last) > 1e-9 * max(1.0, abs(r)):
            groups.append([])
            last = r
        groups[-1].append(cid)
    rare_score = dict(fetched)
    firsts = [g[0] for g in groups if not any(c in scores for c in g)][:max(0, budget - len(scores)) // 2]
    scores.update(_add_common(conn, [(c, rare_score[c]) for c in firsts], idf, avgdl))
    ranked = sorted((g for g in groups if any(c in scores for c in g)),
                    key=lambda g: -max(scores[c] for c in g if c in scores))
    more: list[int] = []
    room = budget - len(scores)
    held = 0
    for g in ranked:
        new = [c for c in g if c not in scores][:min(k, room - len(more))]
        more.extend(new)
        held += sum(1 for c in g if c in scores) + len(new)
        if held >= k or len(more) >= room:
            break
    scores.update(_add_common(conn, [(c, rare_score[c]) for c in more], idf, avgdl))
    return sorted(scores.items(), key=lambda kv: -kv[1])[:k]


def _conjunctive(conn: sqlite3.Connection, present: list[str], every: dict[str, float], k: int, budget: int,
                 avgdl: float) -> list[tuple[int, float]]:
    """Past the size, when every term is frequent: up to `budget` chunks holding all of `present` (rarest
    first), then all but one, then the rarest term, found by FTS5 without ranking; each scored exactly with
    every term (the rare part 0: `_add_common` counts them all)."""
    found = _holding_most(conn, present, k, budget, rarest_last=True)
    scores = _add_common(conn, [(cid, 0.0) for cid in found], every, avgdl)
    return sorted(scores.items(), key=lambda kv: -kv[1])[:k]


def _holding_most(conn: sqlite3.Connection, present: list[str], k: int, limit: int, *,
                  rarest_last: bool) -> list[int]:
    """Up to `limit` chunk ids, in rowid order: those holding every term of `present`, then (while fewer than k)
    those holding all but one, then (`rarest_last`) those holding the rarest. FTS5 finds them without scoring,
    skipping through the doclists (~1-5 ms at 10^6 chunks)."""
    levels = [" AND ".join(quoted([t]) for t in present)]
    if 2 < len(present) <= 12:  # "all but one": one AND per term left out (12 terms: 12 small skips)
        levels.append(" OR ".join("(" + " AND ".join(quoted([t]) for t in present if t != out) + ")"
                                  for out in present))
    if rarest_last:
        levels.append(quoted([present[0]]))
    found: dict[int, None] = {}
    for expression in levels:  # each level's rows include the earlier levels' (rowid order): LIMIT the budget
        for (rowid,) in conn.execute("SELECT rowid FROM chunk_terms WHERE chunk_terms MATCH ? LIMIT ?",
                                     (expression, limit)):
            found.setdefault(int(rowid), None)
            if len(found) >= limit:
                break
        if len(found) >= k:
            break
    return list(found)


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
    scores = {}
    for cid, rare_score in rows:
        text = _as_indexed(texts.get(cid) or "")
        norm = K1 * (1 - B + B * sizes.get(cid, 0) / avgdl)
        extra = 0.0
        for t, w in idf.items():
            count = _token_count(text, t)
            if count:
                extra += w * (count * (K1 + 1)) / (count + norm)
        scores[cid] = rare_score + extra
    return scores


def _token_count(text: str, term: str) -> int:
    """How many of unicode61's tokens of `text` are `term` (one of _SIMPLE's: token characters only): its
    occurrences with no token character either side. unicode61's token characters are letters, digits AND
    private-use ones (the analyser's markers: "\ue002町子" is one token, not "町子"); `text` as `_as_indexed` gives it.
    str.find in C, the sides checked in Python: ~5 us a row for 8 terms (a regex with a look-behind: ~30)."""
    count, size, end = 0, len(term), len(text)
    i = text.find(term)
    while i >= 0:
        j = i + size
        if (i == 0 or not _is_token_char(text[i - 1])) and (j == end or not _is_token_char(text[j])):
            count += 1
        i = text.find(term, j)  # an occurrence starting inside this one has a token character before it
    return count


def _is_token_char(c: str) -> bool:
    """unicode61's token characters: categories L*, N* and Co (after `_as_indexed`)."""
    if c == " ":
        return False
    if c < "\x80":
        return c.isalnum()
    category = unicodedata.category(c)
    return category[0] in "LN" or category == "Co"


_DIACRITICS = re.compile(r"[\u00c0-\u024f\u0300-\u036f\u1e00-\u1eff]")  # Latin letters unicode61 folds, marks


def _as_indexed(text: str) -> str:
    """`text` as unicode61 remove_diacritics=2 compares it, for the Latin script (the only one whose folding can
    make an ASCII term): "café" is the token "cafe", "a\u0301b" is "ab". The stored terms are NFKC and lower case
    already (store.terms.fold)."""
    if text.isascii() or not _DIACRITICS.search(text):
        return text
    return "".join(c for c in unicodedata.normalize("NFD", text) if not "\u0300" <= c <= "\u036f")
