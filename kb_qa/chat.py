"""`python -m kb_qa.chat --no-kb`: an interactive terminal chat with history, as ChatGLM2's cli_demo has it.

Type a question; `clear` resets the history, `stop` (or Ctrl-D) quits, Ctrl-C interrupts an answer. When the
history no longer fits the model's window with room for an answer, the oldest rounds are dropped.
Without `--no-kb` the chat answers from knowledge bases (`--kb`, `--top-k`, ...: see kb_qa.qa.cli).
"""

from __future__ import annotations

import argparse
import sys

from kb_qa.ask import EXIT_OK, EXIT_UNAVAILABLE, add_llm_arguments, load_handle_or_explain, settings_from_args

EXAMPLES = """examples:
  python -m kb_qa.chat --kb samples
  python -m kb_qa.chat --no-kb --llm ~/models/chatglm2-6b
  python -m kb_qa.chat --no-kb --llm THUDM/chatglm2-6b --temperature 0
in the chat:  clear = forget the history,  stop = quit
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kb_qa.chat", description="Interactive chat in the terminal.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--no-kb", action="store_true", help="plain chat with the model, no knowledge base")
    add_llm_arguments(parser)
    from kb_qa.qa.cli import add_kb_arguments

    add_kb_arguments(parser)
    return parser


def fit_history(handle, question: str, history: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop the oldest rounds until the prompt leaves room for an answer (at least 1/4 of the window)."""
    room = min(handle.max_new_tokens, handle.max_context_tokens // 4)
    while history and handle.count_prompt_tokens(question, history) > handle.max_context_tokens - room:
        history = history[1:]
    return history


def run_chat(handle, *, read=input, write=sys.stdout.write) -> None:
    """The read-answer loop (`read`/`write` replaceable for tests)."""
    from kb_qa.llm.generation import GenerationError
    from kb_qa.llm.openai_backend import OpenAIBackendError

    write(f"{handle.describe()}. Type a question; 'clear' resets the history, 'stop' quits.\n")
    history: list[tuple[str, str]] = []
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
            history = []
            write("(history cleared)\n")
            continue
        history = fit_history(handle, question, history)
        write("\nChatGLM2：")
        answer = ""
        try:
            for piece in handle.stream_chat(question, history):
                answer += piece
                write(piece)
                getattr(sys.stdout, "flush", lambda: None)()
        except KeyboardInterrupt:
            write(" (interrupted)")
        except (GenerationError, OpenAIBackendError) as error:
            write(f"\n(error: {error})\n")
            continue
        write("\n")
        history.append((question, answer))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.no_kb:
        from kb_qa.qa.cli import run_chat as run_kb_chat

        return run_kb_chat(args, settings_from_args(args))
    handle, code = load_handle_or_explain(settings_from_args(args))
    if handle is None:
        return code
    run_chat(handle)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
