"""python -m kb_qa.eval --bench DIR [--off-topic DIR2] [--kb-dir DIR] [--json]: measure retrieval on labelled
questions; python -m kb_qa.eval --kb NAME --questions my.jsonl [--json]: on an existing KB, nothing re-ingested
(the question file's format: kb_qa.retrieval.evaluation).

DIR is a BEIR-layout folder:
  corpus.jsonl   {"_id", "title", "text"} one passage per line
  queries.jsonl  {"_id", "text"} one question per line
  qrels.tsv      query-id <TAB> corpus-id <TAB> score   (header line optional; score > 0 = the passage answers it)

Each passage becomes one document `<_id>.txt` of a fresh knowledge base (ingested with the configured splitter and
embedding model, exactly as users' files are), then every question with a qrel is asked three ways, side by side:
dense only, keyword (BM25) only, and the fused default. Reported per way:
  hit@1 / hit@5 / hit@10  share of questions with a gold passage among the first k passages retrieved
  MRR@10                  mean of 1/rank of the first gold passage (0 beyond rank 10)
  context recall          share of questions whose gold passage made it into the packed prompt (the top_k passages
                          of retrieval.top_k, packed into the window with the model's tokenizer if llm.model_path has
                          one, else the documented estimate)
  p50 / p95 ms            retrieval latency per question (question embedding + search + fusion + fetching text)
Settings (embedding model, chunk size, candidates, threshold, top_k, reranker) come from the usual settings file and
KB_QA_* variables, so the figures are those of your configuration. With --off-topic DIR2, DIR2's questions are also
asked against DIR's knowledge base: `refused_off_topic` is the share answered with the no-answer reply (no passage
reached retrieval.score_threshold), `refused_answerable` the share of DIR's own questions wrongly refused.
`calibration` is the KB's own measure of each retriever (pseudo-questions, kb_qa.retrieval.calibration).
With --kb-dir the knowledge base is kept there
and a re-run re-embeds nothing; without it, a temporary folder is used and removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES = """examples:
  python -m kb_qa.eval --bench ../shared/eval/cmrc2018_trial
  python -m kb_qa.eval --bench ../shared/eval/xquad_zh --off-topic ../shared/eval/cmrc2018_trial --json
  python -m kb_qa.eval --kb manuals --questions my_questions.jsonl
  python -m kb_qa.eval --bench my_questions/ --kb-dir /tmp/kbqa-eval --json
  KB_QA_EMBEDDING__MODEL=BAAI/bge-small-zh-v1.5 python -m kb_qa.eval --bench my_questions/
"""

MODES = ("dense", "keyword", "fused")
KS = (1, 5, 10)


class BenchError(ValueError):
    pass


@dataclass
class Bench:
    name: str
    corpus: dict[str, str]  # passage id -> text
    queries: list[tuple[str, str]]  # (query id, text) of questions that have a gold passage
    qrels: dict[str, set[str]]  # query id -> gold passage ids
    skipped_queries: int = 0  # questions without a gold passage in the corpus, or empty


def load_bench(folder: str | Path) -> Bench:
    folder = Path(folder)
    files = {n: folder / n for n in ("corpus.jsonl", "queries.jsonl", "qrels.tsv")}
    missing = [n for n, p in files.items() if not p.is_file()]
    if missing:
        raise BenchError(f"{folder}: not a BEIR folder (missing {', '.join(missing)})")
    corpus: dict[str, str] = {}
    for line_no, obj in _jsonl(files["corpus.jsonl"]):
        if "_id" not in obj or not isinstance(obj.get("text"), str):
            raise BenchError(f"corpus.jsonl line {line_no}: needs '_id' and 'text'")
        corpus[str(obj["_id"])] = obj["text"]
    qrels: dict[str, set[str]] = {}
    with open(files["qrels.tsv"], encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            parts = line.rstrip("\n").split("\t")
            if not line.strip() or (line_no == 1 and parts[0].lower() in ("query-id", "query_id", "qid")):
                continue
            if len(parts) < 2:
                raise BenchError(f"qrels.tsv line {line_no}: expected query-id<TAB>corpus-id<TAB>score")
            score = float(parts[2]) if len(parts) > 2 and parts[2].strip() else 1.0
            if score > 0 and parts[1] in corpus:
                qrels.setdefault(parts[0], set()).add(parts[1])
    queries, skipped = [], 0
    for line_no, obj in _jsonl(files["queries.jsonl"]):
        qid, text = str(obj.get("_id", "")), obj.get("text")
        if "_id" not in obj or not isinstance(text, str):
            raise BenchError(f"queries.jsonl line {line_no}: needs '_id' and 'text'")
        if qid in qrels and text.strip():
            queries.append((qid, text))
        else:
            skipped += 1  # no gold passage in the corpus, or an empty question
    if not corpus or not queries:
        raise BenchError(f"{folder}: no passages, or no question with a gold passage in the corpus")
    return Bench(folder.name, corpus, queries, qrels, skipped)


def _jsonl(path: Path):
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BenchError(f"{path.name} line {line_no}: not JSON ({exc.msg})") from None


_SAFE = re.compile(r"[^\w.\-]")


def doc_name(passage_id: str) -> str:
    """The document file name of a passage: `<_id>.txt`, characters unsafe in file names replaced."""
    safe = _SAFE.sub("_", passage_id).lstrip(".") or "_"
    if safe != passage_id:  # keep distinct ids distinct after replacing characters
        safe = f"{safe[:180]}-{hashlib.sha1(passage_id.encode('utf-8')).hexdigest()[:10]}"
    return safe[:200] + ".txt"


@dataclass
class ModeResult:
    hits: dict[int, int] = field(default_factory=lambda: {k: 0 for k in KS})
    rr: float = 0.0
    context: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    n: int = 0
    refused: int = 0  # questions that got no passage (the no-answer reply)

    def summary(self) -> dict:
        n = max(self.n, 1)
        lat = sorted(self.latencies_ms)
        out = {f"hit@{k}": round(self.hits[k] / n, 4) for k in KS}
        out["mrr@10"] = round(self.rr / n, 4)
        out["context_recall"] = round(self.context / n, 4)
        out["p50_ms"] = round(_percentile(lat, 50), 2)
        out["p95_ms"] = round(_percentile(lat, 95), 2)
        out["refused"] = round(self.refused / n, 4)
        out["questions"] = self.n
        return out


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    rank = (len(sorted_values) - 1) * pct / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


def ingest_bench(app, bench: Bench, kb_name: str, docs_dir: Path, *, progress: bool = False):
    """Write each passage as `<_id>.txt` under docs_dir and ingest them into `kb_name` (incrementally)."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    names = {}
    for pid, text in bench.corpus.items():
        name = doc_name(pid)
        names[name] = pid
        path = docs_dir / name
        data = text.encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
    report = app.ingest(kb_name, [docs_dir], prune=True, progress=progress)
    return report, names


def _tokenizer_for(settings):
    """ChatGLM2's tokenizer if llm.model_path names a folder with tokenizer.model, else None (estimate)."""
    if not settings.llm.model_path:
        return None
    try:
        from kb_qa.llm.loader import resolve_checkpoint_path
        from kb_qa.llm.tokenizer import TOKENIZER_FILE, ChatGLM2Tokenizer

        folder = resolve_checkpoint_path(settings.llm.model_path)
        if folder is not None and (Path(folder) / TOKENIZER_FILE).is_file():
            return ChatGLM2Tokenizer.from_folder(folder)
    except Exception:  # noqa: BLE001 - the estimate is the documented fallback
        return None
    return None


def evaluate(app, bench: Bench, kb_name: str, names: dict[str, str], *, modes=MODES, limit: int | None = None,
             progress: bool = False) -> dict:
    """Ask every question of `bench` against `kb_name` in each mode; the figures as one dict."""
    from kb_qa.qa.chain import QAChain
    from kb_qa.retrieval.retriever import retriever_for

    settings = app.settings
    top_k = settings.retrieval.top_k
    depth = max(max(KS), top_k)
    tokenizer = _tokenizer_for(settings)
    chain = QAChain(app, _TokenizerOnly(tokenizer) if tokenizer is not None else None)
    retriever = retriever_for(app)
    flags = {"dense": (True, False), "keyword": (False, True),
             "fused": (settings.retrieval.dense, settings.retrieval.keyword)}
    queries = bench.queries[:limit] if limit else bench.queries
    retriever.search_detailed(queries[0][1], kb_name, top_k=depth)  # warm-up: index load, jieba dictionary
    results = {m: ModeResult() for m in modes}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(queries) * len(modes), unit=" q", desc="questions", leave=False, file=sys.stderr)
    for qid, text in queries:
        gold = bench.qrels[qid]
        for mode in modes:
            dense, keyword = flags[mode]
            t = time.perf_counter()
            # Ranking quality is measured without refusal (threshold 0); whether the default threshold would have
            # refused is read off the best score (the retriever refuses exactly when it is under the threshold).
            sources = retriever.search_detailed(text, kb_name, top_k=depth, dense=dense, keyword=keyword,
                                                score_threshold=0.0).sources
            elapsed = (time.perf_counter() - t) * 1000.0
            r = results[mode]
            r.n += 1
            r.latencies_ms.append(elapsed)
            r.refused += not sources or sources[0].score < settings.retrieval.score_threshold
            ranked = [names.get(s.source) for s in sources]
            rank = next((i for i, pid in enumerate(ranked, start=1) if pid in gold), None)
            if rank is not None:
                for k in KS:
                    r.hits[k] += rank <= k
                r.rr += 1.0 / rank if rank <= 10 else 0.0
            packed = chain.pack(text, sources[:top_k])
            if any(names.get(s.source) in gold for s in sources[:packed.included]):
                r.context += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    info = app.kb(kb_name).info()
    fused_refused = results["fused"].refused if "fused" in results else None
    calibration = retriever.calibration(app.kb(kb_name), settings.retrieval.candidates)
    return {
        "bench": bench.name,
        "passages": len(bench.corpus),
        "chunks": info.chunks,
        "questions": len(queries),
        "questions_skipped": bench.skipped_queries,
        "embedding_model": settings.embedding.model,
        "reranker_model": settings.retrieval.reranker_model,
        "top_k": top_k,
        "candidates": settings.retrieval.candidates,
        "score_threshold": settings.retrieval.score_threshold,
        "token_count": "tokenizer" if tokenizer is not None else "estimate",
        "prompt_budget_tokens": settings.llm.max_context_tokens - settings.llm.max_new_tokens,
        "modes": {m: results[m].summary() for m in modes},
        "refused_answerable": round(fused_refused / max(len(queries), 1), 4) if fused_refused is not None else None,
        "calibration": calibration.summary(),
        "calibration_detail": json.loads(calibration.to_json()),
    }


def refusal_rate(app, kb_name: str, questions: list[str]) -> float:
    """Share of `questions` that get no passage at all from `kb_name` with the default settings (refused)."""
    from kb_qa.retrieval.retriever import retriever_for

    retriever = retriever_for(app)
    refused = sum(1 for text in questions if not retriever.search(text, kb_name))
    return round(refused / max(len(questions), 1), 4)


class _TokenizerOnly:
    """Lets the chain pack with a tokenizer and no model."""

    langchain_llm = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


def format_table(report: dict) -> str:
    lines = [
        f"{report['bench']}: {report['passages']} passages ({report['chunks']} chunks), {report['questions']} questions"
        + (f" ({report['questions_skipped']} skipped: empty or no gold passage)"
           if report.get("questions_skipped") else "")
        + ";"
        f" embedding {report['embedding_model']}" + (f", reranker {report['reranker_model']}"
                                                     if report.get("reranker_model") else "")
        + (f"; ingest {report['ingest_s']:.1f} s" if "ingest_s" in report else ""),
        f"{'mode':<9}{'hit@1':>8}{'hit@5':>8}{'hit@10':>8}{'MRR@10':>8}{'ctx rec':>9}{'p50 ms':>9}{'p95 ms':>9}",
    ]
    for mode, r in report["modes"].items():
        lines.append(f"{mode:<9}{r['hit@1']:>8.3f}{r['hit@5']:>8.3f}{r['hit@10']:>8.3f}{r['mrr@10']:>8.3f}"
                     f"{r['context_recall']:>9.3f}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}")
    if report.get("refused_off_topic") is not None or report.get("refused_answerable") is not None:
        lines.append(f"refusal (threshold {report['score_threshold']}): answerable refused "
                     f"{report.get('refused_answerable')}, off-topic ({report.get('off_topic_bench')}) refused "
                     f"{report.get('refused_off_topic')}")
    if report.get("calibration"):
        lines.append(f"calibration: {report['calibration']}")
    lines.append(f"context recall: gold passage among the top_k={report['top_k']} passages packed into a "
                 f"{report['prompt_budget_tokens']}-token prompt ({report['token_count']} token counts)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kb_qa.eval", description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", metavar="DIR", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels.tsv")
    p.add_argument("--off-topic", metavar="DIR2", help="BEIR folder whose questions DIR's KB should refuse")
    p.add_argument("--kb", metavar="NAME", help="evaluate this existing knowledge base (with --questions)")
    p.add_argument("--questions", metavar="JSONL", help="questions for --kb: {question, source, answer} per line")
    p.add_argument("--kb-dir", metavar="DIR", help="keep the evaluation KB here (re-runs skip embedding); "
                   "default: a temporary folder, removed afterwards")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--config", metavar="YAML", help="settings file (default: configs/default.yaml)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of dense,keyword,fused")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    import logging
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        print(f"error: --modes must be a subset of {','.join(MODES)}", file=sys.stderr)
        return 2
    from kb_qa.app import App
    from kb_qa.settings import load_settings

    if args.kb or args.questions:
        return _main_kb(args)
    if not args.bench:
        print("error: give --bench DIR, or --kb NAME --questions FILE", file=sys.stderr)
        return 2
    try:
        bench = load_bench(args.bench)
        off_topic = load_bench(args.off_topic) if args.off_topic else None
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tmp = None
    root = Path(args.kb_dir).expanduser().resolve() if args.kb_dir else Path(
        tmp := tempfile.mkdtemp(prefix="kbqa-eval-"))
    try:
        settings = load_settings(args.config, {"paths": {"knowledge_base_root": str(root / "documents"),
                                                         "vector_store_root": str(root / "vector_store")}})
        app = App(settings)
        kb_name = "eval_" + (re.sub(r"[^\w\-]", "_", bench.name) or "bench")[:40]
        progress = not args.quiet and sys.stderr.isatty()
        started = time.perf_counter()
        report_ingest, names = ingest_bench(app, bench, kb_name, root / "documents" / kb_name, progress=progress)
        if report_ingest.failed:
            print(report_ingest.summary(), file=sys.stderr)
        ingest_s = time.perf_counter() - started
        report = evaluate(app, bench, kb_name, names, modes=modes, limit=args.limit, progress=progress)
        report["ingest_s"] = round(ingest_s, 2)
        report["chunks_embedded"] = report_ingest.chunks_embedded
        if off_topic is not None:
            report["off_topic_bench"] = off_topic.name
            report["refused_off_topic"] = refusal_rate(app, kb_name, [t for _, t in off_topic.queries][:args.limit])
    finally:
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=1))
    else:
        print(format_table(report))
    return 0


def _main_kb(args) -> int:
    from kb_qa.app import App
    from kb_qa.errors import KbQaError
    from kb_qa.retrieval.evaluation import QuestionsError, evaluate_questions, format_report, load_questions
    from kb_qa.settings import load_settings

    if not (args.kb and args.questions):
        print("error: --kb NAME and --questions FILE go together", file=sys.stderr)
        return 2
    try:
        questions = load_questions(args.questions)
        app = App(load_settings(args.config))
        if args.kb not in app.kb_names():
            print(f"error: no knowledge base named {args.kb!r}", file=sys.stderr)
            return 2
        report = evaluate_questions(app, args.kb, questions[:args.limit] if args.limit else questions)
    except QuestionsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KbQaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    print(json.dumps(report, ensure_ascii=False, indent=1) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
