"""Build the answering model from `LLMSettings`: one `match` on the backend, each branch importing lazily.

`load_llm(settings)` returns an `LLMHandle`, or None when no model is configured or found, so the product runs
retrieval-only; `resolve_llm(settings)` returns the same plus a one-line reason/description for the UI and logs.
A misconfigured model (unsupported checkpoint, not enough memory) raises: that is an error to show, not a mode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb_qa.llm.estimate import EstimatingTokenizer, configured_tokenizer
from kb_qa.llm.tokenizer import History, build_chat_prompt

log = logging.getLogger(__name__)


class ApproxTokenCounter(EstimatingTokenizer):
    """For a remote model whose tokenizer.model is not available locally: `kb_qa.llm.estimate`'s upper bound,
    so packed prompts stay inside the window."""

    def build_chat_prompt(self, question: str, history: History = ()) -> str:
        return build_chat_prompt(question, history)


@dataclass
class LLMHandle:
    """What the rest of the product uses: `.langchain_llm` (invoke/stream), `.tokenizer` (count_tokens, encode),
    `.chat`/`.stream_chat` (question + history), `.describe()`, `.max_context_tokens`."""

    backend: str
    tokenizer: Any  # ChatGLM2Tokenizer, or ApproxTokenCounter for a remote model without a local tokenizer
    max_context_tokens: int
    max_new_tokens: int
    description: str
    generator: Any = None  # ChatGLM2Generator for the local backend
    client: Any = None  # OpenAICompatibleClient for the remote backend
    loaded: Any = None  # kb_qa.llm.loader.LoadedModel for the local backend
    _langchain_llm: Any = field(default=None, repr=False)

    @property
    def langchain_llm(self):
        """The LangChain `LLM` (ChatGLM2LLM or OpenAICompatibleLLM), built on first use (imports langchain_core)."""
        if self._langchain_llm is None:
            from kb_qa.llm.langchain_llm import ChatGLM2LLM, OpenAICompatibleLLM

            self._langchain_llm = (ChatGLM2LLM(generator=self.generator) if self.generator is not None
                                   else OpenAICompatibleLLM(client=self.client))
        return self._langchain_llm

    def describe(self) -> str:
        return self.description

    def build_prompt(self, question: str, history: History = ()) -> str:
        return build_chat_prompt(question, history)

    def count_prompt_tokens(self, question: str, history: History = ()) -> int:
        """Tokens the model will see for this turn: the window minus this is room for the answer."""
        return self.tokenizer.count_tokens(build_chat_prompt(question, history))

    def stream_chat(self, question: str, history: History = (), **overrides) -> Iterator[str]:
        if self.generator is not None:
            return self.generator.stream_chat(question, history, **overrides)
        return self.client.stream_chat(question, history, **overrides)

    def chat(self, question: str, history: History = (), **overrides) -> str:
        if self.generator is not None:
            return self.generator.chat(question, history, **overrides)
        return self.client.chat(question, history, **overrides)


def _llm_settings(settings):
    return getattr(settings, "llm", settings)


def retrieval_only_reason(settings) -> str | None:
    """Why there would be no model (cheap: looks at settings and the file system only); None if one is expected."""
    from kb_qa.llm.loader import resolve_checkpoint_path

    s = _llm_settings(settings)
    match s.backend:
        case "none":
            return "retrieval-only: llm.backend is 'none'"
        case "openai":
            return None
        case "llamacpp":
            if not s.model_path or not Path(s.model_path).expanduser().exists():
                return f"retrieval-only: llm.backend is 'llamacpp' and model_path {s.model_path!r} does not exist"
            return None
        case _:
            if not s.model_path:
                return "retrieval-only: no model_path configured (set llm.model_path or KB_QA_LLM__MODEL_PATH)"
            folder = resolve_checkpoint_path(s.model_path)
            if folder is None:
                return (f"retrieval-only: model_path {s.model_path!r} not found (neither a folder nor a repo id in "
                        "the local Hugging Face cache)")
            if not (folder / "config.json").is_file():
                return f"retrieval-only: {folder} has no config.json"
            return None


def resolve_llm(settings, *, static_cache: bool | None = None, compile: bool | None = None,
                free_memory=None, generation_lock=None) -> tuple[LLMHandle | None, str]:
    """(handle, handle.describe()) or (None, the reason answers are retrieval-only).

    `static_cache`/`compile`: the GPU decode speed-ups of ChatGLM2Generator (see generation.py); default from
    settings llm.static_cache / llm.compile. `generation_lock`: the lock the local generator serialises on
    (kb_qa.app.App passes its one generation lock, so every front end queues on the same object)."""
    s = _llm_settings(settings)
    if static_cache is None:
        static_cache = bool(getattr(s, "static_cache", False))
    if compile is None:
        compile = getattr(s, "compile", None)
    reason = retrieval_only_reason(s)
    if reason is not None:
        log.info(reason)
        return None, reason
    match s.backend:
        case "openai":
            handle = _openai_handle(s)
        case "llamacpp":
            handle = _llamacpp_handle(s)
        case "chatglm2":
            handle = _chatglm2_handle(s, static_cache=static_cache, compile=compile, free_memory=free_memory)
            if generation_lock is not None:
                handle.generator.lock = generation_lock
        case other:
            raise ValueError(f"llm.backend={other!r}: expected 'chatglm2', 'llamacpp', 'openai' or 'none'")
    log.info("answering model: %s", handle.describe())
    return handle, handle.describe()


def load_llm(settings, **options) -> LLMHandle | None:
    """The answering model, or None (retrieval-only); `resolve_llm` also gives the reason."""
    return resolve_llm(settings, **options)[0]


def _chatglm2_handle(s, *, static_cache: bool, compile: bool | None, free_memory) -> LLMHandle:
    from kb_qa.llm.generation import ChatGLM2Generator, SamplingParams
    from kb_qa.llm.loader import load_chatglm2

    loaded = load_chatglm2(s.model_path, device=s.device, dtype=s.dtype, quantization=s.quantization,
                           max_context_tokens=s.max_context_tokens, free_memory=free_memory,
                           adapter=getattr(s, "adapter", None))
    generator = ChatGLM2Generator(loaded.model, loaded.tokenizer, params=SamplingParams.from_settings(s),
                                  max_context_tokens=s.max_context_tokens, static_cache=static_cache,
                                  compile=compile)
    return LLMHandle(
        backend="chatglm2", tokenizer=loaded.tokenizer, max_context_tokens=s.max_context_tokens,
        max_new_tokens=s.max_new_tokens, description=loaded.describe(),
        generator=generator, loaded=loaded,
    )


def _llamacpp_handle(s) -> LLMHandle:
    from kb_qa.llm.llamacpp_backend import LlamaCppGenerator

    generator = LlamaCppGenerator.from_settings(s)
    return LLMHandle(backend="llamacpp", tokenizer=generator.tokenizer, max_context_tokens=s.max_context_tokens,
                     max_new_tokens=s.max_new_tokens, description=generator.describe(), generator=generator)


def _openai_handle(s) -> LLMHandle:
    from kb_qa.llm.openai_backend import OpenAICompatibleClient

    client = OpenAICompatibleClient.from_settings(s)
    tokenizer: Any = configured_tokenizer(s)
    note = ""
    if tokenizer is None:
        tokenizer, note = ApproxTokenCounter(), "; token counts over-estimated (no local tokenizer.model)"
    return LLMHandle(
        backend="openai", tokenizer=tokenizer, max_context_tokens=s.max_context_tokens, max_new_tokens=s.max_new_tokens,
        description=client.describe() + note, client=client,
    )
