"""The store at scale: commit cost, search latency, disk and memory as a knowledge base grows (issue 14).

    python bench/bench_scale.py                              # local store, 10^4 and 10^5 chunks
    python bench/bench_scale.py --sizes 10000,100000,1000000  # + 10^6
    python bench/bench_scale.py --vectors random              # isotropic random vectors (no ANN can help them)
    python bench/bench_scale.py --backend milvus --sizes 10000 # the Milvus backend (Milvus Lite in the KB folder)

Synthetic chunks, committed straight through the store's `Writer` (no loaders, no embedding model): each chunk's
text is a passage of ../shared/eval/*/corpus.jsonl cut to --chars characters (cycled, with the chunk number appended
so every content is distinct). Its vector (--vectors): `lowrank` (default), a fast stand-in for a text embedding,
normalize(z W + noise) with z ~ N(0, I_32) and a fixed random W [32 x 384], so the vectors have the low intrinsic
dimension real embeddings have and a query's nearest chunks are meaningfully nearer than the rest (top-1 cosine
~0.68); or `random`, isotropic unit vectors (the worst case, where every chunk is about as far as any other).
Queries are drawn the same way. The FTS terms of a chunk are the passage's terms (cut by jieba once per distinct
passage, memoised) with the chunk number's term in the place the analyser puts it: the same string
`store.terms.fts_document` returns (checked on every 997th chunk), without ~1 ms of jieba per chunk (17 minutes of
filling at 10^6; it happens in put_document, outside the timed commit, either way). The KB is filled in commits of
--batch chunks (one document each); at each size in --sizes the bench reports:

  commit s      wall time of a commit of --batch chunks at that size, median of --repeat (what every ingest pays)
  open s        opening that writer (lock, SQLite quick_check: O(database) per writer, not per commit)
  compact s     `KnowledgeBase.compact` at that size when it is >= --ann-min-chunks (builds the HNSW index), else -
  dense p50     KnowledgeBase.dense_search(k=10), median of --queries, ms (first excluded)
  recall@10     of those searches against an exact scan of every stored vector (1.000 when the search is exact)
  first q       the first dense search after the commit (a new reader: loads the vectors / the index), ms
  keyword p50   KnowledgeBase.keyword_search(k=10) with the terms of a 12-character passage prefix, median, ms, on
                the bench's long-lived reader (warm: its document-frequency cache holds the earlier queries'
                terms; each query runs once). The KB is opened as the app opens it: approximate keyword top k from
                --ann-min-chunks chunks on (store.keyword_topk)
  kw cold       the same queries, each on a freshly opened KnowledgeBase (new connection: empty SQLite page cache
                and document-frequency cache; the OS file cache stays warm), median, ms
  kw rec@10     tie-aware recall@10 of those searches against the exact plain FTS5 query on the same terms: a
                returned chunk counts when its exact BM25 (FTS5's own, for that chunk) is >= the exact 10th score
                - 1e-6 (copies of one passage tie: any 10 of them are a right answer)
  disk/chunk    bytes of the KB folder / chunks, KB (1 KB = 1000 bytes)
  peak RSS      this process's peak resident set so far, MB (ru_maxrss)

Figures depend on the machine and its load (2 shared cores here); run it alone for comparable numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kb_qa.schema import Chunk  # noqa: E402
from kb_qa.store import KnowledgeBase  # noqa: E402
from kb_qa.store import writer as store_writer  # noqa: E402
from kb_qa.store.terms import fold, fts_document, identifier_terms, ngram_terms, search_terms, strip_noise  # noqa: E402

DIM = 384
MODEL = "synthetic-random-384"


def passages(eval_dir: Path, chars: int) -> list[str]:
    texts = []
    for corpus in sorted(eval_dir.glob("*/corpus.jsonl")):
        for line in corpus.read_text(encoding="utf-8").splitlines():
            text = json.loads(line)["text"].strip()
            for start in range(0, max(1, len(text) - chars + 1), chars):
                texts.append(text[start:start + chars])
    if not texts:
        raise SystemExit(f"no passages under {eval_dir} (expected */corpus.jsonl)")
    return texts


class MemoTerms:
    """`fts_document` for the bench's chunk texts ("<passage> #<n>"), the passage's part cut once."""

    def __init__(self):
        self.cache: dict[str, tuple[list[str], list[str], list[str]]] = {}
        self.calls = 0

    def __call__(self, text: str) -> str:
        passage, sep, number = text.rpartition(" #")
        if not sep or not number.isdigit():
            return fts_document(text)
        if passage not in self.cache:
            terms = search_terms(passage)
            folded = fold(strip_noise(passage))
            ids, grams = identifier_terms(folded), ngram_terms(folded)
            self.cache[passage] = (terms[:len(terms) - len(ids) - len(grams)], ids, grams)
        words, ids, grams = self.cache[passage]
        out = " ".join([*words, number, *ids, *grams])
        self.calls += 1
        if self.calls % 997 == 1:
            assert out == fts_document(text), text  # the shortcut must cut exactly what the analyser cuts
        return out


class Vectors:
    """Seeded synthetic 384-d unit vectors: `lowrank` (intrinsic dimension 32, like text embeddings) or `random`."""

    RANK = 32

    def __init__(self, kind: str, seed: int):
        self.kind = kind
        self.rng = np.random.default_rng(seed)
        self.basis = np.random.default_rng(12345).standard_normal((self.RANK, DIM)).astype(np.float32)

    def __call__(self, n: int) -> np.ndarray:
        if self.kind == "random":
            v = self.rng.standard_normal((n, DIM), dtype=np.float32)
        else:
            z = self.rng.standard_normal((n, self.RANK), dtype=np.float32)
            v = z @ self.basis + 0.3 * self.rng.standard_normal((n, DIM), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def exact_top10(kb: KnowledgeBase, queries: np.ndarray) -> list[set[int]]:
    """The true 10 nearest chunks of each query: a scan of every stored vector, a block at a time."""
    from kb_qa.store import records

    conn = records.connect(kb.path / "kb.sqlite")
    best_s = np.full((len(queries), 0), -np.inf)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    try:
        for ids, vecs in records.iter_vectors(conn, DIM, batch=65536):
            s = queries @ vecs.T
            all_s = np.concatenate([best_s, s], axis=1)
            all_i = np.concatenate([best_i, np.broadcast_to(ids, s.shape)], axis=1)
            keep = np.argsort(-all_s, axis=1)[:, :10]
            best_s = np.take_along_axis(all_s, keep, axis=1)
            best_i = np.take_along_axis(all_i, keep, axis=1)
    finally:
        conn.close()
    return [set(row.tolist()) for row in best_i]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def open_kb(root: Path, backend: str, ann_min_chunks: int) -> KnowledgeBase:
    """The bench's KB, opened as the app opens one (`backends.open_knowledge_base`: Milvus Lite in the KB folder
    with no URI; the keyword switch at `ann_min_chunks`)."""
    from kb_qa.settings import StoreSettings
    from kb_qa.store.backends import open_knowledge_base

    settings = StoreSettings(backend=backend, ann_min_chunks=ann_min_chunks)
    return open_knowledge_base(settings, root, "scale", create=True)


class Filler:
    def __init__(self, kb: KnowledgeBase, texts: list[str], batch: int, vectors: Vectors):
        self.kb, self.texts, self.batch, self.vectors = kb, texts, batch, vectors
        self.chunks = 0
        self.docs = 0

    def commit_one(self) -> tuple[float, float]:
        """Add one document of `batch` chunks in one commit; returns (writer open s, commit s)."""
        source = f"doc{self.docs:07d}.txt"
        chunks = [Chunk(text=f"{self.texts[(self.chunks + j) % len(self.texts)]} #{self.chunks + j}", source=source,
                        ordinal=j) for j in range(self.batch)]
        vectors = self.vectors(self.batch)
        opened = time.perf_counter()
        with self.kb.writer(embedding_model=MODEL) as w:
            open_s = time.perf_counter() - opened
            w.put_document(source, f"{self.docs:064x}", self.batch * 300, None, chunks, vectors)
            started = time.perf_counter()
            w.commit()
            elapsed = time.perf_counter() - started
        self.docs += 1
        self.chunks += self.batch
        return open_s, elapsed


def measure(kb: KnowledgeBase, reopen, texts: list[str], queries: int, vectors: Vectors,
            rng: np.random.Generator) -> dict:
    """The search figures of `kb`; `reopen()` opens it again as a new reader would (`open_kb`)."""
    qv = vectors(queries + 1)
    fresh = reopen()  # a new reader: what a restarted server pays
    started = time.perf_counter()
    fresh.dense_search(qv[0], 10)
    first_ms = (time.perf_counter() - started) * 1000
    fresh.close()
    kb.dense_search(qv[0], 10)  # this reader advances to the last commit (its cost is not a search's)
    dense, found = [], []
    for q in qv[1:]:
        started = time.perf_counter()
        hits = kb.dense_search(q, 10)
        dense.append((time.perf_counter() - started) * 1000)
        found.append({i for i, _ in hits})
    truth = exact_top10(kb, qv[1:])
    recall = statistics.mean(len(f & t) / max(1, len(t)) for f, t in zip(found, truth, strict=True))
    keyword, cold, keyword_recall = [], [], []
    picks = rng.integers(0, len(texts), queries)
    term_lists = [list(dict.fromkeys(search_terms(texts[int(i)][:12]))) or ["the"] for i in picks]
    answers = []
    for terms in term_lists:
        started = time.perf_counter()
        answers.append(kb.keyword_search(terms, 10))
        keyword.append((time.perf_counter() - started) * 1000)
    for terms in term_lists:
        fresh = reopen()
        fresh.chunk_count()  # the connection's opening is not the search's
        started = time.perf_counter()
        fresh.keyword_search(terms, 10)
        cold.append((time.perf_counter() - started) * 1000)
        fresh.close()
    if type(kb) is KnowledgeBase:  # the local store (the exact plain query is its own)
        from kb_qa.store import keyword_topk, records

        conn = records.connect(kb.path / "kb.sqlite")
        try:
            for terms, hits in zip(term_lists, answers, strict=True):
                truth = [s for _, s in keyword_topk.plain(conn, terms, 10)]  # the exact query: O(every posting)
                exact = dict(records.keyword_search(conn, terms, len(hits), [i for i, _ in hits]))
                keyword_recall.append(tie_aware_recall([exact.get(i, 0.0) for i, _ in hits], truth))
        finally:
            conn.close()
    return {"first_ms": first_ms, "dense_p50_ms": statistics.median(dense), "recall_at_10": recall,
            "keyword_p50_ms": statistics.median(keyword), "keyword_cold_p50_ms": statistics.median(cold),
            "keyword_recall_at_10": statistics.mean(keyword_recall) if keyword_recall else None}


def tie_aware_recall(returned: list[float], truth: list[float], eps: float = 1e-6) -> float:
    """Recall of a top k whose chunks' EXACT scores are `returned` against the exact top k's scores `truth` (best
    first): a returned chunk is right when it scores at least the exact k-th score - eps, so any of many tied
    copies counts; at most len(truth) of them count. 1.0 when nothing matches and nothing was returned."""
    if not truth:
        return 1.0 if not returned else 0.0
    floor = truth[-1] - eps
    return sum(1 for s in returned[:len(truth)] if s >= floor) / len(truth)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated chunk counts (ascending)")
    parser.add_argument("--batch", type=int, default=4096, help="chunks per commit (default 4096)")
    parser.add_argument("--chars", type=int, default=300, help="characters per chunk text (default 300)")
    parser.add_argument("--queries", type=int, default=50, help="searches per latency figure (default 50)")
    parser.add_argument("--backend", choices=["local", "milvus"], default="local")
    parser.add_argument("--eval-dir", type=Path, default=REPO.parent / "shared" / "eval")
    parser.add_argument("--dir", type=Path, help="keep the KB here (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3,
                        help="commits timed at each size, median reported (one can carry an FTS5 segment merge)")
    parser.add_argument("--vectors", choices=["lowrank", "random"], default="lowrank")
    parser.add_argument("--ann-min-chunks", type=int, default=None,
                        help="compact (build the HNSW index) at sizes >= this, and approximate keyword top k from "
                             "this size on (default: store.ann_min_chunks)")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    texts = passages(args.eval_dir, args.chars)
    store_writer.fts_document = MemoTerms()  # type: ignore[assignment]  # see the module docstring
    if args.ann_min_chunks is None:
        from kb_qa.settings import StoreSettings

        args.ann_min_chunks = StoreSettings().ann_min_chunks

    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        root = args.dir or Path(tmp)
        def reopen() -> KnowledgeBase:
            return open_kb(root, args.backend, args.ann_min_chunks)

        kb = reopen()
        vectors = Vectors(args.vectors, args.seed)
        filler = Filler(kb, texts, args.batch, vectors)
        rng = np.random.default_rng(args.seed + 1)
        rows = []
        print(f"backend={args.backend} batch={args.batch} chunks/commit, {args.chars}-char chunks, {DIM}-d "
              f"{args.vectors} vectors, {len(texts)} distinct passages, ann_min_chunks={args.ann_min_chunks}",
              flush=True)
        header = f"{'chunks':>9} {'commit s':>9} {'open s':>7} {'compact s':>10} {'dense p50':>10} " \
                 f"{'recall@10':>10} {'first q':>9} {'keyword p50':>12} {'kw cold':>9} {'kw rec@10':>10} " \
                 f"{'disk/chunk':>11} {'disk MB':>9} {'peak RSS':>9}"
        print(header, flush=True)
        for size in sizes:
            fill_started = time.perf_counter()
            while filler.chunks + args.repeat * args.batch < size:  # fill up to just below `size` ...
                filler.commit_one()
            fill_s = time.perf_counter() - fill_started
            timed = [filler.commit_one() for _ in range(args.repeat)]  # ... then time the commits that cross it
            open_s = statistics.median(t[0] for t in timed)
            commit_s = statistics.median(t[1] for t in timed)
            compact_s = None
            if args.backend == "local" and filler.chunks >= args.ann_min_chunks:
                started = time.perf_counter()
                kb.compact(ann_min_chunks=args.ann_min_chunks)
                compact_s = time.perf_counter() - started
            figures = measure(kb, reopen, texts, args.queries, vectors, rng)
            disk = folder_bytes(kb.path)
            row = {"chunks": filler.chunks, "commit_s": commit_s, "open_s": open_s, "compact_s": compact_s,
                   **figures, "disk_bytes": disk, "disk_kb_per_chunk": disk / filler.chunks / 1000,
                   "peak_rss_mb": peak_rss_mb(), "fill_s": fill_s}
            rows.append(row)
            compact_text = f"{compact_s:>10.1f}" if compact_s is not None else f"{'-':>10}"
            kw_recall = figures["keyword_recall_at_10"]
            kw_recall_text = f"{kw_recall:>10.3f}" if kw_recall is not None else f"{'-':>10}"
            print(f"{row['chunks']:>9} {commit_s:>9.2f} {open_s:>7.2f} {compact_text} "
                  f"{figures['dense_p50_ms']:>8.1f}ms {figures['recall_at_10']:>10.3f} "
                  f"{figures['first_ms']:>7.0f}ms {figures['keyword_p50_ms']:>10.1f}ms "
                  f"{figures['keyword_cold_p50_ms']:>7.1f}ms {kw_recall_text} "
                  f"{row['disk_kb_per_chunk']:>8.2f} KB {disk / 1e6:>9.1f} {row['peak_rss_mb']:>7.0f}MB", flush=True)
        kb.close()
    if args.json:
        args.json.write_text(json.dumps({"backend": args.backend, "batch": args.batch, "vectors": args.vectors,
                                         "ann_min_chunks": args.ann_min_chunks, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
