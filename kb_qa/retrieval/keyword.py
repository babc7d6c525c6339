"""Keyword side of retrieval: BM25 candidates from the knowledge base's FTS5 index, and a keyword similarity in [0, 1].

Ranking uses SQLite FTS5's `bm25()` (k1 = 1.2, b = 0.75) over the jieba / word terms written at ingest
(`kb_qa.store.terms`), so nothing is rebuilt per question. BM25 is unbounded and its scale depends on the
question and the corpus, so it is not what a threshold is compared with. The keyword *similarity* of a chunk is

    keyword_score(q, c) = sum(idf(t) for t in T(q) if t in c) / sum(idf(t) for t in T(q))        in [0, 1]

where T(q) are the question's distinct search terms and idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5)) (N chunks in
the knowledge base, n_t of them containing t; always > 0). It reads: "the chunk contains the question's words that
carry this share of the question's information". 1.0 = every term of the question occurs in the chunk; frequent words
("的", "the") weigh little, rare ones (names, numbers) weigh much.

Deliberately not here: fusion with the dense side (fusion.py), anything per-question that would scan the corpus,
and any SQL: candidates, N, document frequencies (FTS5's own term index) and stored terms come from the store's
methods (`kb.keyword_search`, `kb.chunk_count`, `kb.document_frequencies`, `kb.chunk_terms`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from kb_qa.store.terms import CJK_CHAR, STOP_WORDS, fold, precise_cut, question_form_rest, search_terms, strip_noise


def query_terms(text: str) -> list[str]:
    """The question's distinct search terms, in order (what both the MATCH and the similarity use); its
    question forms ("哪一位", "几名": `store.terms.question_form_rest`) left out, with the pieces jieba's search mode
    cut from them ("一位" of "哪一位"), but not the noun of "哪些 + noun" ("地方" of "哪些地方")."""
    terms = list(dict.fromkeys(search_terms(text)))
    rests = {t: question_form_rest(t) for t in terms}
    forms = {t: rest for t, rest in rests.items() if rest is not None}
    if not forms:
        return terms
    pieces = {t for t in terms for form, rest in forms.items() if t != form and t in form and t != rest}
    return [t for t in terms if t not in forms and t not in pieces]


def keyword_candidates(kb, text: str, k: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
    """[(chunk id, BM25 >= 0)] best first, at most `k`; with `allowed`, only those chunk ids."""
    if k <= 0 or (allowed is not None and not allowed):
        return []
    terms = query_terms(text)
    if not terms:
        return []
    return kb.keyword_search(terms, k, allowed)


class TermStats:
    """Document frequencies of a question's terms in one KB: the IDF weights of the keyword similarity, and
    FTS5's own BM25 IDF for the largest BM25 the question can reach there."""

    K1 = 1.2  # FTS5's bm25() parameters
    B = 0.75

    def __init__(self, kb, terms: Sequence[str]):
        self.terms = list(terms)
        self.n_docs = kb.chunk_count()  # of the committed version, O(1): the store records it at each commit
        self.df = kb.document_frequencies(self.terms) if self.terms else {}
        n = self.n_docs
        # idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5)): > 0 for every term, even one in every chunk
        self.idf = {t: math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for t, d in self.df.items()}

    def bm25_upper(self) -> float:
        """The BM25 bound sum_t idf_fts5(t) * (k1 + 1) (a chunk with every term, tf -> infinity)."""
        total = 0.0
        for d in self.df.values():
            idf = math.log((self.n_docs - d + 0.5) / (d + 0.5)) if self.n_docs else 0.0
            total += max(idf, 1e-6) * (self.K1 + 1)  # FTS5 floors idf at 1e-6
        return total


def keyword_similarity(idf: dict[str, float], chunk_terms: str | set[str]) -> float:
    """The IDF-weighted share of the question's terms found in the chunk, in [0, 1].
    `chunk_terms`: the chunk's term set, or its stored space-separated term string."""
    total = sum(idf.values())
    if total <= 0:
        return 0.0
    if isinstance(chunk_terms, str):
        padded = f" {chunk_terms} "  # terms never contain spaces: a padded substring test is an exact term match
        found = sum(w for t, w in idf.items() if f" {t} " in padded)
    else:
        found = sum(w for t, w in idf.items() if t in chunk_terms)
    return min(1.0, found / total)


def keyword_similarities(kb, text: str, ids: Iterable[int], stats: TermStats | None = None) -> dict[int, float]:
    """keyword_score for each chunk id (0.0 for chunks sharing no term with the question)."""
    ids = list(ids)
    if not ids:
        return {}
    stats = stats or TermStats(kb, query_terms(text))
    if not stats.terms:
        return {int(i): 0.0 for i in ids}
    texts = kb.chunk_terms(ids)
    return {int(i): keyword_similarity(stats.idf, texts.get(int(i), "")) for i in ids}


_WORDS = re.compile(r"\w+", re.UNICODE)


def content_units(text: str) -> set[str]:
    """What a passage must contain to cover the Chinese question `text`: the pairs of adjacent characters of its
    Chinese content (jieba's precise cut, stop words and punctuation taken out, the pieces between them kept
    together so a pair may span two words) and its words in other scripts (two characters or more, stop words
    out). Character pairs, not terms: a name jieba does not know is cut one way in the question and another in its
    passage ("锦地罗" / "锦地 / 罗"), its pairs are the same. Folded as terms are (NFKC, lower case, Simplified).
    A question without Chinese characters has none: spaces cut its words reliably, the term share already says
    how much of it a passage matches, and its paraphrases ("won" / "win") would read as missing words (measured:
    with word units the English dev set's wrongly refused questions went from 0.7% to 2.7%)."""
    folded = fold(strip_noise(text))
    units: set[str] = set()
    run: list[str] = []
    if not CJK_CHAR.search(folded):
        return units
    pieces = precise_cut(folded)

    def close() -> None:
        joined = "".join(run)
        units.update({joined[i:i + 2] for i in range(len(joined) - 1)} if len(joined) > 1 else {joined} - {""})
        run.clear()

    for piece in pieces:
        rest = question_form_rest(piece)
        if rest is not None:  # "哪一位": nothing; "哪些地方": its noun, no pair across the dropped head
            close()
            run.extend([rest] if rest else [])
            continue
        if CJK_CHAR.search(piece) and piece not in STOP_WORDS and _WORDS.fullmatch(piece):
            run.append(piece)
            continue
        close()
        if not CJK_CHAR.search(piece):
            units.update(w for w in _WORDS.findall(piece) if len(w) > 1 and w not in STOP_WORDS)
    close()
    return units


def coverage(units: set[str], texts: Sequence[str]) -> float:
    """The largest share of `units` (`content_units` of a question) one of `texts` (passage texts, as stored)
    contains, in [0, 1]: how much of the question one passage says. 0 for no units or no texts."""
    return folded_coverage(units, [fold(strip_noise(text)) for text in texts])


def folded_coverage(units: set[str], folded: Sequence[str]) -> float:
    """`coverage` for texts already folded as terms are (`fold(strip_noise(text))`)."""
    if not units or not folded:
        return 0.0
    return max(sum(1 for u in units if u in text) for text in folded) / len(units)
