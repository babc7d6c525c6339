"""What every verb shares: the flag groups, settings from flags, the one error path, and safe printing of names.

- One error path (`guarded`): a `KbQaError` prints `error: <one line>` to stderr and exits with its `exit_code`
  (kb_qa.errors: 1 failed, 2 usage, 3 unavailable, 4 busy, 130 Ctrl-C); Ctrl-C anywhere exits 130. Errors of
  parts that do not derive from KbQaError yet are mapped here by class (never by name strings). Anything else
  is a bug and keeps its traceback.
- `printable(text)`: file names with newlines, RTL overrides or other control/format characters are shown
  escaped (`\\n`, `\\u202e`), so a crafted name cannot forge lines or reorder what `kb show` prints.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections.abc import Callable

from kb_qa.errors import (
    EXIT_BUSY,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    KbQaError,
)

Formatter = argparse.RawDescriptionHelpFormatter


def parser(prog: str, description: str, examples: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, epilog=examples, formatter_class=Formatter)


# -- flag groups -----------------------------------------------------------------------------------------------
def add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="settings file (default: $KB_QA_CONFIG or configs/default.yaml)")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Which model answers and how (ask, chat)."""
    g = p.add_argument_group("model")
    g.add_argument("--llm", metavar="PATH", help="ChatGLM2 checkpoint folder or a repo id in the local Hugging Face "
                   "cache (llm.model_path); none configured = retrieval-only answers")
    g.add_argument("--temperature", type=float, metavar="T", help="0 = greedy (llm.temperature)")
    g.add_argument("--max-new-tokens", type=int, metavar="N", help="answer length limit (llm.max_new_tokens)")
    g.add_argument("--device", help="'auto', 'cuda', 'cuda:1', 'mps' or 'cpu' (llm.device)")
    g.add_argument("--quantization", choices=["none", "int8", "int4"], help="llm.quantization (needs CUDA)")


def add_kb_flags(p: argparse.ArgumentParser) -> None:
    """Which knowledge bases answer (ask, chat)."""
    g = p.add_argument_group("knowledge base")
    g.add_argument("--kb", action="append", metavar="NAME",
                   help="knowledge base to search (repeat for several; default: settings default_kb)")
    g.add_argument("--no-kb", action="store_true", help="plain chat with the model, no knowledge base")
    g.add_argument("--top-k", type=int, metavar="N", help="passages retrieved (retrieval.top_k)")
    g.add_argument("--threshold", type=float, metavar="S",
                   help="minimum relevance score in [0, 1] (retrieval.score_threshold)")
    g.add_argument("--file", action="append", metavar="PATH",
                   help="only passages of this document (path as `kb show` lists it); repeatable")


def add_answer_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the verbs that answer questions (ask, chat): knowledge bases, model, settings file."""
    add_kb_flags(p)
    add_model_flags(p)
    add_config_flag(p)


def sampling_flags(args: argparse.Namespace) -> dict:
    """The generation flags given (--temperature, --max-new-tokens) as keywords for a plain chat (--no-kb)."""
    values = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
    return {k: v for k, v in values.items() if v is not None}


def answering_app(args: argparse.Namespace, app=None):
    """`app`, or the App the flags describe (settings file + model flags); transformers' chatter silenced."""
    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    if app is not None:
        return app
    from kb_qa.app import App

    return App(load_settings_from(args, model_overrides(args)))


def model_overrides(args: argparse.Namespace) -> dict:
    return {
        "llm.model_path": getattr(args, "llm", None),
        "llm.temperature": getattr(args, "temperature", None),
        "llm.max_new_tokens": getattr(args, "max_new_tokens", None),
        "llm.device": getattr(args, "device", None),
        "llm.quantization": getattr(args, "quantization", None),
        "retrieval.top_k": getattr(args, "top_k", None),
        "retrieval.score_threshold": getattr(args, "threshold", None),
    }


def answer_overrides(args: argparse.Namespace) -> dict:
    """The per-request part of the flags (what the chain may change per answer; not which model is loaded)."""
    keys = ("retrieval.top_k", "retrieval.score_threshold", "llm.temperature", "llm.max_new_tokens")
    flags = model_overrides(args)
    return {k: flags[k] for k in keys if flags[k] is not None}


def load_settings_from(args: argparse.Namespace, overrides: dict | None = None):
    from kb_qa.settings import load_settings

    values = {k: v for k, v in (overrides or {}).items() if v is not None}
    return load_settings(getattr(args, "config", None), values or None)


def require_model(app) -> None:
    """A configured model that cannot be loaded is an error (exit 3), not a silent retrieval-only fallback."""
    from kb_qa.errors import UnavailableError

    if app.llm is None:
        status = app.llm_status()
        if status.configured:
            raise UnavailableError(f"cannot load the model: {status.reason}")
        print(f"note: {status.reason}", file=sys.stderr)


# -- the one error path ------------------------------------------------------------------------------------------
def guarded(body: Callable[[], int], *, err=None) -> int:
    err = err or sys.stderr
    try:
        return body()
    except KeyboardInterrupt:
        print("\ninterrupted", file=err)
        return EXIT_INTERRUPTED
    except KbQaError as exc:
        print(f"error: {one_line(exc)}", file=err)
        for line in getattr(exc, "details", ()):
            print(f"  {printable(line)}", file=err)
        return exc.exit_code
    except Exception as exc:
        code = _code_of(exc)
        if code is None:
            raise
        print(f"error: {one_line(exc)}", file=err)
        return code


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _code_of(exc: Exception) -> int | None:
    """Exit code for user-facing errors of parts not yet derived from KbQaError; None = a bug (re-raised)."""
    import pydantic

    from kb_qa import store

    if isinstance(exc, pydantic.ValidationError):
        return EXIT_USAGE
    if isinstance(exc, store.KnowledgeBaseBusy):
        return EXIT_BUSY
    if isinstance(exc, (store.KnowledgeBaseNotFound, store.EmbeddingMismatch)):
        return EXIT_USAGE
    if isinstance(exc, store.KnowledgeBaseError):
        return EXIT_ERROR
    mapped: list[tuple[str, str, int]] = [  # (module, class, code), checked only once the module is loaded
        ("kb_qa.embeddings", "EmbeddingModelNotFound", EXIT_UNAVAILABLE),
        ("kb_qa.embeddings", "EmbeddingBackendUnavailable", EXIT_UNAVAILABLE),
        ("kb_qa.llm.loader", "ModelLoadError", EXIT_UNAVAILABLE),
        ("kb_qa.llm.config", "UnsupportedCheckpointError", EXIT_UNAVAILABLE),
        ("kb_qa.llm.generation", "GenerationError", EXIT_ERROR),
        ("kb_qa.llm.openai_backend", "OpenAIBackendError", EXIT_ERROR),
    ]
    for module, name, code in mapped:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return code
    return None


# -- safe printing -----------------------------------------------------------------------------------------------
def printable(text: str) -> str:
    """`text` with control, format (bidi overrides, zero-width), separator and surrogate characters escaped."""
    out = []
    for ch in str(text):
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(ch)
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or (
                f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"))
        else:
            out.append(ch)
    return "".join(out)
