"""Soak test of the store under kills: N random SIGKILL/SIGINT points across create, ingest, rebuild, prune and
remove, on a corpus of a few hundred small files. After each kill: the doctor's check passes (leftover temporary
files of the killed writer are counted apart: the next writer removes them), a search answers, and at the end a
resumed plain ingest equals a clean ingest of the same corpus. Prints the counts.

    python bench/soak_kill.py [--kills 200] [--files 300] [--seed 0] [--start fork|spawn]

Each operation runs in its own process, killed at a random moment after it starts (before the KB is even opened,
so creation is killed too). `--start fork` (the default): the soak imports the store, the pipeline, FAISS and
the analyser's dictionary once and forks a child per operation, so a kill costs milliseconds of start-up, not the
seconds a fresh interpreter needs (imports + jieba's dictionary: ~3 s idle, ~13 s on a loaded machine), and the
random moment falls inside the store's work rather than inside the imports. `--start spawn`: a fresh
`python bench/soak_kill.py --worker ...` per operation (slower; start-up included). The embedder is a deterministic
hash of the text (numpy only); the store, pipeline, analyser and FAISS index are the real ones. Files are parsed
in the ingesting process (`ingest.isolate_parsing` off) unless --isolate-parsing: the parse worker is not what
this soak tests, and spawning it costs each kill another interpreter start.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before faiss loads: no OpenMP thread pool for a fork to inherit
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OPS = ("ingest", "rebuild", "prune", "remove", "create")
READY = b"r"


class HashEmbedder:
    dimension = 32

    def encode(self, texts):
        import hashlib

        import numpy as np

        out = np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:32].astype(np.float32)
                        for t in texts]) - 127.5
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def worker(store: Path, docs: Path, op: str, ready: Callable[[], None], isolate_parsing: bool) -> None:
    """One operation, run in a child process that the soak kills at a random moment after `ready()`."""
    from kb_qa.ingest.pipeline import ingest
    from kb_qa.settings import IngestSettings
    from kb_qa.store import KnowledgeBase

    settings = IngestSettings(commit_every_chunks=40, isolate_parsing=isolate_parsing)
    name = "fresh" if op == "create" else "soak"
    ready()  # the kill clock starts here: opening (creating) the KB is inside the window
    kb = KnowledgeBase.open(store, name, create=True)
    if op == "remove":
        with kb.writer() as w:
            for d in w.documents()[:20]:
                w.remove_document(d.source)
            w.commit()
        return
    if op == "prune":
        hidden = _hidden(docs)  # outside the corpus folder: the prune's own ingest must not pick it up
        shutil.rmtree(hidden, ignore_errors=True)
        (docs / "sub0").rename(hidden) if (docs / "sub0").exists() else None
        try:
            ingest(kb, [docs], settings, HashEmbedder, embedding_model="hash", prune=True)
        finally:
            hidden.rename(docs / "sub0") if hidden.exists() else None
        return
    ingest(kb, [docs], settings, HashEmbedder, embedding_model="hash", rebuild=op == "rebuild")


def _hidden(docs: Path) -> Path:
    """Where a prune run moves the corpus' sub0/ while it runs (so those documents' files are gone)."""
    return docs.parent / "sub0-gone"


def warm_up() -> None:
    """Everything a forked worker needs, loaded once in the soak itself."""
    import faiss  # noqa: F401

    import kb_qa.ingest.loaders  # noqa: F401
    import kb_qa.ingest.pipeline  # noqa: F401
    import kb_qa.store.doctor  # noqa: F401
    from kb_qa.store.terms import fts_document

    fts_document("知识库 warm-up")  # jieba's dictionary, loaded before the first fork


def make_corpus(folder: Path, n: int, rng: random.Random) -> None:
    words = "知识 库 检索 模型 文档 向量 the store index query answer crane pallet warehouse".split()
    for i in range(n):
        sub = folder / f"sub{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        text = " ".join(rng.choice(words) for _ in range(rng.randint(30, 200)))
        (sub / f"doc{i}.txt").write_text(f"document {i}. {text}", encoding="utf-8")


def _fork_op(store: Path, docs: Path, op: str, isolate_parsing: bool) -> tuple[int, int]:
    """(pid, read end of the ready pipe) of a forked child running `op`."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return pid, read_end
    code = 1
    try:  # the child: never returns into the soak's own code, never runs its atexit handlers
        os.close(read_end)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C behaves as in a CLI run
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        worker(store, docs, op, lambda: os.write(write_end, READY), isolate_parsing)
        code = 0
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - any failure is the exit code; the soak checks the store itself
        code = 1
    finally:
        os._exit(code)


def run_op(store: Path, docs: Path, op: str, args, kill_after: float | None, sig) -> tuple[int, float]:
    """Run `op` in a child process; kill it `kill_after` seconds after it is ready. (Its exit code, -N: killed
    by signal N; seconds from ready to exit.)"""
    if args.start == "fork":
        pid, ready_fd = _fork_op(store, docs, op, args.isolate_parsing)
        with os.fdopen(ready_fd, "rb") as ready:
            select.select([ready], [], [], 120)
            ready.read(1)
            ready_at = time.perf_counter()
            # The pipe's write end closes when the child exits: wait for that, at most `kill_after` seconds.
            if select.select([ready], [], [], kill_after)[0] == [] and kill_after is not None:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            ready.read()
        ended = time.perf_counter()
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), ended - ready_at
    command = [sys.executable, __file__, "--worker", str(store), str(docs), op]
    if args.isolate_parsing:
        command.append("--isolate-parsing")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # imports done
    ready_at = time.perf_counter()
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    rc = proc.wait(timeout=300)
    return rc, time.perf_counter() - ready_at


def verify(store: Path, name: str) -> tuple[bool, int, str]:
    """(check passed, leftover temporary files, first problem)."""
    from kb_qa.store import KnowledgeBase, doctor

    if not (store / name / "kb.sqlite").exists():
        return True, 0, ""  # killed before creation finished: no KB, as if never started (atomic creation)
    problem = KnowledgeBase(store, name).problem()
    if problem is not None:
        return False, 0, problem
    kb = KnowledgeBase.open(store, name)
    try:
        report = doctor.check(kb)
        leftovers = [p for p in report.problems if p.startswith("orphan file")]
        real = [p for p in report.problems if not p.startswith("orphan file")]
        if kb.chunk_count():
            import numpy as np

            assert kb.dense_search(np.ones(HashEmbedder.dimension, dtype=np.float32) / 5.6, 3), "search gave nothing"
    finally:
        kb.close()  # no connection open across the next fork
    return not real, len(leftovers), real[0] if real else ""


def snapshot(store: Path, name: str):
    from kb_qa.store import KnowledgeBase

    kb = KnowledgeBase.open(store, name)
    out = (sorted((d.source, d.sha256, d.n_chunks) for d in kb.documents()), kb.chunk_count())
    kb.close()
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], lambda: print("ready", flush=True),
               "--isolate-parsing" in sys.argv[5:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=None,
                    help="upper bound of the kill delay, seconds after the worker is ready (default: per "
                         "operation, how long its last uninterrupted run took, first a clean ingest's time: kills "
                         "spread over a whole run instead of landing after it)")
    ap.add_argument("--start", choices=("fork", "spawn"), default="fork" if hasattr(os, "fork") else "spawn",
                    help="fork: children of a warmed-up soak (fast); spawn: a fresh interpreter per operation")
    ap.add_argument("--isolate-parsing", action="store_true", help="parse files in the parse worker process")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per kill (operation, delay, exit code)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kbqa-soak-"))
    docs, store, clean = work / "docs", work / "vs", work / "clean"
    make_corpus(docs, args.files, rng)
    if args.start == "fork":
        warm_up()
    rc, clean_seconds = run_op(clean, docs, "ingest", args, None, None)  # a clean ingest, for the comparison
    assert rc == 0
    span = dict.fromkeys(OPS, clean_seconds)  # seconds an uninterrupted run of each operation takes
    counts = {op: 0 for op in OPS} | {"sigkill": 0, "sigint": 0, "finished_before_kill": 0, "check_failed": 0,
                                       "leftover_files": 0}
    started = time.perf_counter()
    for i in range(args.kills):
        op = rng.choice(OPS)
        if _hidden(docs).exists():  # a killed prune run: put the corpus back as it was
            _hidden(docs).rename(docs / "sub0")
        sig = signal.SIGKILL if rng.random() < 0.7 else signal.SIGINT
        delay = rng.uniform(0.0, args.max_delay if args.max_delay is not None else span[op])
        rc, seconds = run_op(store, docs, op, args, delay, sig)
        if args.verbose:
            print(op, sig.name, f"delay {delay:.2f} span {span[op]:.2f} rc {rc} {seconds:.2f} s", flush=True)
        if rc == 0:
            span[op] = seconds  # it finished before the kill: this is how long the whole operation takes now
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
    if _hidden(docs).exists():
        _hidden(docs).rename(docs / "sub0")
    assert run_op(store, docs, "ingest", args, None, None)[0] == 0  # the resumed run
    resumed, fresh = snapshot(store, "soak"), snapshot(clean, "soak")
    resumed_equals_clean = resumed == fresh
    if not resumed_equals_clean:
        extra, lacking = set(resumed[0]) - set(fresh[0]), set(fresh[0]) - set(resumed[0])
        print(f"resumed run differs: {resumed[1]} vs {fresh[1]} chunks; only resumed: {sorted(extra)[:5]}; "
              f"only clean: {sorted(lacking)[:5]}", flush=True)
    print(f"kills {args.kills} in {time.perf_counter() - started:.0f} s on {args.files} files ({args.start}; "
          f"a clean ingest {clean_seconds:.2f} s): "
          + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; resumed == clean: {resumed_equals_clean}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if resumed_equals_clean and not counts["check_failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
