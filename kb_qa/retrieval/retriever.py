"""Search one or several knowledge bases: dense + keyword candidates -> fusion -> (rerank) -> threshold -> merge.

    Retriever(app).search(query, kbs=None, top_k=None, score_threshold=None, files=None) -> list[Source]
    Retriever(app).search_detailed(...) -> SearchResult (sources + timings + the query actually used)
    KnowledgeBaseRetriever(app=app, kbs=[...])      the same as a LangChain `BaseRetriever`

What `Source.score` means (and `retrieval.score_threshold` is compared with): the KB's calibrated estimate, in
[0, 1], that this passage is the one the question is about (calibration.py: a per-KB logistic model of the dense
cosine, the IDF-weighted term share and the normalised BM25, lowered for a question the KB as a whole covers badly:
no passage matching much of it, none standing out, none saying most of its words, or terms the KB does not know at
all: `calibration.kb_evidence`); with a reranker
configured, the cross-encoder's relevance probability (rerank.py).
Sources come in the order of their scores. 0 keeps everything; the default refuses a question whose best passage
is under it. When nothing is left, the answering chain replies that the KB has no answer.

Duplicates and overlaps: a content stored under two paths is one chunk (the store keeps one copy per content);
identical chunk text found in several KBs is kept once; neighbouring chunks of one document (consecutive
ordinals, e.g. sharing the splitter's overlap) that both rank are merged into one passage with the overlap
removed, taking the better rank and score. So `top_k` counts distinct passages.

Deliberately not here: rewriting the question (kb_qa.qa.rewrite) and prompt packing (kb_qa.qa.packing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from kb_qa.retrieval.calibration import Evidence, calibration_for, kb_evidence
from kb_qa.retrieval.dense import cosines, dense_candidates
from kb_qa.retrieval.fusion import FusedHit, fuse_calibrated
from kb_qa.retrieval.keyword import TermStats, content_units, keyword_candidates, keyword_similarities, query_terms
from kb_qa.schema import Source

log = logging.getLogger(__name__)

RERANK_POOL = 30  # fused candidates a reranker re-scores (at least 2 x top_k)
MAX_MERGED = 5  # neighbouring chunks joined into one passage at most (a whole long document never becomes one)


@dataclass
class SearchResult:
    query: str
    sources: list[Source]
    timings_ms: dict[str, float] = field(default_factory=dict)  # embed, dense, keyword, fuse, rerank, total
    candidates: int = 0  # distinct chunks the retrievers proposed before fusion


class Retriever:
    """Retrieval over the knowledge bases of an `App` (its embedding model, its settings as defaults)."""

    def __init__(self, app):
        self.app = app

    # -- public --------------------------------------------------------------------------------------------
    def search(self, query: str, kbs: str | Sequence[str] | None = None, **options) -> list[Source]:
        return self.search_detailed(query, kbs, **options).sources

    def search_detailed(self, query: str, kbs: str | Sequence[str] | None = None, *, settings=None,
                        top_k: int | None = None, score_threshold: float | None = None,
                        files: Iterable[str] | None = None, dense: bool | None = None,
                        keyword: bool | None = None) -> SearchResult:
        """The best `top_k` passages of `kbs` (default: settings.default_kb) for `query`.

        `settings`: a `RetrievalSettings` (default: the app's); the keyword arguments override single fields.
        `files`: only chunks of these document paths (as the KB lists them), in every KB searched.
        """
        s = settings or self.app.settings.retrieval
        top_k = s.top_k if top_k is None else int(top_k)
        threshold = s.score_threshold if score_threshold is None else float(score_threshold)
        use_dense = s.dense if dense is None else bool(dense)
        use_keyword = s.keyword if keyword is None else bool(keyword)
        if not (use_dense or use_keyword):
            raise ValueError("both retrievers are switched off: enable retrieval.dense or retrieval.keyword")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {threshold}")
        names = _kb_names(kbs, self.app.settings.default_kb)
        n = max(s.candidates, top_k)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        query = (query or "").strip()
        if not query or top_k <= 0:
            return SearchResult(query, [], {"total": 0.0})

        kbs_open = {name: self.app.kb(name) for name in names}
        allowed = None
        if files is not None:
            paths = list(files)
            allowed = {name: kb.chunk_ids_for_sources(paths) for name, kb in kbs_open.items()}

        # Candidates: each retriever's top n over all KBs (cosines are comparable across KBs built with one model).
        dense_list = keyword_list = None
        qvec = None
        kb_dense: dict[str, list[tuple[int, float]]] = {}  # each KB's own candidate lists (its Evidence)
        kb_keyword: dict[str, list[tuple[int, float]]] = {}
        if use_dense:
            t = time.perf_counter()
            embeddings = self.app.embeddings
            qvec = embeddings.encode_queries([query])[0]
            timings["embed"] = _ms(t)
            t = time.perf_counter()
            merged = []
            for name, kb in kbs_open.items():
                kb.check_embedding(embeddings.model_name, embeddings.dimension, getattr(embeddings, "identity", None))
                found_dense = dense_candidates(kb, qvec, n, allowed.get(name) if allowed else None)
                kb_dense[name] = found_dense
                merged += [((name, cid), cos) for cid, cos in found_dense]
            dense_list = sorted(merged, key=lambda p: -p[1])[:n]
            timings["dense"] = _ms(t)
        stats: dict[str, TermStats] = {}
        bm25_share: dict = {}
        if use_keyword:
            t = time.perf_counter()
            terms = query_terms(query)
            merged = []
            for name, kb in kbs_open.items():
                stats[name] = st = TermStats(kb, terms)
                found = keyword_candidates(kb, query, n, allowed.get(name) if allowed else None)
                upper = st.bm25_upper() or 1.0  # BM25 of different KBs has different IDFs: compare shares
                kb_keyword[name] = found
                for cid, raw in found:
                    bm25_share[(name, cid)] = min(1.0, raw / upper)
                merged += [((name, cid), raw / upper) for cid, raw in found]
            keyword_list = sorted(merged, key=lambda p: -p[1])[:n]
            timings["keyword"] = _ms(t)

        # Exact similarities of every candidate on both sides, then fusion.
        t = time.perf_counter()
        keys = list(dict.fromkeys([k for k, _ in (dense_list or [])] + [k for k, _ in (keyword_list or [])]))
        by_kb: dict[str, list[int]] = {}
        for name, cid in keys:
            by_kb.setdefault(name, []).append(cid)
        dense_sim: dict = {}
        keyword_sim: dict = {}
        for name, ids in by_kb.items():
            kb = kbs_open[name]
            if use_dense:
                assert qvec is not None  # embedded above whenever use_dense
                dense_sim.update({(name, c): v for c, v in cosines(kb, qvec, ids).items()})
            if use_keyword:
                keyword_sim.update({(name, c): v for c, v in
                                    keyword_similarities(kb, query, ids, stats[name]).items()})
        models = {name: self.calibration(kb, s.candidates) for name, kb in kbs_open.items()}
        # What each KB offers the question as a whole: lowers refusal's probability, never changes the order.
        # Read only with the keyword side on (fusion ignores it otherwise).
        units = content_units(query) if stats else set()  # the question's, the same for every KB
        ev: dict[str, Evidence | None] = {
            name: kb_evidence(kb, query, stats[name], kb_keyword.get(name, []), kb_dense.get(name, []), units=units)
            if name in stats else None for name, kb in kbs_open.items()}
        fused = fuse_calibrated(dense_list, keyword_list, dense_sim, keyword_sim, bm25_share,
                                lambda key: models[key[0]], None,  # the unknown-term share is in the evidence
                                lambda key: ev[key[0]])
        timings["fuse"] = _ms(t)

        reranker = self._reranker(s)
        if reranker is not None and fused:
            t = time.perf_counter()
            fused = self._rerank(reranker, query, fused, kbs_open, max(RERANK_POOL, 2 * top_k))
            timings["rerank"] = _ms(t)

        t = time.perf_counter()
        if score_threshold is None and not any(m.questions for m in models.values()):
            # A KB too small to measure (under 3 chunks, or no usable sentence) is scored by the prior alone: its
            # probabilities carry no evidence about this KB, so the default threshold does not refuse on them.
            # (An explicit score_threshold still applies.) Refusal starts once the KB can be calibrated.
            threshold = 0.0
        sources = _select(fused, kbs_open, top_k, threshold, set(paths) if files is not None else None)
        timings["select"] = _ms(t)
        timings["total"] = _ms(started)
        return SearchResult(query, sources, timings, len(keys))

    def calibration(self, kb, candidates: int = 50):
        """`kb`'s relevance model (measured once per KB content, stored in the KB; calibration.py)."""
        return calibration_for(kb, self.app.embeddings, candidates)

    # -- reranking -----------------------------------------------------------------------------------------
    def _reranker(self, s):
        if not s.reranker_model:
            return None
        from kb_qa.retrieval.rerank import get_reranker

        return get_reranker(s.reranker_model, self.app.settings.embedding.device)

    @staticmethod
    def _rerank(reranker, query: str, fused: list[FusedHit], kbs_open, pool: int) -> list[FusedHit]:
        head = fused[:pool]
        texts = _chunk_records(head, kbs_open)
        present = [h for h in head if h.key in texts]
        probs = reranker.score(query, [texts[h.key].text for h in present])
        for hit, p in zip(present, probs, strict=True):
            hit.score = p
        return sorted(present, key=lambda h: -h.score)


# ----------------------------------------------------------------------------------------------------------
def _select(fused: list[FusedHit], kbs_open, top_k: int, threshold: float,
            files: set[str] | None = None) -> list[Source]:
    """Walk the ranking: nothing at all when the best chunk scores under the threshold (the question is
    refused), else drop duplicate texts, merge neighbours, stop at top_k.
    A content stored under several paths is cited by its first path (in `files`, when filtering)."""
    if not fused or fused[0].score < threshold:
        return []
    groups: list[_Group] = []
    seen_text: set[str] = set()
    batch = max(3 * top_k, 30)
    for start in range(0, len(fused), batch):
        part = fused[start:start + batch]
        records = _chunk_records(part, kbs_open)
        for hit in part:
            rec = records.get(hit.key)
            if rec is None:  # removed by a concurrent commit since the search
                continue
            text_key = rec.text.strip()
            if text_key in seen_text:
                continue
            seen_text.add(text_key)
            for i, group in enumerate(groups):
                if group.try_add(hit, rec):
                    # The new chunk may bridge this group and a later one of the same document: join them.
                    for j in range(len(groups) - 1, i, -1):
                        if group.absorb(groups[j]):
                            del groups[j]
                    break
            else:
                if len(groups) >= top_k:
                    return [g.source(files) for g in groups]
                groups.append(_Group(hit, rec))
    return [g.source(files) for g in groups]


def _kb_chunk(hit: FusedHit) -> tuple[str, int]:
    """The (KB name, chunk id) this retriever fuses hits under (fusion treats keys as opaque)."""
    return cast(tuple[str, int], hit.key)


def _chunk_records(hits: Sequence[FusedHit], kbs_open) -> dict:
    by_kb: dict[str, list[int]] = {}
    for hit in hits:
        name, cid = _kb_chunk(hit)
        by_kb.setdefault(name, []).append(cid)
    out = {}
    for name, ids in by_kb.items():
        for cid, rec in kbs_open[name].get_chunks(ids).items():
            out[(name, cid)] = rec
    return out


class _Group:
    """Consecutive chunks of one document content that all ranked: one passage, placed where its best chunk
    ranked, scored by its best-scoring chunk."""

    def __init__(self, hit: FusedHit, rec):
        self.kb, self.head_id = _kb_chunk(hit)
        self.sha, self.page = rec.sha256, rec.page
        self.parts = {rec.ordinal: rec}
        self.score = hit.score
        self.dense = hit.dense_score
        self.keyword = hit.keyword_score

    def try_add(self, hit: FusedHit, rec) -> bool:
        if _kb_chunk(hit)[0] != self.kb or rec.sha256 != self.sha or rec.page != self.page:
            return False
        if rec.ordinal not in (min(self.parts) - 1, max(self.parts) + 1) or len(self.parts) >= MAX_MERGED:
            return False
        self.parts[rec.ordinal] = rec
        self.score = max(self.score, hit.score)
        self.dense = _max(self.dense, hit.dense_score)
        self.keyword = _max(self.keyword, hit.keyword_score)
        return True

    def absorb(self, other: _Group) -> bool:
        """Take in `other` if it continues this passage (same document, touching ordinals)."""
        if (other.kb, other.sha, other.page) != (self.kb, self.sha, self.page):
            return False
        if min(other.parts) != max(self.parts) + 1 and max(other.parts) != min(self.parts) - 1:
            return False
        if len(self.parts) + len(other.parts) > MAX_MERGED:
            return False
        self.parts.update(other.parts)
        self.score = max(self.score, other.score)
        self.dense = _max(self.dense, other.dense)
        self.keyword = _max(self.keyword, other.keyword)
        return True

    def source(self, files: set[str] | None = None) -> Source:
        ordered = [self.parts[o] for o in sorted(self.parts)]
        text = ordered[0].text
        for rec in ordered[1:]:
            text = join_overlapping(text, rec.text)
        first = ordered[0]
        heading = first.heading or next((r.heading for r in ordered if r.heading), None)
        paths = [p for p in first.sources if files is None or p in files] or list(first.sources) or [""]
        return Source(kb=self.kb, source=paths[0], text=text,
                      score=round(float(self.score), 6), page=first.page, heading=heading, chunk_id=self.head_id,
                      dense_score=_round(self.dense), keyword_score=_round(self.keyword))


def join_overlapping(left: str, right: str, max_overlap: int = 2000) -> str:
    """`left` + `right` without the text they share (the longest suffix of left that is a prefix of right);
    with no overlap, joined by a newline."""
    limit = min(len(left), len(right), max_overlap)
    for size in range(limit, 0, -1):
        if left.endswith(right[:size]):
            return left + right[size:]
    return left + "\n" + right


def _max(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _round(value):
    return None if value is None else round(float(value), 6)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


def _kb_names(kbs, default: str) -> list[str]:
    if kbs is None or kbs == [] or kbs == ():
        return [default]
    if isinstance(kbs, str):
        return [kbs]
    return list(dict.fromkeys(kbs))


def retriever_for(app) -> Retriever:
    """The app's retriever: `app.retriever` (App owns it). Kept for callers not yet moved to `app.retriever`."""
    return app.retriever


# ----------------------------------------------------------------------------------------------------------
class KnowledgeBaseRetriever(BaseRetriever):
    """LangChain retriever over kb_qa knowledge bases: `KnowledgeBaseRetriever(app=App(), kbs=["manuals"])`.

    Each `Document` carries the passage text and metadata: kb, source, page, heading, score, dense_score,
    keyword_score, chunk_id."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    app: Any
    kbs: list[str] | None = None
    top_k: int | None = None
    score_threshold: float | None = None
    files: list[str] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun
                                ) -> list[Document]:
        sources = self.app.retriever.search(query, self.kbs, top_k=self.top_k,
                                                 score_threshold=self.score_threshold, files=self.files)
        return [Document(page_content=s.text, metadata={
            "kb": s.kb, "source": s.source, "page": s.page, "heading": s.heading, "score": s.score,
            "dense_score": s.dense_score, "keyword_score": s.keyword_score, "chunk_id": s.chunk_id,
        }) for s in sources]
