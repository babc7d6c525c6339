"""Compare fusion rules on BEIR folders, over the real knowledge base (same splitter, embedding model, FTS5).

    python bench/bench_retrieval_fusion.py ../shared/eval/cmrc2018_trial ../shared/eval/xquad_zh \
        ../shared/eval/xquad_en --kb-dir /tmp/kbqa-fusion

For each question the dense and keyword candidate lists (retrieval.candidates each) are collected once, with the
exact similarities the product computes; then every rule ranks the union, passages are deduplicated by document,
and hit@1/5/10 and MRR@10 are reported per rule and set. Then refusal with the default settings: every other set's
questions are asked against each set's KB (`refused_off_topic`: no passage reaches retrieval.score_threshold) and
each set's own questions (`refused_answerable`), by the product's calibrated probability (unknown-term share
included) and, for comparison, by the ranking model alone (`no U`). `--limit N`: the first N questions per set.
`calibrated` is the product's rule (kb_qa.retrieval.calibration), `mixture` the previous default;
the others are the usual alternatives (RRF k=60, Qdrant's DBSF, z-score sum, min-max sum), the mixture without
weights or weighted by peak share, ranking by the product's score itself, and (for comparison only) the mixture at
temperature 2 std. Nothing is tuned here: each rule has its textbook constants.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def collect(app, bench, kb_name, names, queries=None):
    """Per question: (gold ids, dense [(cid, cos)], keyword [(cid, bm25 share)], dense_sim, keyword_sim, pool,
    (unknown-term share U, the KB's `Evidence` as the retriever computes it)), and the doc of each cid.
    `queries`: other questions (off-topic: no gold ids)."""
    from kb_qa.retrieval.calibration import kb_evidence, unknown_share
    from kb_qa.retrieval.dense import cosines, dense_candidates
    from kb_qa.retrieval.keyword import TermStats, keyword_candidates, keyword_similarities, query_terms

    kb = app.kb(kb_name)
    n = app.settings.retrieval.candidates
    emb = app.embeddings
    asked = bench.queries if queries is None else queries
    vectors = emb.encode_queries([text for _, text in asked])
    rows = []
    doc_of: dict[int, str] = {}
    for (qid, text), qvec in zip(asked, vectors, strict=True):
        dense = dense_candidates(kb, qvec, n)
        stats = TermStats(kb, query_terms(text))
        keyword = keyword_candidates(kb, text, n)
        ev = kb_evidence(kb, text, stats, keyword, dense)
        ids = list(dict.fromkeys([c for c, _ in dense] + [c for c, _ in keyword]))
        missing = [c for c in ids if c not in doc_of]
        for cid, rec in kb.get_chunks(missing).items():
            doc_of[cid] = names.get(rec.sources[0]) if rec.sources else None
        upper = stats.bm25_upper() or 1.0
        keyword = [(c, s / upper) for c, s in keyword]  # BM25 as a share of the question's bound (monotone)
        rows.append((bench.qrels[qid] if queries is None else set(), dense, keyword, cosines(kb, qvec, ids),
                     keyword_similarities(kb, text, ids, stats), min(n, stats.n_docs),
                     (unknown_share(stats.idf, stats.df), ev)))
    return rows, doc_of


def _z(values):
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / len(values)) or 1.0
    return m, sd


def rule_dense(d, k, ds, ks, pool):
    return [c for c, _ in d]


def rule_keyword(d, k, ds, ks, pool):
    return [c for c, _ in k]


def rule_rrf(d, k, ds, ks, pool, c=60):
    score: dict[int, float] = {}
    for lst in (d, k):
        for rank, (cid, _) in enumerate(lst, start=1):
            score[cid] = score.get(cid, 0.0) + 1.0 / (c + rank)
    return sorted(score, key=lambda x: -score[x])


def rule_dbsf(d, k, ds, ks, pool):
    """Qdrant's distribution-based score fusion: (s - (mu - 3 sd)) / (6 sd), clipped to [0, 1], summed."""
    score: dict[int, float] = {}
    for lst in (d, k):
        if not lst:
            continue
        m, sd = _z([s for _, s in lst])
        for cid, s in lst:
            score[cid] = score.get(cid, 0.0) + min(1.0, max(0.0, (s - (m - 3 * sd)) / (6 * sd)))
    return sorted(score, key=lambda x: -score[x])


def rule_zsum(d, k, ds, ks, pool):
    score: dict[int, float] = {}
    for lst in (d, k):
        if len(lst) < 2:
            continue
        m, sd = _z([s for _, s in lst])
        low = min((s - m) / sd for _, s in lst)
        for cid, s in lst:
            score[cid] = score.get(cid, low) + (s - m) / sd - low
    return sorted(score, key=lambda x: -score[x])


def rule_minmax(d, k, ds, ks, pool):
    score: dict[int, float] = {}
    for lst in (d, k):
        if not lst:
            continue
        lo, hi = min(s for _, s in lst), max(s for _, s in lst)
        for cid, s in lst:
            score[cid] = score.get(cid, 0.0) + ((s - lo) / (hi - lo) if hi > lo else 1.0)
    return sorted(score, key=lambda x: -score[x])


def rule_linear_similarity(d, k, ds, ks, pool):
    """Rank by the product's score itself (w_d * dense_score + w_k * keyword_score)."""
    from kb_qa.retrieval.fusion import fuse

    hits = fuse(d, k, ds, ks, keyword_pool=pool)
    return [h.key for h in sorted(hits, key=lambda h: -h.score)]


_CALIBRATION = {}  # the current set's Calibration (set in main)


def rule_calibrated(d, k, ds, ks, pool):
    """The product's rule: the KB's calibrated relevance probability (kb_qa.retrieval.calibration)."""
    from kb_qa.retrieval.fusion import fuse_calibrated

    cal = _CALIBRATION["current"]
    return [h.key for h in fuse_calibrated(d, k, ds, ks, dict(k), lambda key: cal)]


def rule_mixture(d, k, ds, ks, pool):
    """The previous default: per-list softmax(z) shares, each list weighted by its confidence (1 - entropy)."""
    from kb_qa.retrieval.fusion import fuse

    return [h.key for h in fuse(d, k, ds, ks, keyword_pool=pool)]


def _mixture(d, k, pool, weight="equal", temperature=1.0):
    from kb_qa.retrieval.fusion import softmax_shares

    lists = [d, k]
    shares = [softmax_shares([s / temperature for _, s in d]),
              softmax_shares([s / temperature for _, s in k], pool=pool)]
    if weight == "peak":
        w = [max(sh, default=0.0) for sh in shares]
    else:
        w = [1.0 if sh else 0.0 for sh in shares]
    score: dict[int, float] = {}
    for lst, sh, wr in zip(lists, shares, w, strict=True):
        for (cid, _), p in zip(lst, sh, strict=False):
            score[cid] = score.get(cid, 0.0) + wr * p
    return sorted(score, key=lambda x: -score[x])


def rule_mixture_peak_weighted(d, k, ds, ks, pool):
    """Each list's vote weighted by its peak share (the score's weights)."""
    return _mixture(d, k, pool, "peak")


def rule_mixture_unweighted(d, k, ds, ks, pool):
    """Mean of the two lists' shares (equal votes)."""
    return _mixture(d, k, pool, "equal")


def rule_mixture_t2(d, k, ds, ks, pool):
    """The mixture at temperature 2 std (a tuned variant, for comparison only)."""
    return _mixture_t(d, k, pool, 2.0)


def _mixture_t(d, k, pool, t):
    from kb_qa.retrieval.fusion import softmax_shares

    def scaled(lst, pool_=0):
        if len(lst) < 2:
            return softmax_shares([s for _, s in lst], pool=pool_)
        vals = [s for _, s in lst] + [0.0] * max(0, pool_ - len(lst))
        m, sd = _z(vals)
        z = [(v - m) / sd / t for v in vals]
        top = max(z)
        e = [math.exp(v - top) for v in z]
        tot = sum(e)
        return [v / tot for v in e[:len(lst)]]

    score: dict[int, float] = {}
    for lst, sh in ((d, scaled(d)), (k, scaled(k, pool))):
        for (cid, _), p in zip(lst, sh, strict=False):
            score[cid] = score.get(cid, 0.0) + p
    return sorted(score, key=lambda x: -score[x])


RULES = {name[5:]: fn for name, fn in globals().items() if name.startswith("rule_")}


def score(rows, doc_of, rule):
    h = {1: 0, 5: 0, 10: 0}
    rr = 0.0
    for gold, d, k, ds, ks, pool, _u in rows:
        docs: list[str] = []
        for cid in rule(d, k, ds, ks, pool):
            doc = doc_of.get(cid)
            if doc not in docs:
                docs.append(doc)
            if len(docs) == 10:
                break
        rank = next((i for i, doc in enumerate(docs, start=1) if doc in gold), None)
        if rank:
            for cut in h:
                h[cut] += rank <= cut
            rr += 1 / rank
    n = len(rows)
    return h[1] / n, h[5] / n, h[10] / n, rr / n


def refused(rows, cal, threshold: float, rule: str = "evidence") -> float:
    """Share of questions whose best candidate's calibrated probability is under `threshold` (the product's
    no-answer rule: retriever._select keeps nothing). `rule`: "evidence" (the product: the KB's answerability
    model), "unknown" (the previous rule: the U-only recalibration), "plain" (the ranking model alone)."""
    from kb_qa.retrieval.fusion import fuse_calibrated

    out = 0
    for _gold, d, k, ds, ks, _pool, (u, ev) in rows:
        hits = fuse_calibrated(d, k, ds, ks, dict(k), lambda key: cal,
                               (lambda key, u=u: u) if rule != "plain" else None,
                               (lambda key, ev=ev: ev) if rule == "evidence" else None)
        out += not hits or hits[0].score < threshold
    return out / max(len(rows), 1)


def latency(app, kb_name: str, questions: list[str], warmup: int = 5) -> dict[str, float]:
    """Retrieval p50 / p95 (ms, `Retriever.search_detailed`'s total: question embedding, both searches, fusion,
    refusal, passages) of the product's rule and of the previous rule (no per-KB evidence: the ranking model alone),
    interleaved question by question so both see the same machine load."""
    import statistics

    import kb_qa.retrieval.retriever as retriever_module

    r = app.retriever
    real_evidence = retriever_module.kb_evidence

    def previous(on: bool) -> None:
        retriever_module.kb_evidence = (lambda *a, **k: None) if on else real_evidence

    for q in questions[:warmup]:
        r.search_detailed(q, kb_name)
    times: dict[str, list[float]] = {"new": [], "previous": []}
    try:
        for i, q in enumerate(questions):
            for rule in (("new", "previous") if i % 2 else ("previous", "new")):
                previous(rule == "previous")
                times[rule].append(r.search_detailed(q, kb_name).timings_ms["total"])
    finally:
        previous(False)
    out = {}
    for rule, values in times.items():
        values.sort()
        out[f"{rule}_p50"] = statistics.median(values)
        out[f"{rule}_p95"] = values[min(len(values) - 1, int(0.95 * len(values)))]
    return out


SHOWN = ("dense", "keyword", "mixture", "calibrated", "rrf")  # parts, the old default, the new rule, textbook RRF


def main(argv=None) -> int:
    import os
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("benches", nargs="+")
    p.add_argument("--kb-dir", help="keep the KBs here (re-runs embed nothing)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each set")
    p.add_argument("--all-rules", action="store_true", help="every rule, not only the parts, old and new")
    p.add_argument("--latency", type=int, default=200,
                   help="questions of the first set timed through the retriever, new vs previous rule (0: none)")
    p.add_argument("--thresholds", default="",
                   help="comma-separated retrieval.score_threshold values: also print the refusal rates at each "
                        "(the product's rule), to see the trade-off the default sits on")
    args = p.parse_args(argv)
    sweep = [float(t) for t in args.thresholds.split(",") if t.strip()]
    from kb_qa.app import App
    from kb_qa.eval import ingest_bench, load_bench
    from kb_qa.settings import load_settings

    root = Path(args.kb_dir or tempfile.mkdtemp(prefix="kbqa-fusion-"))
    results = {}
    refusals = []
    swept: dict[float, list[tuple[str, str, float, float]]] = {t: [] for t in sweep}
    benches = [load_bench(folder) for folder in args.benches]
    if args.limit:
        for b in benches:
            b.queries = b.queries[:args.limit]
    timing = None
    for bench in benches:
        sub = root / bench.name
        app = App(load_settings(overrides={"paths": {"knowledge_base_root": str(sub / "documents"),
                                                     "vector_store_root": str(sub / "vector_store")}}))
        kb_name = "eval_" + bench.name
        _, names = ingest_bench(app, bench, kb_name, sub / "documents" / kb_name)
        t = time.perf_counter()
        rows, doc_of = collect(app, bench, kb_name, names)
        from kb_qa.retrieval.retriever import retriever_for

        _CALIBRATION["current"] = cal = retriever_for(app).calibration(app.kb(kb_name))
        print(f"{bench.name}: calibration {cal.summary()}", file=sys.stderr)
        print(f"{bench.name}: {len(rows)} questions collected in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        results[bench.name] = {name: score(rows, doc_of, fn) for name, fn in RULES.items()}
        threshold = app.settings.retrieval.score_threshold
        if args.latency and timing is None:
            t = time.perf_counter()
            timing = (bench.name, len(bench.queries[:args.latency]),
                      latency(app, kb_name, [text for _, text in bench.queries[:args.latency]]))
            print(f"{bench.name}: latency measured in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        own = (refused(rows, cal, threshold), refused(rows, cal, threshold, "unknown"))
        for other in benches:
            if other is not bench:
                off, _ = collect(app, bench, kb_name, names, other.queries)
                refusals.append((bench.name, other.name, refused(off, cal, threshold),
                                 refused(off, cal, threshold, "unknown"), *own))
                for t in sweep:
                    swept[t].append((bench.name, other.name, refused(off, cal, t), refused(rows, cal, t)))
    sets = list(results)
    print("| rule | " + " | ".join(f"{s} hit@1 / hit@5 / hit@10 / MRR@10" for s in sets) + " |")
    print("|---|" + "---|" * len(sets))
    for name in (RULES if args.all_rules else SHOWN):
        cells = [" / ".join(f"{v:.3f}" for v in results[s][name]) for s in sets]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print(f"refusal at retrieval.score_threshold = {threshold}:")
    print("| KB (answerable) | off-topic questions | refused_off_topic | (previous: U only) | refused_answerable "
          "| (previous: U only) |")
    print("|---|---|---|---|---|---|")
    for kb_set, off_set, off, off_plain, own_u, own_plain in refusals:
        print(f"| {kb_set} | {off_set} | {off:.3f} | {off_plain:.3f} | {own_u:.3f} | {own_plain:.3f} |")
    for t, cells in swept.items():
        print()
        print(f"refusal at retrieval.score_threshold = {t} (KB: off-topic refused / answerable refused):")
        print(" | ".join(f"{kb_set} <- {off_set}: {off:.3f} / {own:.3f}" for kb_set, off_set, off, own in cells))
    if timing:
        name, n, t = timing
        print()
        print(f"retrieval latency on {name}, {n} questions, warm, interleaved (ms): new rule p50 {t['new_p50']:.1f} / "
              f"p95 {t['new_p95']:.1f}; previous rule p50 {t['previous_p50']:.1f} / p95 {t['previous_p95']:.1f}; "
              f"ratio new/previous at p50 {t['new_p50'] / t['previous_p50']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
