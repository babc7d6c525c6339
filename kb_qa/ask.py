"""`python -m kb_qa.ask "question"`: answer one question from the command line.

By default the answer comes from knowledge bases (`--kb`, `--top-k`, ...: see kb_qa.qa.cli), streamed with its
sources listed, or retrieval-only passages when no model is configured. `--no-kb`: ChatGLM2's answer to the
question as one chat round with an empty history (as ChatGLM2's own demos do), or `{"answer": ..., "sources": []}`
with `--json`.
Also holds the flags and model loading shared with `python -m kb_qa.chat`.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_ERROR, EXIT_UNAVAILABLE = 0, 1, 2

EXAMPLES = """examples:
  python -m kb_qa.ask "大模型推理优化有哪些策略？" --kb samples
  python -m kb_qa.ask "What does the manual say about resets?" --kb manuals --kb faq --top-k 3 --json
  python -m kb_qa.ask "你好" --no-kb --llm ~/models/chatglm2-6b
  python -m kb_qa.ask "What is RAG?" --no-kb --llm THUDM/chatglm2-6b --temperature 0 --max-new-tokens 256
  python -m kb_qa.ask "你好" --no-kb --json          (model from configs/default.yaml or KB_QA_LLM__MODEL_PATH)
"""


def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that choose and tune the answering model (shared by ask and chat)."""
    group = parser.add_argument_group("model")
    group.add_argument("--llm", metavar="PATH", help="ChatGLM2 checkpoint folder or a repo id in the local Hugging "
                       "Face cache (llm.model_path)")
    group.add_argument("--temperature", type=float, help="0 = greedy (llm.temperature, default 0.8)")
    group.add_argument("--max-new-tokens", type=int, metavar="N", help="answer length limit (llm.max_new_tokens)")
    group.add_argument("--device", help="'auto', 'cuda', 'cuda:1', 'mps' or 'cpu' (llm.device)")
    group.add_argument("--quantization", choices=["none", "int8", "int4"], help="llm.quantization (needs CUDA)")
    group.add_argument("--config", metavar="YAML", help="settings file (default: configs/default.yaml)")


def settings_from_args(args: argparse.Namespace):
    from kb_qa.settings import load_settings

    return load_settings(args.config, overrides={
        "llm.model_path": args.llm,
        "llm.temperature": args.temperature,
        "llm.max_new_tokens": args.max_new_tokens,
        "llm.device": args.device,
        "llm.quantization": args.quantization,
    })


def load_handle_or_explain(settings):
    """(handle, None) or (None, exit code) after printing why there is no model to stderr."""
    import logging

    from kb_qa.llm import resolve_llm
    from kb_qa.llm.config import UnsupportedCheckpointError
    from kb_qa.llm.loader import ModelLoadError

    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        handle, reason = resolve_llm(settings.llm)
    except (ModelLoadError, UnsupportedCheckpointError, FileNotFoundError) as error:
        print(f"error: cannot load the model: {error}", file=sys.stderr)
        return None, EXIT_UNAVAILABLE
    if handle is None:
        print(f"error: there is no model to answer with ({reason}); pass --llm PATH", file=sys.stderr)
        return None, EXIT_UNAVAILABLE
    return handle, None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kb_qa.ask", description="Answer one question.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("question", help="the question")
    parser.add_argument("--no-kb", action="store_true",
                        help="plain chat with the model, no knowledge base (one round, empty history)")
    parser.add_argument("--json", action="store_true", help='print {"answer": ..., "sources": [...]} instead')
    add_llm_arguments(parser)
    from kb_qa.qa.cli import add_kb_arguments

    add_kb_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.no_kb:
        from kb_qa.qa.cli import run_ask

        return run_ask(args, settings_from_args(args))
    handle, code = load_handle_or_explain(settings_from_args(args))
    if handle is None:
        return code
    from kb_qa.llm.generation import GenerationError
    from kb_qa.llm.openai_backend import OpenAIBackendError

    try:
        if args.json:
            answer = handle.chat(args.question)
            print(json.dumps({"answer": answer, "sources": []}, ensure_ascii=False))
        else:
            for piece in handle.stream_chat(args.question):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    except (GenerationError, OpenAIBackendError) as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
