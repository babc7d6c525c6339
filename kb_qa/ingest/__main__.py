"""python -m kb_qa.ingest PATH... [--kb NAME] [--prune] [--rebuild]"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

EXAMPLES = """examples:
  python -m kb_qa.ingest                          # the default KB's own folder, knowledge_base/<kb>/
  python -m kb_qa.ingest ./docs --kb manuals      # a folder, recursively, into KB 'manuals'
  python -m kb_qa.ingest a.pdf b.docx --kb manuals
  python -m kb_qa.ingest ./docs --kb manuals --prune    # also drop documents whose files are gone
  python -m kb_qa.ingest ./docs --kb manuals --rebuild  # re-embed everything (e.g. after changing models)

exit status: 0 all files ok, 1 some files failed (listed with reasons), 2 the run could not start"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kb_qa.ingest", description="Add documents to a knowledge base.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="files or folders (default: knowledge_base/<kb>/)")
    p.add_argument("--kb", help="knowledge base name (default: settings default_kb)")
    p.add_argument("--prune", action="store_true", help="remove documents whose files no longer exist")
    p.add_argument("--rebuild", action="store_true", help="drop the KB's contents and re-embed everything given")
    p.add_argument("--config", help="settings YAML (default: configs/default.yaml)")
    p.add_argument("--embedding-model", help="override embedding.model")
    p.add_argument("--chunk-size", type=int, help="override ingest.chunk_size (characters)")
    p.add_argument("--chunk-overlap", type=int, help="override ingest.chunk_overlap (characters)")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait if the KB is busy (default 10)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from kb_qa.app import App
    from kb_qa.embeddings import EmbeddingModelNotFound
    from kb_qa.naming import InvalidName
    from kb_qa.settings import load_settings
    from kb_qa.store import KnowledgeBaseError

    try:
        settings = load_settings(args.config, {
            "embedding.model": args.embedding_model,
            "ingest.chunk_size": args.chunk_size,
            "ingest.chunk_overlap": args.chunk_overlap,
        })
        app = App(settings)
        name = args.kb or settings.default_kb
        paths = args.paths or [app.docs_root / name]
        report = app.ingest(name, paths, prune=args.prune, rebuild=args.rebuild,
                            progress=not (args.quiet or args.json), lock_timeout_s=args.wait)
    except (KnowledgeBaseError, InvalidName, EmbeddingModelNotFound, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"kb": report.kb, "seconds": round(report.seconds, 3),
                          "chunks_embedded": report.chunks_embedded,
                          "files": [asdict(o) for o in report.outcomes]}, ensure_ascii=False, indent=1))
    else:
        print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
