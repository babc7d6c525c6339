"""`kb-qa kb list | show NAME | remove NAME PATH... | delete NAME | check [NAME] | repair NAME`: manage knowledge
bases."""

from __future__ import annotations

import json
import sys
import time

from kb_qa.cli.common import add_config_flag, guarded, load_settings_from, parser, printable

EXAMPLES = """examples:
  {prog} list
  {prog} show samples
  {prog} remove samples notes/old.md   # one document, by its path in the KB (its file in
                                       # knowledge_base/samples/ is deleted too, so re-ingest keeps it out)
  {prog} delete scratch                # the whole knowledge base (index and records; documents are kept)
  {prog} check                         # verify every KB: integrity, counts, index checksum, orphan files
  {prog} repair samples                # fix what the records allow: index, keyword table, orphans
  {prog} compact samples               # build the approximate index of a large KB (store.ann_min_chunks)

exit status: 0 ok, 1 some paths were not in the KB, a check found problems, or the disk failed (full, read-only,
I/O error: one line, nothing lost), 2 bad name or no such KB, 4 the KB is busy"""


def build_parser(prog: str = "python -m kb_qa.kb"):
    p = parser(prog, "Manage knowledge bases.", EXAMPLES.format(prog=prog))
    add_config_flag(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait if the KB is busy (default 10)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="knowledge bases with their sizes")
    sub.add_parser("show", help="a knowledge base's documents").add_argument("name")
    sub.add_parser("delete", help="delete a knowledge base's index and records").add_argument("name")
    sub.add_parser("check", help="verify knowledge bases (integrity, counts, index, orphan files)"
                   ).add_argument("name", nargs="?")
    sub.add_parser("repair", help="fix a knowledge base from its records (index, keyword table, orphans)"
                   ).add_argument("name")
    sub.add_parser("compact", help="(re)build the approximate vector index of a large KB and prune tombstones "
                   "(readers are not blocked)").add_argument("name")
    remove = sub.add_parser("remove", help="remove documents (paths as `show` lists them)")
    remove.add_argument("name")
    remove.add_argument("paths", nargs="+")
    return p


def run(app, args, out=None) -> int:
    out = out or sys.stdout

    def emit(obj) -> None:
        out.write(json.dumps(obj, ensure_ascii=False, indent=1) + "\n")

    if args.command in ("check", "repair"):
        return _doctor(app, args, out, emit)
    if args.command == "compact":
        from kb_qa.store import KnowledgeBase

        if app.settings.store.backend != "local":
            out.write("nothing to compact: Milvus maintains its own indexes (store.backend is not 'local')\n")
            return 0
        done = KnowledgeBase.open(app.store_root, args.name).compact(
            ann_min_chunks=app.settings.store.ann_min_chunks, lock_timeout_s=args.wait)
        if args.json:
            emit(done)
        else:
            out.write(("\n".join(done) or "nothing to compact") + "\n")
        return 0
    if args.command == "list":
        from kb_qa.errors import StorageError
        from kb_qa.store import KnowledgeBaseError

        infos, damaged, unreadable = [], [], []
        for n in app.kb_names():
            try:
                infos.append(app.kb(n).info())
            except KnowledgeBaseError as exc:  # one damaged KB never hides the others
                damaged.append((n, str(exc)))
            except StorageError as exc:  # nor does one the disk fails to read (that is not damage)
                unreadable.append((n, str(exc)))
        if args.json:
            emit([{"name": i.name, "documents": i.documents, "chunks": i.chunks,
                   "embedding_model": i.embedding_model} for i in infos]
                 + [{"name": n, "damaged": reason} for n, reason in damaged]
                 + [{"name": n, "unreadable": reason} for n, reason in unreadable])
        else:
            for i in infos:
                out.write(f"{i.name:24} {i.documents:6} documents {i.chunks:8} chunks  {i.embedding_model or '-'}\n")
            for n, reason in damaged:
                out.write(f"{printable(n):24} DAMAGED: {printable(reason)}\n")
            for n, reason in unreadable:
                out.write(f"{printable(n):24} UNREADABLE: {printable(reason)}\n")
            if not infos and not damaged and not unreadable:
                out.write("no knowledge bases yet: kb-qa ingest PATH --kb NAME\n")
        return 0
    if args.command == "show":
        from kb_qa.retrieval.calibration import stored as stored_calibration

        kb = app.kb(args.name)
        info, docs = kb.info(), kb.documents()
        calibration = stored_calibration(kb)  # measured at the first search after an ingest; None until then
        if args.json:
            emit({"name": info.name, "embedding_model": info.embedding_model, "dimension": info.dimension,
                  "documents": [{"source": d.source, "chunks": d.n_chunks, "bytes": d.size, "sha256": d.sha256,
                                 "origin": d.origin, "updated_at": d.updated_at} for d in docs],
                  "retrieval_calibration": calibration.summary() if calibration else None})
        else:
            out.write(f"{info.name}: {info.documents} documents, {info.chunks} chunks, "
                      f"embedding model {info.embedding_model or '-'} ({info.dimension or '-'} dims)\n")
            out.write(f"  retrieval reliability: {calibration.summary() if calibration else 'not measured yet'}\n")
            for d in docs:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.updated_at))
                out.write(f"  {d.n_chunks:6} chunks  {d.size:10} B  {when}  {printable(d.source)}\n")
        return 0
    if args.command == "delete":
        app.delete_kb(args.name, lock_timeout_s=args.wait)
        out.write(f"deleted knowledge base {args.name!r} (its documents under {app.docs_root / args.name} are "
                  "kept)\n")
        return 0
    if args.command == "remove":
        report = app.remove_documents(args.name, args.paths, lock_timeout_s=args.wait)
        if args.json:
            emit({"kb": report.kb, "removed": report.removed, "missing": report.missing,
                  "deleted_files": report.deleted_files})
        else:
            for path in report.removed:
                out.write(f"removed: {printable(path)}\n")
            for path in report.missing:
                out.write(f"not found: {printable(path)}\n")
            for file in report.deleted_files:
                out.write(f"deleted file: {printable(file)}\n")
        return 1 if report.missing else 0
    raise AssertionError(args.command)


def _doctor(app, args, out, emit) -> int:
    from kb_qa.store import KnowledgeBase, doctor

    if args.command == "repair":
        done = doctor.repair(KnowledgeBase(app.store_root, args.name))
        if args.json:
            emit(done)
        else:
            out.write(("\n".join(done) or "nothing to repair") + "\n")
        return 0
    from kb_qa.errors import StorageError

    names = [args.name] if args.name else app.kb_names()
    reports = []
    for n in names:
        try:
            reports.append(doctor.check(KnowledgeBase(app.store_root, n)))
        except StorageError as exc:  # the disk failed while checking this one: say so, check the others
            reports.append(doctor.CheckReport(n, [str(exc)]))
    if args.json:
        emit([{"name": r.name, "ok": r.ok, "problems": r.problems, **r.facts} for r in reports])
    else:
        for r in reports:
            out.write(f"{r.name}: " + ("ok" if r.ok else "; ".join(r.problems)) + "\n")
    return 0 if all(r.ok for r in reports) else 1


def main(argv: list[str] | None = None, *, prog: str = "python -m kb_qa.kb", app=None) -> int:
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        from kb_qa.app import App

        return run(app or App(load_settings_from(args)), args)

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
