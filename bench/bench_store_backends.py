"""Retrieval quality of the two store backends side by side: `python -m kb_qa.eval --bench SET --json` with
`store.backend=local` (SQLite FTS5 + FAISS) and `store.backend=milvus` (a Milvus Lite file: dense + BM25 with
Milvus' jieba analyzer), same embedding model, same questions. Issue 14's bar: Milvus within 0.01 hit@5 of local.

Each run is a subprocess (its own KB folder, removed afterwards). Needs requirements-milvus.txt.

    python bench/bench_store_backends.py                       # every set in ../shared/eval, 300 questions each
    python bench/bench_store_backends.py --sets xquad_en --limit 0   # all questions
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO.parent / "shared" / "eval"
MODES = ("dense", "keyword", "fused")


def run_eval(bench: Path, backend: str, limit: int) -> dict:
    env = {**os.environ, "KB_QA_STORE__BACKEND": backend, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "kb_qa.eval", "--bench", str(bench), "--json", "-q"]
    if limit:
        command += ["--limit", str(limit)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{backend} on {bench.name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", help="comma-separated set names in ../shared/eval (default: all)")
    p.add_argument("--limit", type=int, default=300, help="questions per set (0 = all; default 300)")
    p.add_argument("--json", help="also write the raw figures here")
    args = p.parse_args(argv)
    names = args.sets.split(",") if args.sets else sorted(d.name for d in EVAL.iterdir() if (d / "qrels.tsv").is_file()
                                                           or (d / "qrels").is_dir())
    rows, raw = [], {}
    for name in names:
        local, milvus = (run_eval(EVAL / name, backend, args.limit) for backend in ("local", "milvus"))
        raw[name] = {"local": local, "milvus": milvus}
        for mode in MODES:
            a, b = local["modes"][mode], milvus["modes"][mode]
            rows.append((name, mode, a, b))
    print("| set | mode | local hit@1/hit@5/MRR@10 | milvus hit@1/hit@5/MRR@10 | hit@5 diff | p50 ms local/milvus |")
    print("|---|---|---|---|---:|---|")
    worst = 0.0
    for name, mode, a, b in rows:
        diff = b["hit@5"] - a["hit@5"]
        worst = min(worst, diff)
        print(f"| {name} | {mode} | {a['hit@1']:.3f}/{a['hit@5']:.3f}/{a['mrr@10']:.3f} | "
              f"{b['hit@1']:.3f}/{b['hit@5']:.3f}/{b['mrr@10']:.3f} | {diff:+.3f} | "
              f"{a['p50_ms']:.0f}/{b['p50_ms']:.0f} |")
    print(f"\nlargest hit@5 loss of milvus against local: {-worst:.3f} (bar: 0.010)")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
