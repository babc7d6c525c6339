"""`kb-qa ingest PATH... [--kb NAME] [--prune] [--rebuild]`: add documents to a knowledge base (app.ingest)."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict

from kb_qa.cli.common import add_config_flag, guarded, load_settings_from, parser, printable

EXAMPLES = """examples:
  {prog}                          # the default KB's own folder, knowledge_base/<kb>/
  {prog} ./docs --kb manuals      # a folder, recursively, into KB 'manuals'
  {prog} a.pdf b.docx --kb manuals
  {prog} ./docs --kb manuals --prune    # also drop documents whose files are gone
  {prog} ./docs --kb manuals --rebuild  # re-embed everything (e.g. after changing models)

exit status: 0 all files ok, 1 some files failed (listed with reasons) or the disk failed (full, read-only, I/O
error: one line; the batches committed before it are kept), 2 the run could not start (bad name,
bad settings), 3 the embedding model is not available, 4 the KB is busy, 130 Ctrl-C (what was committed is kept
and listed)"""


def build_parser(prog: str = "python -m kb_qa.ingest"):
    p = parser(prog, "Add documents to a knowledge base.", EXAMPLES.format(prog=prog))
    p.add_argument("paths", nargs="*", help="files or folders (default: knowledge_base/<kb>/)")
    p.add_argument("--kb", help="knowledge base name (default: settings default_kb)")
    p.add_argument("--prune", action="store_true", help="remove documents whose files no longer exist")
    p.add_argument("--rebuild", action="store_true", help="drop the KB's contents and re-embed everything given")
    add_config_flag(p)
    p.add_argument("--embedding-model", help="override embedding.model")
    p.add_argument("--chunk-size", type=int, help="override ingest.chunk_size (characters)")
    p.add_argument("--chunk-overlap", type=int, help="override ingest.chunk_overlap (characters)")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait if the KB is busy (default 10)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def format_report(report) -> str:
    """The report with every file name escaped (a name cannot forge a line of it)."""
    counts = ", ".join(f"{s} {report.count(s)}" for s in ("added", "updated", "unchanged", "failed", "removed"))
    lines = [f"knowledge base {printable(report.kb)!s}: {counts}; {report.chunks_embedded} chunks embedded in "
             f"{report.seconds:.1f} s"]
    ocr = report.ocr.summary()
    lines += [f"  {ocr}"] if ocr else []
    lines += [f"  failed: {printable(o.source)}: {printable(o.reason or '')}" for o in report.failed]
    return "\n".join(lines)


def run(app, args, out=None) -> int:
    from kb_qa.documents import IngestInterrupted

    out = out or sys.stdout
    name = args.kb or app.settings.default_kb
    paths = args.paths or [app.docs_root / name]
    try:
        report = app.ingest(name, paths, prune=args.prune, rebuild=args.rebuild,
                            progress=not (args.quiet or args.json), lock_timeout_s=args.wait)
    except IngestInterrupted as exc:
        exc.details = [f"{o.status}: {o.source}" for o in exc.committed]
        raise
    if args.json:
        out.write(json.dumps({"kb": report.kb, "seconds": round(report.seconds, 3),
                              "chunks_embedded": report.chunks_embedded,
                              "ocr": asdict(report.ocr),
                              "files": [asdict(o) for o in report.outcomes]}, ensure_ascii=False, indent=1) + "\n")
    else:
        out.write(format_report(report) + "\n")
    return 1 if report.failed else 0


def main(argv: list[str] | None = None, *, prog: str = "python -m kb_qa.ingest", app=None) -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        from kb_qa.app import App

        settings = load_settings_from(args, {"embedding.model": args.embedding_model,
                                             "ingest.chunk_size": args.chunk_size,
                                             "ingest.chunk_overlap": args.chunk_overlap})
        return run(app or App(settings), args)

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
