"""python -m kb_qa.api [--host H] [--port P] [--config FILE] [--workers N]: serve the HTTP API with uvicorn.

With `--workers N` (N > 1) uvicorn runs N processes, each building its own App from the same settings; that is
for `llm.backend: openai` pointed at a server that owns the model and its queue (vLLM, or one kb_qa API with the
weights), or for retrieval-only serving. A local model (`chatglm2`/`llamacpp` with a model_path) would be loaded
once per worker, each with its own generation lock, so it is refused with the fix. Knowledge-base writes stay safe
across workers: the store's writer lock is a file lock."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from kb_qa.errors import EXIT_USAGE

if TYPE_CHECKING:
    from kb_qa.settings import Settings

EXAMPLES = """examples:
  python -m kb_qa.api                                  # http://127.0.0.1:7861, settings from configs/default.yaml
  python -m kb_qa.api --port 8000 --config my.yaml
  KB_QA_API__API_KEY=secret python -m kb_qa.api         # require 'Authorization: Bearer secret'
  KB_QA_LLM__MODEL_PATH=/models/chatglm2-6b python -m kb_qa.api
  KB_QA_LLM__BACKEND=openai KB_QA_LLM__OPENAI_BASE_URL=http://gpu-host:8000/v1 python -m kb_qa.api --workers 4

  curl -s http://127.0.0.1:7861/health
  curl -s http://127.0.0.1:7861/knowledge_bases/samples/documents -F files=@notes.md
  curl -s http://127.0.0.1:7861/ -H 'content-type: application/json' \\
       -d '{"prompt": "你好", "history": [], "knowledge_base": "samples"}'
  curl -sN http://127.0.0.1:7861/v1/chat/completions -H 'content-type: application/json' \\
       -d '{"model": "kb:samples", "stream": true, "messages": [{"role": "user", "content": "..."}]}'
  OpenAPI document: /openapi.json, interactive docs: /docs"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kb_qa.api", description="Serve the kb_qa HTTP API.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", help="bind address (default: api.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: api.port, 7861)")
    p.add_argument("--config", help="settings YAML (default: $KB_QA_CONFIG or configs/default.yaml)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (default 1); > 1 needs llm.backend openai or no local model")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def local_model_conflict(settings: Settings, workers: int) -> str | None:
    """Why `workers` processes cannot serve these settings, or None."""
    if workers > 1 and settings.llm.backend in ("chatglm2", "llamacpp") and settings.llm.model_path:
        return (f"--workers {workers} would load the local model ({settings.llm.model_path}) once per worker, each "
                "with its own generation queue: serve the model once (vllm serve DIR, or one kb_qa API) and set "
                "llm.backend: openai with llm.openai_base_url, or use --workers 1")
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import uvicorn

    from kb_qa.api.server import create_app
    from kb_qa.settings import load_settings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config, {"api": {"host": args.host, "port": args.port}})
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if (conflict := local_model_conflict(settings, args.workers)) is not None:
        print(f"error: {conflict}", file=sys.stderr)
        return EXIT_USAGE
    host, port = settings.api.host, settings.api.port
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api.api_key:
        logging.getLogger("kb_qa.api").warning(
            "listening on %s without an API key: anyone who can reach this port can read and change your "
            "knowledge bases (set api.api_key)", host)
    if args.workers == 1:
        uvicorn.run(create_app(settings=settings), host=host, port=port, log_level=args.log_level,
                    timeout_graceful_shutdown=5)
        return 0
    # Each worker process imports the factory and builds its App from the same sources: the config file is
    # handed over in $KB_QA_CONFIG (the environment is inherited), host and port are bound once by uvicorn.
    if args.config:
        os.environ["KB_QA_CONFIG"] = os.path.abspath(args.config)
    uvicorn.run("kb_qa.api.server:create_app", factory=True, workers=args.workers, host=host, port=port,
                log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
