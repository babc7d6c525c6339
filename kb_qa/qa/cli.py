"""Command-line answering from knowledge bases, for `python -m kb_qa.ask` and `python -m kb_qa.chat`.

    add_kb_arguments(parser)           --kb NAME (repeatable), --top-k N, --threshold S, --file PATH (repeatable),
                                       and --llm / --temperature / --json unless the parser already has them
    run_ask(args, settings) -> int     one answer streamed to stdout, then its sources; --json: one object
                                       {"answer", "sources", "mode", "query", "timings_ms"}
    run_chat(args, settings) -> int    interactive multi-turn chat over the KB(s): `clear` forgets the history,
                                       `stop` (or Ctrl-D) quits

No model configured (llm.model_path unset): retrieval-only answers, labelled as such. A model that is configured
but cannot be loaded is an error (exit 2), not a silent fallback. Exit codes: 0 ok, 1 the answer failed,
2 the run could not start (no such KB, bad settings, model failed to load).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

EXIT_OK, EXIT_ERROR, EXIT_UNAVAILABLE = 0, 1, 2

EXAMPLES = """examples:
  python -m kb_qa.ask "ChatGLM2 的上下文长度是多少？"                  (default KB, model from the settings)
  python -m kb_qa.ask "What does the manual say about resets?" --kb manuals --kb faq --top-k 3
  python -m kb_qa.ask "保修期多久？" --kb manuals --file warranty.pdf --llm ~/models/chatglm2-6b --temperature 0
  python -m kb_qa.ask "保修期多久？" --json                             (one JSON object: answer + sources)
  python -m kb_qa.chat --kb manuals                                      (multi-turn; 'clear', 'stop')"""


def add_kb_arguments(parser: argparse.ArgumentParser) -> None:
    """Knowledge-base flags; model/output flags are added only if the parser does not define them already."""
    have = set(getattr(parser, "_option_string_actions", {}))
    group = parser.add_argument_group("knowledge base")
    group.add_argument("--kb", action="append", metavar="NAME",
                       help="knowledge base to search (repeat for several; default: settings default_kb)")
    group.add_argument("--top-k", type=int, metavar="N", help="passages retrieved (retrieval.top_k)")
    group.add_argument("--threshold", type=float, metavar="S",
                       help="minimum relevance score in [0, 1] (retrieval.score_threshold)")
    group.add_argument("--file", action="append", metavar="PATH",
                       help="only passages of this document (path as `python -m kb_qa.kb show` lists it); repeatable")
    if "--llm" not in have:
        group.add_argument("--llm", metavar="PATH", help="ChatGLM2 checkpoint folder (llm.model_path); "
                           "none configured = retrieval-only answers")
    if "--temperature" not in have:
        group.add_argument("--temperature", type=float, metavar="T", help="0 = greedy (llm.temperature)")
    if "--json" not in have:
        group.add_argument("--json", action="store_true", help='print one object {"answer": ..., "sources": [...]}')


def _overrides(args) -> dict:
    return {
        "retrieval.top_k": getattr(args, "top_k", None),
        "retrieval.score_threshold": getattr(args, "threshold", None),
        "llm.model_path": getattr(args, "llm", None),
        "llm.temperature": getattr(args, "temperature", None),
        "llm.max_new_tokens": getattr(args, "max_new_tokens", None),
    }


def _prepare(args, settings, app):
    """(app, llm handle or None, overrides for the chain); raises _Unavailable if a configured model fails."""
    from kb_qa.app import App
    from kb_qa.qa.chain import apply_overrides

    overrides = {k: v for k, v in _overrides(args).items() if v is not None}
    settings = apply_overrides(settings, overrides)
    if app is None:
        app = App(settings)
    llm = _load_llm(settings)
    return app, llm, overrides


class _Unavailable(RuntimeError):
    pass


def _load_llm(settings):
    from kb_qa.llm.factory import resolve_llm

    try:
        handle, reason = resolve_llm(settings.llm)
    except Exception as exc:
        raise _Unavailable(f"cannot load the model: {exc}") from exc
    if handle is None:
        print(f"note: {reason}", file=sys.stderr)
    return handle


def source_dict(n: int, source) -> dict:
    return {"n": n, "kb": source.kb, "source": source.source, "page": source.page, "heading": source.heading,
            "score": round(source.score, 4),
            "dense_score": None if source.dense_score is None else round(source.dense_score, 4),
            "keyword_score": None if source.keyword_score is None else round(source.keyword_score, 4),
            "text": source.text}


def format_sources(answer) -> str:
    if not answer.sources:
        return ""
    lines = ["", "来源 / sources:" if answer.mode == "llm" else "sources:"]
    for n, s in enumerate(answer.sources, start=1):
        lines.append(f"  [{n}] {s.kb}: {s.label()}  (score {s.score:.2f})")
    return "\n".join(lines)


def run_ask(args, settings, *, app=None, out=None) -> int:
    """One question (args.question) against args.kb; see the module docstring."""
    from kb_qa.qa.chain import QAChain
    from kb_qa.schema import Answer

    out = out or sys.stdout
    try:
        app, llm, overrides = _prepare(args, settings, app)
        chain = QAChain(app, llm)
        stream = chain.stream_answer(args.question, (), args.kb, overrides=overrides, files=args.file)
        answer = None
        for item in stream:
            if isinstance(item, Answer):
                answer = item
            elif not args.json:
                out.write(item)
                out.flush()
    except _Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line for the user
        code, message = _describe_error(exc)
        print(f"\nerror: {message}", file=sys.stderr)
        return code
    assert answer is not None
    if args.json:
        out.write(json.dumps({
            "answer": answer.text, "sources": [source_dict(n, s) for n, s in enumerate(answer.sources, start=1)],
            "mode": answer.mode, "query": answer.query, "timings_ms": answer.timings_ms,
        }, ensure_ascii=False) + "\n")
    else:
        out.write("\n" + format_sources(answer) + "\n")
    return EXIT_OK


def run_chat(args, settings, *, app=None, read: Callable[[str], str] = input, out=None) -> int:
    """Interactive chat over args.kb with history; `clear` resets it, `stop` or end of input quits."""
    from kb_qa.qa.chain import QAChain
    from kb_qa.schema import Answer

    out = out or sys.stdout
    try:
        app, llm, overrides = _prepare(args, settings, app)
    except _Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Exception as exc:  # noqa: BLE001
        code, message = _describe_error(exc)
        print(f"error: {message}", file=sys.stderr)
        return code
    chain = QAChain(app, llm)
    kbs = args.kb or [app.settings.default_kb]
    who = llm.describe() if llm is not None else "retrieval only (no model loaded)"
    out.write(f"knowledge base(s): {', '.join(kbs)}; {who}. 'clear' resets the history, 'stop' quits.\n")
    history: list[tuple[str, str]] = []
    while True:
        try:
            question = read("\n用户：").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return EXIT_OK
        if not question:
            continue
        if question == "stop":
            return EXIT_OK
        if question == "clear":
            history = []
            out.write("(history cleared)\n")
            continue
        out.write("\n答：")
        answer = None
        try:
            for item in chain.stream_answer(question, history, kbs, overrides=overrides,
                                            files=getattr(args, "file", None)):
                if isinstance(item, Answer):
                    answer = item
                else:
                    out.write(item)
                    out.flush()
        except KeyboardInterrupt:
            out.write(" (interrupted)\n")
            continue
        except Exception as exc:  # noqa: BLE001 - report and keep the session
            out.write(f"\n(error: {_describe_error(exc)[1]})\n")
            continue
        out.write("\n" + format_sources(answer) + "\n")
        if answer.mode in ("llm", "chat"):
            history.append((question, answer.text))


def _describe_error(exc: BaseException) -> tuple[int, str]:
    from pydantic import ValidationError

    from kb_qa.naming import InvalidName
    from kb_qa.qa.packing import ContextTooLong
    from kb_qa.store import KnowledgeBaseError, KnowledgeBaseNotFound

    if isinstance(exc, (KnowledgeBaseNotFound, InvalidName)):
        return EXIT_UNAVAILABLE, f"{exc} (see: python -m kb_qa.kb list)"
    if isinstance(exc, (ValidationError, KnowledgeBaseError)):
        return EXIT_UNAVAILABLE, str(exc)
    if isinstance(exc, (ContextTooLong, ValueError)):
        return EXIT_ERROR, str(exc)
    return EXIT_ERROR, f"{type(exc).__name__}: {exc}"


def build_parser(prog: str = "python -m kb_qa.ask") -> argparse.ArgumentParser:
    """A standalone parser (the lead's ask.py/chat.py add these flags to theirs)."""
    p = argparse.ArgumentParser(prog=prog, description="Answer from knowledge bases.", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if prog.endswith("ask"):
        p.add_argument("question")
    p.add_argument("--config", metavar="YAML", help="settings file (default: configs/default.yaml)")
    add_kb_arguments(p)
    return p


def main(argv: list[str] | None = None, prog: str = "python -m kb_qa.ask") -> int:
    from kb_qa.settings import load_settings

    args = build_parser(prog).parse_args(argv)
    settings = load_settings(args.config)
    return run_ask(args, settings) if prog.endswith("ask") else run_chat(args, settings)
