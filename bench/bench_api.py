"""HTTP API load benchmark: retrieval-only search and answer requests from 1, 8 and 32 concurrent clients, and
`POST /v1/embeddings` throughput (texts/s) at batch sizes 1 and 64 (one client, requests back to back).

Starts `python -m kb_qa.api` in a subprocess on 127.0.0.1 (a free port, fresh data folders, no LLM, so answers are
retrieval-only), uploads a corpus through the API, then for each endpoint and concurrency level runs a closed loop:
N clients, each sending its next request as soon as the previous one is answered, until `--requests` are done.
Prints p50/p95 latency and requests/s per row. Client and server share this machine's cores: on a small box the
figures include the load generator's own CPU use.

    python bench/bench_api.py                                   # xquad_en corpus + questions from ../shared/eval
    python bench/bench_api.py --levels 1,8,32 --requests 400 --json
    python bench/bench_api.py --endpoints embeddings --embed-texts 640       # only /v1/embeddings
    python bench/bench_api.py --url http://127.0.0.1:7861 --kb samples --api-key KEY   # an already running server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO.parent / "shared" / "eval" / "xquad_en"
FALLBACK_DOCS = REPO / "tests" / "fixtures" / "docs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_corpus(folder: Path, limit: int) -> tuple[list[tuple[str, bytes]], list[str]]:
    """(files to upload, questions) from a BEIR folder, or plain files + their first lines as questions."""
    if (folder / "corpus.jsonl").is_file():
        docs, questions = [], []
        with open(folder / "corpus.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                docs.append((f"{row['_id']}.txt", f"{row.get('title', '')}\n\n{row['text']}".encode()))
        with open(folder / "queries.jsonl", encoding="utf-8") as f:
            questions = [json.loads(line)["text"] for line in f]
        return docs[:limit], questions
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".txt", ".md"))[:limit]
    docs = [(p.name, p.read_bytes()) for p in files]
    questions = [t.decode("utf-8", "replace").strip().splitlines()[0][:200] for _, t in docs if t.strip()]
    return docs, questions or ["what is this about?"]


def start_server(root: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "KB_QA_PATHS__KNOWLEDGE_BASE_ROOT": str(root / "knowledge_base"),
           "KB_QA_PATHS__VECTOR_STORE_ROOT": str(root / "vector_store"),
           "KB_QA_LLM__BACKEND": "none", "KB_QA_API__MAX_QUEUE": "64"}
    return subprocess.Popen([sys.executable, "-m", "kb_qa.api", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], cwd=REPO, env=env)


def wait_ready(url: str, proc: subprocess.Popen | None, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            health = httpx.get(url + "/health", timeout=2).json()
            if health["embedding"]["state"] == "loaded":
                return health
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not become ready")


def upload(url: str, kb: str, docs: list[tuple[str, bytes]], headers: dict) -> float:
    started = time.perf_counter()
    with httpx.Client(base_url=url, headers=headers, timeout=600) as c:
        for i in range(0, len(docs), 64):
            batch = docs[i:i + 64]
            r = c.post(f"/knowledge_bases/{kb}/documents", files=[("files", (n, d)) for n, d in batch])
            r.raise_for_status()
            failed = [f for f in r.json()["files"] if f["status"] == "failed"]
            if failed:
                raise SystemExit(f"ingest failed: {failed[:3]}")
    return time.perf_counter() - started


def request_for(kind: str, kb: str, question: str) -> tuple[str, dict]:
    if kind == "search":
        return f"/knowledge_bases/{kb}/search", {"query": question}
    return "/v1/chat/completions", {"model": f"kb:{kb}", "messages": [{"role": "user", "content": question}]}


async def run_level(url: str, kb: str, kind: str, clients: int, total: int, questions: list[str],
                    headers: dict) -> dict:
    latencies: list[float] = []
    server_ms: list[float] = []  # search only: the time the server reports spending on retrieval
    errors = 0
    counter = iter(range(total))

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            path, body = request_for(kind, kb, questions[i % len(questions)])
            t = time.perf_counter()
            try:
                r = await c.post(path, json=body)
                ok = r.status_code == 200
                if ok and kind == "search":
                    server_ms.append(r.json()["took_ms"])
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as c:
        for q in questions[:3]:  # warm-up (connections, caches)
            path, body = request_for(kind, kb, q)
            await c.post(path, json=body)
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return {"endpoint": kind, "clients": clients, "requests": len(ms), "errors": errors,
            "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1),
            "req_per_s": round(len(ms) / wall, 1),
            "retrieval_p50_ms": round(statistics.median(server_ms), 1) if server_ms else None}


def embedding_texts(docs: list[tuple[str, bytes]], questions: list[str]) -> list[str]:
    """Passage-sized texts (the corpus' documents, cut to ~1000 characters) and the questions, interleaved."""
    passages = [text.decode("utf-8", "replace")[:1000] for _, text in docs]
    return [t for pair in zip(passages, questions, strict=False) for t in pair] or questions


async def run_embeddings(url: str, model: str, texts: list[str], batch: int, total: int, headers: dict) -> dict:
    """`total` texts through /v1/embeddings in requests of `batch`, one after another: texts/s end to end."""
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as c:
        await c.post("/v1/embeddings", json={"model": model, "input": texts[:batch]})  # warm-up
        started = time.perf_counter()
        done = 0
        while done < total:
            chunk = [texts[(done + i) % len(texts)] for i in range(min(batch, total - done))]
            t = time.perf_counter()
            r = await c.post("/v1/embeddings", json={"model": model, "input": chunk})
            latencies.append(time.perf_counter() - t)
            ok = r.status_code == 200 and len(r.json()["data"]) == len(chunk)
            errors += not ok
            done += len(chunk)
        wall = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return {"endpoint": f"embed/{batch}", "clients": 1, "requests": len(ms), "errors": errors,
            "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1),
            "req_per_s": round(len(ms) / wall, 1), "texts_per_s": round(total / wall, 1), "retrieval_p50_ms": None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="1,8,32", help="concurrent clients per run, comma-separated")
    p.add_argument("--requests", type=int, default=200, help="requests per endpoint and level")
    p.add_argument("--corpus", type=Path, default=EVAL if EVAL.is_dir() else FALLBACK_DOCS,
                   help="BEIR folder (corpus.jsonl + queries.jsonl) or a folder of .txt/.md files")
    p.add_argument("--docs", type=int, default=240, help="at most this many documents uploaded")
    p.add_argument("--url", help="benchmark this running server instead of starting one")
    p.add_argument("--kb", default="bench", help="knowledge base (with --url: an existing one, nothing uploaded)")
    p.add_argument("--api-key", help="bearer key for --url")
    p.add_argument("--endpoints", default="search,answer,embeddings",
                   help="which of search, answer, embeddings to measure, comma-separated")
    p.add_argument("--embed-batches", default="1,64", help="/v1/embeddings batch sizes, comma-separated")
    p.add_argument("--embed-texts", type=int, default=256, help="texts embedded per batch size")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    endpoints = set(args.endpoints.split(","))
    levels = [int(x) for x in args.levels.split(",")]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    docs, questions = load_corpus(args.corpus, args.docs)

    proc = None
    tmp = tempfile.TemporaryDirectory(prefix="kbqa-bench-")
    try:
        if args.url:
            url = args.url.rstrip("/")
            health = httpx.get(url + "/health", timeout=10).json()
        else:
            url = f"http://127.0.0.1:{free_port()}"
            proc = start_server(Path(tmp.name), int(url.rsplit(":", 1)[1]))
            health = wait_ready(url, proc)
            if endpoints & {"search", "answer"}:  # /v1/embeddings needs no knowledge base
                seconds = upload(url, args.kb, docs, headers)
                print(f"uploaded and ingested {len(docs)} documents from {args.corpus.name} in {seconds:.1f} s",
                      file=sys.stderr)
        print(f"server: {url}  mode: {health['mode']}  embedding: {health['embedding']['detail']}", file=sys.stderr)
        load_at_start = os.getloadavg()[0]
        rows = []
        for n in levels:  # both endpoints at each level, back to back, so they see the same background load
            for kind in [k for k in ("search", "answer") if k in endpoints]:
                rows.append(asyncio.run(run_level(url, args.kb, kind, n, args.requests, questions, headers)))
                print(f"  done: {kind} x{n}: p50 {rows[-1]['p50_ms']} ms", file=sys.stderr)
        if "embeddings" in endpoints:
            texts = embedding_texts(docs, questions)
            for batch in (int(x) for x in args.embed_batches.split(",")):
                rows.append(asyncio.run(run_embeddings(url, health["embedding"]["name"], texts, batch,
                                                       args.embed_texts, headers)))
                print(f"  done: embeddings batch {batch}: {rows[-1]['texts_per_s']} texts/s", file=sys.stderr)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        tmp.cleanup()

    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"\n{'endpoint':<8} {'clients':>7} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>7} "
          f"{'server p50 ms':>13} {'texts/s':>8}")
    for r in rows:
        print(f"{r['endpoint']:<8} {r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['p50_ms']:>8} "
              f"{r['p95_ms']:>8} {r['req_per_s']:>7} {r['retrieval_p50_ms'] or '':>13} {r.get('texts_per_s') or '':>8}")
    print(f"\n(search = POST /knowledge_bases/{{kb}}/search; answer = POST /v1/chat/completions model kb:{{kb}}, "
          f"retrieval-only; embed/B = POST /v1/embeddings with B texts per request (passages of <= 1000 characters and "
          f"questions); server p50 = retrieval time the search endpoint reports; {os.cpu_count()} CPU cores shared "
          f"by server, clients and whatever else runs; load average (1 min) {load_at_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
