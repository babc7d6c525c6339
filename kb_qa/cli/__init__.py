"""The command line: `kb-qa <verb>` / `python -m kb_qa <verb>`, one module per verb, one error path (common.py).

    kb_qa.cli.main(argv=None) -> int      the dispatcher (console script `kb-qa = "kb_qa.cli:main"`)

Each verb module has `main(argv=None, *, prog=...) -> int`; `python -m kb_qa.ingest`, `kb_qa.kb`, `kb_qa.ask`,
`kb_qa.chat`, `kb_qa.eval`, `kb_qa.api` and `kb_qa.llm.convert` reach the same code.
"""

from __future__ import annotations

import importlib
import os
import sys

VERBS = {
    "ingest": "add documents to a knowledge base",
    "kb": "list, show, remove documents from, delete knowledge bases",
    "ask": "answer one question (from knowledge bases, or --no-kb)",
    "chat": "interactive chat in the terminal",
    "eval": "retrieval quality on a labelled set (BEIR layout)",
    "api": "serve the HTTP API",
    "convert": "write a plain-transformers copy of a ChatGLM2 checkpoint",
}

EXAMPLES = """examples:
  {prog} ingest ./docs --kb manuals
  {prog} kb list
  {prog} ask "这份手册怎么安装？" --kb manuals
  {prog} chat --kb manuals
  {prog} api --port 7861
  {prog} <verb> --help          (each verb's options and examples)

exit status: 0 ok, 1 failed, 2 usage (bad arguments, settings, names), 3 unavailable (model, backend),
4 busy (the knowledge base is locked), 130 interrupted"""


def version() -> str:
    try:
        from kb_qa import __version__

        return str(__version__)
    except ImportError:
        pass
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        return dist_version("kb_qa")
    except (ImportError, PackageNotFoundError, ValueError):
        return "0+unknown"


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m kb_qa" if name in ("__main__.py", "-m", "-c", "") else "kb-qa"


def usage(prog: str) -> str:
    width = max(map(len, VERBS))
    verbs = "\n".join(f"  {verb:{width}}  {text}" for verb, text in VERBS.items())
    return (f"usage: {prog} <verb> [options]   |   {prog} --version\n\nLocal knowledge-base question answering "
            f"(ChatGLM2 + hybrid retrieval).\n\nverbs:\n{verbs}\n\n{EXAMPLES.format(prog=prog)}\n")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    prog = _prog()
    if not args or args[0] in ("-h", "--help", "help"):
        (sys.stdout if args else sys.stderr).write(usage(prog))
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"kb-qa {version()}")
        return 0
    verb = args[0]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; one of: {', '.join(VERBS)} (see {prog} --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(f"kb_qa.cli.{verb}")
    try:
        return int(module.main(args[1:], prog=f"{prog} {verb}") or 0)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2, its message already printed)
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
