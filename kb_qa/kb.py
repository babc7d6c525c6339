"""python -m kb_qa.kb list | show NAME | delete NAME | remove NAME PATH... : manage knowledge bases."""

from __future__ import annotations

import argparse
import json
import sys
import time

EXAMPLES = """examples:
  python -m kb_qa.kb list
  python -m kb_qa.kb show samples
  python -m kb_qa.kb remove samples notes/old.md   # one document, by its path in the KB
  python -m kb_qa.kb delete scratch                # the whole knowledge base (index and records)"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kb_qa.kb", description="Manage knowledge bases.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="settings YAML")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="knowledge bases with their sizes")
    sub.add_parser("show", help="a knowledge base's documents").add_argument("name")
    sub.add_parser("delete", help="delete a knowledge base's index and records").add_argument("name")
    sub.add_parser("check", help="verify knowledge bases (integrity, counts, index, orphan files)"
                   ).add_argument("name", nargs="?")
    sub.add_parser("repair", help="fix a knowledge base from its records (index, keyword table, orphans)"
                   ).add_argument("name")
    remove = sub.add_parser("remove", help="remove documents (paths as `show` lists them)")
    remove.add_argument("name")
    remove.add_argument("paths", nargs="+")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kb_qa.app import App
    from kb_qa.naming import InvalidName
    from kb_qa.settings import load_settings
    from kb_qa.store import KnowledgeBaseError

    try:
        app = App(load_settings(args.config))
        return _run(app, args)
    except (KnowledgeBaseError, InvalidName) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(app, args) -> int:
    out = lambda obj: print(json.dumps(obj, ensure_ascii=False, indent=1))  # noqa: E731
    if args.command in ("check", "repair"):
        return _doctor(app, args, out)
    if args.command == "list":
        from kb_qa.store import KnowledgeBaseError

        infos, damaged = [], []
        for n in app.kb_names():
            try:
                infos.append(app.kb(n).info())
            except KnowledgeBaseError as exc:  # one damaged KB never hides the others
                damaged.append((n, str(exc)))
        if args.json:
            out([{"name": i.name, "documents": i.documents, "chunks": i.chunks,
                  "embedding_model": i.embedding_model} for i in infos]
                + [{"name": n, "damaged": reason} for n, reason in damaged])
        else:
            for i in infos:
                print(f"{i.name:24} {i.documents:6} documents {i.chunks:8} chunks  {i.embedding_model or '-'}")
            for n, reason in damaged:
                print(f"{n:24} DAMAGED: {reason}")
            if not infos and not damaged:
                print("no knowledge bases yet: python -m kb_qa.ingest PATH --kb NAME")
        return 0
    if args.command == "show":
        from kb_qa.retrieval.calibration import stored as stored_calibration

        kb = app.kb(args.name)
        info, docs = kb.info(), kb.documents()
        calibration = stored_calibration(kb)  # measured at the first search after an ingest; None until then
        if args.json:
            out({"name": info.name, "embedding_model": info.embedding_model, "dimension": info.dimension,
                 "documents": [{"source": d.source, "chunks": d.n_chunks, "bytes": d.size, "sha256": d.sha256,
                                "origin": d.origin, "updated_at": d.updated_at} for d in docs],
                 "retrieval_calibration": calibration.summary() if calibration else None})
        else:
            print(f"{info.name}: {info.documents} documents, {info.chunks} chunks, "
                  f"embedding model {info.embedding_model or '-'} ({info.dimension or '-'} dims)")
            print(f"  retrieval reliability: {calibration.summary() if calibration else 'not measured yet'}")
            for d in docs:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.updated_at))
                print(f"  {d.n_chunks:6} chunks  {d.size:10} B  {when}  {d.source}")
        return 0
    if args.command == "delete":
        app.delete_kb(args.name)
        print(f"deleted knowledge base {args.name!r} (its documents under {app.docs_root / args.name} are kept)")
        return 0
    if args.command == "remove":
        kb = app.kb(args.name)
        missing = []
        with kb.writer() as writer:
            for path in args.paths:
                if not writer.remove_document(path):
                    missing.append(path)
            writer.commit()
        for path in args.paths:
            print(f"{'not found' if path in missing else 'removed'}: {path}")
        return 1 if missing else 0
    raise AssertionError(args.command)


def _doctor(app, args, out) -> int:
    from kb_qa.store import KnowledgeBase, doctor

    if args.command == "repair":
        done = doctor.repair(KnowledgeBase(app.store_root, args.name))
        out(done) if args.json else print("\n".join(done) or "nothing to repair")
        return 0
    names = [args.name] if args.name else app.kb_names()
    reports = [doctor.check(KnowledgeBase(app.store_root, n)) for n in names]
    if args.json:
        out([{"name": r.name, "ok": r.ok, "problems": r.problems, **r.facts} for r in reports])
    else:
        for r in reports:
            print(f"{r.name}: " + ("ok" if r.ok else "; ".join(r.problems)))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
