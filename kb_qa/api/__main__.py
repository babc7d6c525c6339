"""python -m kb_qa.api [--host H] [--port P] [--config FILE]: serve the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

EXAMPLES = """examples:
  python -m kb_qa.api                                  # http://127.0.0.1:7861, settings from configs/default.yaml
  python -m kb_qa.api --port 8000 --config my.yaml
  KB_QA_API__API_KEY=secret python -m kb_qa.api         # require 'Authorization: Bearer secret'
  KB_QA_LLM__MODEL_PATH=/models/chatglm2-6b python -m kb_qa.api

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
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


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
    api = create_app(settings=settings)
    host, port = settings.api.host, settings.api.port
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api.api_key:
        logging.getLogger("kb_qa.api").warning(
            "listening on %s without an API key: anyone who can reach this port can read and change your "
            "knowledge bases (set api.api_key)", host)
    uvicorn.run(api, host=host, port=port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
