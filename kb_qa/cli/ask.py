"""`kb-qa ask "question"`: one answer, streamed, with its sources (app.stream_answer); `--no-kb`: ChatGLM2's own
answer as one chat round with an empty history; `--json`: one object {"answer", "sources", "mode", "query",
"timings_ms"} (sources [] with --no-kb).

No model configured: retrieval-only answers, labelled as such (a note on stderr says why). A model that is
configured but cannot be loaded is an error (exit 3), not a silent fallback.
"""

from __future__ import annotations

import json
import sys

from kb_qa.cli.common import (
    add_answer_flags,
    answer_overrides,
    answering_app,
    guarded,
    parser,
    printable,
    require_model,
    sampling_flags,
)

EXAMPLES = """examples:
  {prog} "大模型推理优化有哪些策略？" --kb samples
  {prog} "What does the manual say about resets?" --kb manuals --kb faq --top-k 3 --json
  {prog} "保修期多久？" --kb manuals --file warranty.pdf --llm ~/models/chatglm2-6b --temperature 0
  {prog} "你好" --no-kb --llm ~/models/chatglm2-6b
  {prog} "你好" --no-kb --json          (model from the settings or KB_QA_LLM__MODEL_PATH)

exit status: 0 ok, 1 the answer failed, 2 bad arguments / settings / no such KB, 3 no model (--no-kb) or the
configured model cannot be loaded, 130 Ctrl-C"""


def build_parser(prog: str = "python -m kb_qa.ask"):
    p = parser(prog, "Answer one question.", EXAMPLES.format(prog=prog))
    p.add_argument("question", help="the question")
    p.add_argument("--json", action="store_true", help='print {"answer": ..., "sources": [...]} instead')
    add_answer_flags(p)
    return p


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
        lines.append(f"  [{n}] {printable(s.kb)}: {printable(s.label())}  (score {s.score:.2f})")
    return "\n".join(lines)


def answer_json(answer) -> str:
    return json.dumps({
        "answer": answer.text, "sources": [source_dict(n, s) for n, s in enumerate(answer.sources, start=1)],
        "mode": answer.mode, "query": answer.query, "timings_ms": answer.timings_ms,
    }, ensure_ascii=False)


def run(app, args, out=None) -> int:
    from kb_qa.schema import Answer

    out = out or sys.stdout
    if args.no_kb:
        return _plain(app, args, out)
    require_model(app)
    answer = None
    for item in app.stream_answer(args.question, (), args.kb, overrides=answer_overrides(args),
                                     files=args.file):
        if isinstance(item, Answer):
            answer = item
        elif not args.json:
            out.write(item)
            out.flush()
    assert answer is not None
    out.write(answer_json(answer) + "\n" if args.json else "\n" + format_sources(answer) + "\n")
    return 0


def _plain(app, args, out) -> int:
    from kb_qa.errors import UnavailableError

    if app.llm is None:
        status = app.llm_status()
        hint = "" if status.configured else "; pass --llm PATH"
        raise UnavailableError(f"there is no model to answer with ({status.reason}){hint}")
    if args.json:
        text = "".join(app.stream_chat(args.question, **sampling_flags(args)))
        out.write(json.dumps({"answer": text, "sources": []}, ensure_ascii=False) + "\n")
        return 0
    for piece in app.stream_chat(args.question, **sampling_flags(args)):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


def main(argv: list[str] | None = None, *, prog: str = "python -m kb_qa.ask", app=None, out=None) -> int:
    args = build_parser(prog).parse_args(argv)
    return guarded(lambda: run(answering_app(args, app), args, out))


if __name__ == "__main__":
    sys.exit(main())
