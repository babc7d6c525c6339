"""`kb-qa chat`: an interactive terminal chat with history over knowledge bases; `--no-kb`: plain chat with the
model, as ChatGLM2's cli_demo has it.

Type a question; `clear` resets the history, `stop` (or Ctrl-D) quits, Ctrl-C interrupts an answer. When the
history no longer fits the model's window with room for an answer, the oldest rounds are dropped.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from kb_qa.cli.common import (
    add_answer_flags,
    answer_overrides,
    answering_app,
    guarded,
    one_line,
    parser,
    require_model,
    sampling_flags,
)

EXAMPLES = """examples:
  {prog} --kb samples
  {prog} --kb manuals --kb faq --top-k 3
  {prog} --no-kb --llm ~/models/chatglm2-6b
  {prog} --no-kb --llm THUDM/chatglm2-6b --temperature 0
in the chat:  clear = forget the history,  stop = quit

exit status: 0 ok, 2 bad arguments / settings / no such KB, 3 no model (--no-kb) or the configured model cannot
be loaded"""


def build_parser(prog: str = "python -m kb_qa.chat"):
    p = parser(prog, "Interactive chat in the terminal.", EXAMPLES.format(prog=prog))
    add_answer_flags(p)
    return p


def fit_history(handle, question: str, history: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop the oldest rounds until the prompt leaves room for an answer (at least 1/4 of the window)."""
    room = min(handle.max_new_tokens, handle.max_context_tokens // 4)
    while history and handle.count_prompt_tokens(question, history) > handle.max_context_tokens - room:
        history = history[1:]
    return history


def _turns(read: Callable[[str], str], write: Callable[[str], object]):
    """The user's questions; handles `clear` (yields None: reset) and `stop` / end of input (returns)."""
    while True:
        try:
            question = read("\n用户：").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if not question:
            continue
        if question == "stop":
            return
        if question == "clear":
            write("(history cleared)\n")
            yield None
            continue
        yield question


def _flush() -> None:
    getattr(sys.stdout, "flush", lambda: None)()


def run_chat(handle, *, read: Callable[[str], str] = input, write: Callable[[str], object] = sys.stdout.write,
             **sampling) -> None:
    """Plain chat with a model handle (--no-kb): the read-answer loop, `read`/`write` replaceable for tests."""
    from kb_qa.errors import KbQaError

    write(f"{handle.describe()}. Type a question; 'clear' resets the history, 'stop' quits.\n")
    history: list[tuple[str, str]] = []
    for question in _turns(read, write):
        if question is None:
            history = []
            continue
        history = fit_history(handle, question, history)
        write("\nChatGLM2：")
        answer = ""
        try:
            for piece in handle.stream_chat(question, history, **sampling):
                answer += piece
                write(piece)
                _flush()
        except KeyboardInterrupt:
            write(" (interrupted)")
        except (KbQaError, RuntimeError) as error:  # GenerationError, OpenAIBackendError: report, keep the session
            write(f"\n(error: {one_line(error)})\n")
            continue
        write("\n")
        history.append((question, answer))


def run_kb_chat(app, args, *, read: Callable[[str], str] = input, out=None) -> int:
    """Multi-turn chat over args.kb with history (app.stream_answer); the history holds generated answers only."""
    from kb_qa.cli.ask import format_sources
    from kb_qa.errors import KbQaError
    from kb_qa.schema import Answer

    out = out or sys.stdout
    require_model(app)
    kbs = args.kb or [app.settings.default_kb]
    for name in kbs:
        app.kb(name)  # fail now (exit 2) on a KB that does not exist, not at the first question
    status = app.llm_status()
    who = (status.reason or status.name or "a language model") if app.llm is not None else \
        "retrieval only (no model loaded)"
    out.write(f"knowledge base(s): {', '.join(kbs)}; {who}. 'clear' resets the history, 'stop' quits.\n")
    history: list[tuple[str, str]] = []
    overrides = answer_overrides(args)
    for question in _turns(read, out.write):
        if question is None:
            history = []
            continue
        out.write("\n答：")
        answer = None
        try:
            for item in app.stream_answer(question, history, kbs, overrides=overrides, files=args.file):
                if isinstance(item, Answer):
                    answer = item
                else:
                    out.write(item)
                    out.flush()
        except KeyboardInterrupt:
            out.write(" (interrupted)\n")
            continue
        except (KbQaError, RuntimeError) as exc:  # report and keep the session
            out.write(f"\n(error: {one_line(exc)})\n")
            continue
        if answer is None:  # the stream ended without its final Answer: nothing to cite or to remember
            out.write("\n")
            continue
        out.write("\n" + format_sources(answer) + "\n")
        if answer.mode in ("llm", "chat"):
            history.append((question, answer.text))
    return 0


def main(argv: list[str] | None = None, *, prog: str = "python -m kb_qa.chat", app=None,
         read: Callable[[str], str] = input, out=None) -> int:
    args = build_parser(prog).parse_args(argv)

    def body() -> int:
        from kb_qa.errors import UnavailableError

        application = answering_app(args, app)
        if not args.no_kb:
            return run_kb_chat(application, args, read=read, out=out)
        handle = application.llm
        if handle is None:
            raise UnavailableError(f"there is no model to chat with ({application.llm_status().reason})")
        run_chat(handle, read=read, write=(out or sys.stdout).write, **sampling_flags(args))
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
