"""Soak test of the store under kills: N random SIGKILL/SIGINT points across create, ingest, rebuild, prune and
remove, on a corpus of a few hundred small files. After each kill: the doctor's check passes (leftover temporary
files of the killed writer are counted apart: the next writer removes them), a search answers, and at the end a
resumed plain ingest equals a clean ingest of the same corpus. Prints the counts.

    python bench/soak_kill.py [--kills 200] [--files 300] [--seed 0]

The embedder is a deterministic hash of the text (numpy only) so a worker starts in the time imports take; the
store, pipeline, analyser and FAISS index are the real ones.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OPS = ("ingest", "rebuild", "prune", "remove", "create")


class HashEmbedder:
    dimension = 32

    def encode(self, texts):
        import hashlib

        import numpy as np

        out = np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:32].astype(np.float32)
                        for t in texts]) - 127.5
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def worker(store: Path, docs: Path, op: str) -> None:
    """One operation, run in a child process that the soak kills at a random moment."""
    from kb_qa.ingest.pipeline import ingest
    from kb_qa.settings import IngestSettings
    from kb_qa.store import KnowledgeBase

    settings = IngestSettings(commit_every_chunks=40)
    name = "fresh" if op == "create" else "soak"
    kb = KnowledgeBase.open(store, name, create=True)
    print("ready", flush=True)
    if op == "remove":
        with kb.writer() as w:
            for d in w.documents()[:20]:
                w.remove_document(d.source)
            w.commit()
        return
    if op == "prune":
        hidden = docs / "gone"
        shutil.rmtree(hidden, ignore_errors=True)
        (docs / "sub0").rename(hidden) if (docs / "sub0").exists() else None
        try:
            ingest(kb, [docs], settings, HashEmbedder, embedding_model="hash", prune=True)
        finally:
            hidden.rename(docs / "sub0") if hidden.exists() else None
        return
    ingest(kb, [docs], settings, HashEmbedder, embedding_model="hash", rebuild=op == "rebuild")


def make_corpus(folder: Path, n: int, rng: random.Random) -> None:
    words = "知识 库 检索 模型 文档 向量 the store index query answer crane pallet warehouse".split()
    for i in range(n):
        sub = folder / f"sub{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        text = " ".join(rng.choice(words) for _ in range(rng.randint(30, 200)))
        (sub / f"doc{i}.txt").write_text(f"document {i}. {text}", encoding="utf-8")


def run_op(store: Path, docs: Path, op: str, env: dict, kill_after: float | None, sig) -> int:
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(store), str(docs), op], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdout.readline()  # imports done, KB open
    if kill_after is not None:
        time.sleep(kill_after)
        if proc.poll() is None:
            proc.send_signal(sig)
    return proc.wait(timeout=300)


def verify(store: Path, name: str) -> tuple[bool, int, str]:
    """(check passed, leftover temporary files, first problem)."""
    from kb_qa.store import KnowledgeBase, doctor

    if not (store / name / "kb.sqlite").exists():
        return True, 0, ""
    kb = KnowledgeBase.open(store, name)
    report = doctor.check(kb)
    leftovers = [p for p in report.problems if p.startswith("orphan file")]
    real = [p for p in report.problems if not p.startswith("orphan file")]
    if kb.chunk_count():
        import numpy as np

        assert kb.dense_search(np.ones(HashEmbedder.dimension, dtype=np.float32) / 5.6, 3), "search gave nothing"
    kb.close()
    return not real, len(leftovers), real[0] if real else ""


def snapshot(store: Path, name: str):
    from kb_qa.store import KnowledgeBase

    kb = KnowledgeBase.open(store, name)
    out = (sorted((d.source, d.sha256, d.n_chunks) for d in kb.documents()), kb.chunk_count())
    kb.close()
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=1.5, help="seconds after the worker is ready (upper bound)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kbqa-soak-"))
    docs, store, clean = work / "docs", work / "vs", work / "clean"
    make_corpus(docs, args.files, rng)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    counts = {op: 0 for op in OPS} | {"sigkill": 0, "sigint": 0, "finished_before_kill": 0, "check_failed": 0,
                                       "leftover_files": 0}
    started = time.perf_counter()
    for i in range(args.kills):
        op = rng.choice(OPS)
        if (docs / "gone").exists():  # a killed prune run: put the corpus back as it was
            (docs / "gone").rename(docs / "sub0")
        sig = signal.SIGKILL if rng.random() < 0.7 else signal.SIGINT
        rc = run_op(store, docs, op, env, rng.uniform(0.0, args.max_delay), sig)
        counts[op] += 1
        counts["sigkill" if sig == signal.SIGKILL else "sigint"] += 1
        counts["finished_before_kill"] += rc == 0
        for name in ("soak", "fresh"):
            ok, leftovers, problem = verify(store, name)
            counts["leftover_files"] += leftovers
            if not ok:
                counts["check_failed"] += 1
                print(f"kill {i} ({op}, {sig.name}): check failed: {problem}", flush=True)
        if op == "create" and rng.random() < 0.5:
            shutil.rmtree(store / "fresh", ignore_errors=True)  # so creation itself keeps being killed
    if (docs / "gone").exists():
        (docs / "gone").rename(docs / "sub0")
    assert run_op(store, docs, "ingest", env, None, None) == 0  # the resumed run
    assert run_op(clean, docs, "ingest", env, None, None) == 0  # a clean ingest of the same corpus
    resumed_equals_clean = snapshot(store, "soak") == snapshot(clean, "soak")
    print(f"kills {args.kills} in {time.perf_counter() - started:.0f} s on {args.files} files: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; resumed == clean: {resumed_equals_clean}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if resumed_equals_clean and not counts["check_failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
