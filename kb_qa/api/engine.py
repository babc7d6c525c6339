"""The API's one adapter to the model-dependent parts: the LLM (kb_qa.llm), retrieval (kb_qa.retrieval) and the
question-answering chain (kb_qa.qa). Routes call only this; if those modules change shape, this file changes.

Blocking by design (models run on threads): routes call it from the thread pool. It does not queue or limit
anything (that is `kb_qa.api.capacity`), and does not format HTTP responses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from kb_qa.app import App
from kb_qa.errors import UnavailableError, UsageError
from kb_qa.llm.tokenizer import build_chat_prompt
from kb_qa.schema import Answer, History, Source

log = logging.getLogger(__name__)

GREEDY_BELOW = 1e-5  # temperatures below this mean greedy decoding (0)


class LLMUnavailable(UnavailableError):
    """Plain chat was asked for but no language model is loaded (retrieval-only mode)."""


class BadRequest(UsageError):
    """The request cannot be answered as asked (HTTP 400)."""


class PromptTooLong(BadRequest):
    """The question (with its history) does not fit the token budget the request allows."""


@dataclass
class Generation:
    """What one answer cost, filled in while it is generated: OpenAI's `usage` and `finish_reason`. Counts are
    ChatGLM2 tokens of the prompt the model saw (prefix included) and of the answer it generated."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"

    def finished(self, generated: int, reason: str) -> None:
        self.completion_tokens, self.finish_reason = generated, reason


class _AnswerHandle:
    """The loaded LLM handle as the QA chain sees it for one request: its LangChain LLM is `_AnswerLLM`."""

    def __init__(self, handle, params: GenParams, stats: Generation):
        self._handle = handle
        self.tokenizer = getattr(handle, "tokenizer", None)
        self.langchain_llm = _AnswerLLM(handle, params, stats)

    def __getattr__(self, name):
        return getattr(self._handle, name)


class _AnswerLLM:
    """`stream` (the answer) with the request's sampling (top_p, stop, seed) and `stats` filled in; `invoke`
    (the follow-up rewriting) goes to the plain LangChain LLM. (The system text is the chain's: kb_qa.qa.chain.)"""

    def __init__(self, handle, params: GenParams, stats: Generation):
        self._handle, self._params, self._stats = handle, params, stats
        self._llm = handle.langchain_llm

    def stream(self, prompt: str, *, history=(), **kwargs):
        sampling = {"top_p": self._params.top_p, "stop": list(self._params.stop) or None, **kwargs}
        return stream_counted(self._handle, prompt, list(history), sampling, self._params.seed, self._stats)

    def invoke(self, prompt, **kwargs):
        return self._llm.invoke(prompt, **kwargs)

    def __getattr__(self, name):
        return getattr(self._llm, name)


def stream_counted(handle, question: str, history: list, sampling: dict, seed: int | None,
                   stats: Generation) -> Iterator[str]:
    """The answer's pieces for `question` after `history`, filling `stats`. The local ChatGLM2 reports exactly
    what it generated and why it stopped; a remote model's answer is re-counted with the local tokenizer (its
    finish reason is the server's business: 'stop')."""
    sampling = {k: v for k, v in sampling.items() if v is not None}
    tokenizer = getattr(handle, "tokenizer", None)
    prompt = build_chat_prompt(question, history)
    if tokenizer is not None:
        stats.prompt_tokens = tokenizer.count_tokens(prompt)
    generator = getattr(handle, "generator", None)
    if generator is not None:
        return generator.stream(prompt, seed=seed, on_finish=stats.finished, **sampling)
    if seed is not None:
        sampling["seed"] = seed
    return _recounted(handle.stream_chat(question, history, **sampling), tokenizer, stats)


def relayed(pieces: Iterator[str], text: list[str]) -> Iterator[str]:
    """`pieces`, each also appended to `text`; the source is closed however this ends, so a reader that leaves
    early (a client gone mid-stream) stops the model at its next token."""
    try:
        for piece in pieces:
            text.append(piece)
            yield piece
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _recounted(pieces: Iterator[str], tokenizer, stats: Generation) -> Iterator[str]:
    text: list[str] = []
    yield from relayed(pieces, text)
    if tokenizer is not None:
        stats.completion_tokens = tokenizer.count_tokens("".join(text), add_prefix=False)


@dataclass(frozen=True)
class GenParams:
    """Per-request sampling; None = the settings' value. `max_length` is ChatGLM2's prompt + answer tokens."""

    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    max_length: int | None = None
    stop: tuple[str, ...] = ()  # the answer ends before the first of these strings
    seed: int | None = None  # seeds sampling (torch's RNG) right before the answer is generated

    def __post_init__(self):
        # logits / 1e-300 overflow to inf and sampling fails; a temperature that small is greedy decoding anyway.
        if self.temperature is not None and self.temperature < GREEDY_BELOW:
            object.__setattr__(self, "temperature", 0.0)


@dataclass(frozen=True)
class ModelInfo:
    name: str | None
    state: str  # loaded | not-loaded | loading | unavailable
    detail: str | None = None


class Engine:
    """The API's view of one `App` (one per server process): the App owns the model (`App.llm`, loaded once,
    its failure in `app.llm_status()`), the generation lock every front end shares (`app.generation_lock`, taken
    by the handle itself) and the retriever; this adds only what HTTP needs (ids, per-request sampling, usage)."""

    def __init__(self, app: App):
        self.app = app

    # -- models --------------------------------------------------------------------------------------------
    def embedding_info(self) -> ModelInfo:
        name = self.app.settings.embedding.model
        if not self.app.embeddings_loaded:
            return ModelInfo(name, "not-loaded", "loads on first use")
        describe = getattr(self.app.embeddings, "describe", None)
        return ModelInfo(name, "loaded", describe() if describe else None)

    def llm_info(self) -> ModelInfo:
        status = self.app.llm_status()
        if status.state == "loading":
            return ModelInfo(status.name, status.state, None)
        if status.state == "unavailable":
            return ModelInfo(None, status.state, status.reason)
        return ModelInfo(status.name, status.state, status.reason)

    def llm_name(self) -> str | None:
        """The chat model's id (OpenAI `model`), or None in retrieval-only mode."""
        status = self.app.llm_status()
        return None if status.state == "unavailable" else status.name

    def llm(self):
        """The App's LLM handle (loading it on first call), or None in retrieval-only mode. Thread-safe."""
        return self.app.llm

    def generating(self) -> bool:
        """Whether answers use the LLM (then they go through the generation gate)."""
        return self.llm() is not None

    # -- retrieval -----------------------------------------------------------------------------------------
    def search(self, kb: str, query: str, *, top_k: int | None = None,
               score_threshold: float | None = None) -> list[Source]:
        """Retrieval only: the best passages of knowledge base `kb` for `query`, scores in [0, 1] (see
        kb_qa.retrieval.retriever for what a score means)."""
        return self.app.retriever.search(query, kb, top_k=top_k, score_threshold=score_threshold)

    # -- answering -----------------------------------------------------------------------------------------
    def answer(self, question: str, history: History, kb: str, params: GenParams,
               top_k: int | None = None, *, stats: Generation | None = None, system: str | None = None) -> Answer:
        """An answer from knowledge base `kb` (LLM, or retrieval-only when none is loaded)."""
        return last_answer(self.stream_answer(question, history, kb, params, top_k, stats=stats, system=system))

    def stream_answer(self, question: str, history: History, kb: str, params: GenParams,
                      top_k: int | None = None, *, stats: Generation | None = None,
                      system: str | None = None) -> Iterator[str | Answer]:
        """Text pieces as they are generated, then the complete `Answer` (last item): kb_qa.qa.chain. `system`
        goes in front of the answer's user turn (not into retrieval, which it would pollute; the chain counts it
        in the window); `stats` gets the usage and finish reason."""
        if not question.strip():
            raise BadRequest("the question is empty")
        llm = self.llm()
        overrides = {"retrieval.top_k": top_k}
        if llm is not None:
            overrides.update(self._window_overrides(params))
            llm = _AnswerHandle(llm, params, stats if stats is not None else Generation())
        return self.app.chain(llm).stream_answer(question, list(history), kb, overrides=overrides, system=system)

    def _window_overrides(self, params: GenParams) -> dict:
        """Per-request settings for the chain: sampling, and ChatGLM2's `max_length` (prompt + answer tokens) as
        a smaller dialogue window (at least 256 tokens, the answer's share at most half of it)."""
        s = self.app.settings.llm
        out = {"llm.temperature": params.temperature, "llm.max_new_tokens": params.max_new_tokens}
        window = s.max_context_tokens
        if params.max_length is not None:
            window = max(256, min(s.max_context_tokens, params.max_length))
            answer = params.max_new_tokens or s.max_new_tokens
            out["llm.max_new_tokens"] = max(1, min(answer, window // 2))
        if window != s.max_context_tokens:
            out["llm.max_context_tokens"] = window
        return out

    def chat(self, prompt: str, history: History, params: GenParams, *, stats: Generation | None = None) -> Answer:
        return last_answer(self.stream_chat(prompt, history, params, stats=stats))

    def stream_chat(self, prompt: str, history: History, params: GenParams, *,
                    stats: Generation | None = None) -> Iterator[str | Answer]:
        """Plain chat with the LLM (no knowledge base), ChatGLM2's dialogue format: text pieces, then the Answer."""
        llm = self.llm()
        if llm is None:
            raise LLMUnavailable(f"no language model loaded ({self.app.llm_status().reason}); "
                                 "name a knowledge base for retrieval-only answers")
        overrides = self._overrides(llm, params, lambda: llm.count_prompt_tokens(prompt, history))
        stats = stats if stats is not None else Generation()
        # checks the window before generating
        pieces = stream_counted(llm, prompt, list(history), overrides, params.seed, stats)
        return self._collect(prompt, pieces)

    @staticmethod
    def _collect(question: str, pieces: Iterator[str]) -> Iterator[str | Answer]:
        started = time.perf_counter()
        text: list[str] = []
        yield from relayed(pieces, text)
        yield Answer(question, "".join(text), [], mode="chat", query=question,
                     timings_ms={"total": (time.perf_counter() - started) * 1000})

    @staticmethod
    def _overrides(llm, params: GenParams, prompt_tokens) -> dict:
        """Sampling overrides for the LLM. `max_length` (ChatGLM2's prompt + answer) becomes max_new_tokens."""
        overrides = {"temperature": params.temperature, "top_p": params.top_p,
                     "max_new_tokens": params.max_new_tokens, "stop": params.stop or None}
        if params.max_length is not None:
            room = params.max_length - prompt_tokens()
            if room < 1:
                raise PromptTooLong(f"the prompt alone is longer than max_length={params.max_length} tokens")
            cap = overrides["max_new_tokens"] or getattr(llm, "max_new_tokens", room)
            overrides["max_new_tokens"] = min(cap, room)
        return {k: v for k, v in overrides.items() if v is not None}

    def count_prompt_tokens(self, question: str, history: History) -> int | None:
        """Tokens of ChatGLM2's dialogue prompt for `question` after `history`; None in retrieval-only mode."""
        llm = self.llm()
        count = getattr(llm, "count_prompt_tokens", None) if llm is not None else None
        return count(question, list(history)) if count is not None else None

    def count_tokens(self, text: str) -> int | None:
        """Tokens of `text` with the answering model's tokenizer; None in retrieval-only mode."""
        llm = self.llm()
        tokenizer = getattr(llm, "tokenizer", None) if llm is not None else None
        if tokenizer is None:
            return None
        return tokenizer.count_tokens(text, add_prefix=False)


def last_answer(items: Iterator[str | Answer]) -> Answer:
    answer = None
    for item in items:
        if isinstance(item, Answer):
            answer = item
    assert answer is not None
    return answer
