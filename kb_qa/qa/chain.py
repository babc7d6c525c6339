"""The question-answering chain: question (+ history) -> standalone query -> retrieve -> pack -> generate -> Answer.

    stream_answer(app, question, kbs=None, history=(), llm=None, overrides=None, files=None)
        a generator: the answer's text pieces (str) as they are generated, then the final `Answer` as the last
        item (it is also the generator's return value, for `yield from` / StopIteration users)
    answer(app, question, ...) -> Answer                       the same, collected
    QAChain(app, llm).stream_answer(...) / .answer(...) / .search(...)

`QAChain` is a LangChain `Runnable`, so it composes in LCEL (`prompt | chain | RunnableLambda(...)`,
`.with_config(...)`, `.bind(kb=...)`):
    chain.invoke("问题") / chain.invoke({"question", "history", "kb", "overrides", "files", "system"}) -> Answer
    chain.stream(...) -> AnswerChunk pieces (`.text` = new text), the last one carrying the `Answer`
    chain.batch([...]) / await chain.ainvoke(...) / chain.astream(...)
A prompt value or a list of messages is read as a dialogue: system messages are the system text, earlier
human/AI pairs the history, the last human message the question (see `as_request`).
`system`: text put in front of the model's turn (not into retrieval); its tokens count against the window.

`llm`: an `LLMHandle` from `kb_qa.llm.factory.load_llm` (its `.langchain_llm` generates, its `.tokenizer` counts),
a bare LangChain LLM (tokens then estimated), or None: retrieval-only answers.
`overrides`: per-request settings as dotted keys, e.g. {"retrieval.top_k": 3, "llm.temperature": 0.2,
"qa.no_answer_mode": "chat"}; validated like the settings file, never stored.

Modes (`Answer.mode`):
  llm             grounded answer generated from the numbered passages; `sources` are those passages ([1]..[n])
  retrieval-only  no model: the best passages with their sources, under a header saying so
  no-answer       nothing passed the score threshold: the template's fixed reply ("知识库中未找到相关内容。")
  chat            nothing passed, qa.no_answer_mode = "chat" and a model is loaded: a plain chat answer, no sources
Timings (`Answer.timings_ms`): rewrite, retrieval (embed, dense, keyword, fuse, rerank inside it), packing,
first_token, generation, total.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Union, cast

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import run_in_executor

from kb_qa.llm.chat_model import split_dialogue
from kb_qa.qa.packing import Packed, pack, token_counter
from kb_qa.qa.prompts import Prompts, load_prompts
from kb_qa.qa.rewrite import standalone_query
from kb_qa.retrieval.retriever import SearchResult
from kb_qa.schema import Answer, AnswerChunk, History, Source

# What `QAChain.invoke` / `.stream` take: a question, a request dict, a prompt value or a dialogue of messages.
QAInput = Union[str, Mapping[str, Any], PromptValue, BaseMessage, Sequence[BaseMessage]]  # noqa: UP007
REQUEST_KEYS = ("question", "history", "kb", "kbs", "overrides", "files", "system")

log = logging.getLogger(__name__)


def apply_overrides(settings, overrides: Mapping[str, Any] | None):
    """A copy of `settings` with dotted-key overrides ({"retrieval.top_k": 3}); None values are ignored.
    Each touched section is re-validated, so a bad value raises pydantic's ValidationError."""
    if not overrides:
        return settings
    sections: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        if not name:
            raise ValueError(f"override {key!r}: expected 'section.name'")
        sections.setdefault(section, {})[name] = value
    updates = {}
    for section, values in sections.items():
        current = getattr(settings, section, None)
        if current is None or not hasattr(current, "model_dump"):
            raise ValueError(f"unknown settings section {section!r}")
        unknown = [n for n in values if n not in type(current).model_fields]
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(f'{section}.{n}' for n in unknown)}")
        updates[section] = type(current).model_validate({**current.model_dump(), **values})
    return settings.model_copy(update=updates)


def _llm_parts(llm, app=None):
    """(LangChain LLM or None, tokenizer or None) of a handle / bare LLM / None. Without a tokenizer of its own,
    the app's configured one (ChatGLM2's tokenizer.model, weights not needed) counts, so retrieval-only mode and a
    remote model pack with exact counts whenever the file is there."""
    lc = None if llm is None else getattr(llm, "langchain_llm", None)
    if lc is None:
        lc = llm
    tokenizer = getattr(llm, "tokenizer", None) if llm is not None else None
    if (tokenizer is None or getattr(tokenizer, "approximate", False)) and app is not None:
        tokenizer = getattr(app, "tokenizer", None) or tokenizer
    return lc, tokenizer


def _label(source: Source) -> str:
    label = source.label()
    return f"{source.kb}: {label}" if source.kb else label


def as_request(value: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`QAChain.stream_answer`'s keyword arguments from a Runnable input (see QAInput) and bound keyword arguments
    (`chain.bind(kb="manuals")`; they fill in what the input leaves out). Unknown keys are an error, not ignored."""
    if isinstance(value, PromptValue):
        value = value.to_messages()
    if isinstance(value, BaseMessage):
        value = [value]
    if isinstance(value, str):
        request: dict[str, Any] = {"question": value}
    elif isinstance(value, Mapping):
        request = dict(value)
    elif isinstance(value, Sequence) and all(isinstance(m, BaseMessage) for m in value):
        request = _dialogue(list(value))
    else:
        raise TypeError(f"QAChain input: a question (str), a dict with 'question', a prompt value or messages; "
                        f"got {type(value).__name__}")
    for key, item in (extra or {}).items():
        if key in ("kb", "kbs") and ("kb" in request or "kbs" in request):
            continue  # the input's own knowledge bases win over bound ones
        request.setdefault(key, item)
    unknown = sorted(set(request) - set(REQUEST_KEYS))
    if unknown:
        raise ValueError(f"QAChain input: unknown key(s) {', '.join(unknown)} (known: {', '.join(REQUEST_KEYS)})")
    if "kb" in request and "kbs" in request:
        raise ValueError("QAChain input: give 'kb' or 'kbs', not both")
    history = request.get("history") or ()
    if any(isinstance(m, BaseMessage) for m in history):
        request["history"] = _dialogue([*history, HumanMessage("")])["history"]
    question = request.get("question")
    if not isinstance(question, str):
        raise ValueError("QAChain input: 'question' (a string) is required")
    return {"question": question, "history": request.get("history") or (),
            "kbs": request.get("kbs", request.get("kb")), "overrides": request.get("overrides"),
            "files": request.get("files"), "system": request.get("system")}


def _dialogue(messages: list[BaseMessage]) -> dict[str, Any]:
    """{"question", "history", "system"} of a dialogue, as the LangChain chat model reads one (text parts only)."""
    system, question, history = split_dialogue(messages)
    return {"question": question, "history": history, "system": system}


class QAChain(Runnable[QAInput, Answer | AnswerChunk]):  # invoke: an Answer; stream: AnswerChunks
    """The chain over `app` answering with `llm` (see the module docstring). A LangChain Runnable: `invoke`
    returns the `Answer`, `stream` yields `AnswerChunk`s; `batch`, `ainvoke`, `abatch` are LangChain's defaults
    (threads over `invoke`), `astream` runs the stream on a worker thread."""

    def __init__(self, app, llm=None):
        self.app = app
        self.llm = llm

    # -- LangChain Runnable --------------------------------------------------------------------------------
    def invoke(self, input: QAInput, config: RunnableConfig | None = None, **kwargs: Any) -> Answer:
        return cast(Answer, self._call_with_config(lambda value: self.answer(**as_request(value, kwargs)), input,
                                                   config, run_type="chain"))

    def stream(self, input: QAInput, config: RunnableConfig | None = None,
               **kwargs: Any) -> Iterator[AnswerChunk]:
        """Text pieces as the model writes them, then one chunk with the final `Answer`, in one traced run.
        (LangChain's default `transform` adds an input that arrives in pieces up and calls this.)"""
        def chunks(inputs: Iterator[QAInput]) -> Iterator[AnswerChunk]:
            request = as_request(next(inputs), kwargs)
            for item in self.stream_answer(**request):
                yield AnswerChunk(answer=item) if isinstance(item, Answer) else AnswerChunk(text=item)

        yield from cast(Iterator[AnswerChunk],
                        self._transform_stream_with_config(iter([input]), chunks, config, run_type="chain"))

    async def astream(self, input: QAInput, config: RunnableConfig | None = None,
                      **kwargs: Any) -> AsyncIterator[AnswerChunk]:
        """`stream` on one worker thread (the model's generator stays on the thread that started it), handed
        over chunk by chunk; leaving the loop early stops the generation at its next piece."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                stream = self.stream(input, config, **kwargs)
                for chunk in stream:
                    loop.call_soon_threadsafe(queue.put_nowait, ("chunk", chunk))
                    if stop.is_set():
                        break
                getattr(stream, "close", lambda: None)()
            except BaseException as exc:  # handed to the reader, raised there
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
            else:
                loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

        worker = asyncio.ensure_future(run_in_executor(config, produce))
        try:
            while True:
                kind, item = await queue.get()
                if kind == "done":
                    break
                if kind == "error":
                    raise item
                yield item
        finally:
            stop.set()
            await worker

    # -- retrieval only ------------------------------------------------------------------------------------
    def search(self, query: str, kbs: str | Sequence[str] | None = None, *, overrides=None,
               files: Iterable[str] | None = None, **options) -> SearchResult:
        """Retrieval as the chain does it (same settings and overrides), without rewriting or generation."""
        settings = apply_overrides(self.app.settings, overrides)
        return self.app.retriever.search_detailed(query, kbs, settings=settings.retrieval, files=files,
                                                       **options)

    def prompts(self, settings=None) -> Prompts:
        return load_prompts((settings or self.app.settings).qa.language)

    def pack(self, question: str, sources: Sequence[Source], history: History = (), settings=None,
             system: str | None = None) -> Packed:
        """The prompt for `question` with `sources` ([1]..[n]) and `history`, fitted to the window; `system`
        stands in front of the user's turn (and is counted there)."""
        settings = settings or self.app.settings
        prompts = self.prompts(settings)
        return self._pack(question, [(_label(s), s.text) for s in sources], history, settings, system,
                          lambda q, chosen: prompts.rag(q, prompts.context(chosen)))

    def _pack(self, question: str, passages: list[tuple[str, str]], history: History, settings,
              system: str | None, render) -> Packed:
        _, tokenizer = _llm_parts(self.llm, self.app)
        count, estimated = token_counter(tokenizer)
        rounds = settings.qa.history_rounds
        history = list(history)[-rounds:] if rounds > 0 else []
        head = f"{system}\n\n" if system else ""
        return pack(question, passages, history, render=lambda q, chosen: head + render(q, chosen),
                    count_tokens=count, max_context_tokens=settings.llm.max_context_tokens,
                    max_new_tokens=settings.llm.max_new_tokens, estimated=estimated)

    # -- answering -----------------------------------------------------------------------------------------
    def answer(self, question: str, history: History = (), kbs=None, **kwargs) -> Answer:
        result = None
        for item in self.stream_answer(question, history, kbs, **kwargs):
            if isinstance(item, Answer):
                result = item
        assert result is not None
        return result

    def stream_answer(self, question: str, history: History = (), kbs: str | Sequence[str] | None = None, *,
                      overrides: Mapping[str, Any] | None = None, files: Iterable[str] | None = None,
                      on_sources=None, system: str | None = None) -> Generator[str | Answer, None, Answer]:
        """`on_sources(sources, query)`: called once the passages are chosen, before generation starts (the web
        page shows them, and keeps them if the user stops the answer half-way). `system`: see the module
        docstring (a retrieval-only or no-answer reply has no model to tell it to)."""
        started = time.perf_counter()
        settings = apply_overrides(self.app.settings, overrides)
        prompts = self.prompts(settings)
        question = (question or "").strip()
        if not question:
            raise ValueError("the question is empty")
        history = [(str(q), str(a)) for q, a in (history or [])]
        lc, _ = _llm_parts(self.llm)
        timings: dict[str, float] = {}

        t = time.perf_counter()
        query = question
        if history and settings.qa.rewrite_followups:
            query = standalone_query(question, history, prompts, lc, rounds=max(1, settings.qa.history_rounds))
        timings["rewrite"] = _ms(t)

        t = time.perf_counter()
        found = self.app.retriever.search_detailed(query, kbs, settings=settings.retrieval, files=files)
        timings["retrieval"] = _ms(t)
        for name in ("embed", "dense", "keyword", "fuse", "rerank"):
            if name in found.timings_ms:
                timings[f"retrieval.{name}"] = found.timings_ms[name]
        sources = found.sources

        if not sources:
            if settings.qa.no_answer_mode == "chat" and lc is not None:
                return (yield from self._generate(question, [], history, settings, prompts, timings, started,
                                                  query, mode="chat", on_sources=on_sources, system=system))
            text = prompts.no_answer
            yield text
            result = Answer(question, text, [], mode="no-answer", query=query,
                            timings_ms=_total(timings, started))
            yield result
            return result

        if lc is None:
            t = time.perf_counter()
            packed = self.pack(question, sources, history, settings)
            timings["packing"] = _ms(t)
            shown = sources[:packed.included] or sources[:1]
            text = prompts.retrieval_only_header + "\n\n" + prompts.source_separator.join(
                f"[{i}] {_label(s)} (score {s.score:.2f})\n{s.text}" for i, s in enumerate(shown, start=1))
            yield text
            result = Answer(question, text, shown, mode="retrieval-only", query=query,
                            timings_ms=_total(timings, started))
            yield result
            return result

        return (yield from self._generate(question, sources, history, settings, prompts, timings, started, query,
                                          mode="llm", on_sources=on_sources, system=system))

    def _generate(self, question, sources, history, settings, prompts, timings, started, query, *, mode,
                  on_sources=None, system=None):
        lc, _ = _llm_parts(self.llm)
        t = time.perf_counter()
        if mode == "chat":
            packed = self._pack_plain(question, history, settings, system)
            kept: list[Source] = []
        else:
            packed = self.pack(question, sources, history, settings, system)
            kept = [replace(s, text=text) for s, (_, text) in zip(sources, packed.passages, strict=False)]
        timings["packing"] = _ms(t)
        if on_sources is not None:
            on_sources(kept, query)
        for note in packed.notes:
            log.info("%s", note)
        t = time.perf_counter()
        pieces: list[str] = []
        kwargs = {"history": packed.history, "temperature": settings.llm.temperature,
                  "max_new_tokens": settings.llm.max_new_tokens}
        for piece in lc.stream(packed.user_turn, **kwargs):
            piece = piece if isinstance(piece, str) else getattr(piece, "content", str(piece))
            if not piece:
                continue
            if not pieces:
                timings["first_token"] = _ms(started)
            pieces.append(piece)
            yield piece
        timings["generation"] = _ms(t)
        result = Answer(question, "".join(pieces), kept, mode=mode, query=query,
                        timings_ms=_total(timings, started))
        yield result
        return result

    def _pack_plain(self, question: str, history: History, settings, system: str | None = None) -> Packed:
        return self._pack(question, [], history, settings, system, lambda q, _chosen: q)


def stream_answer(app, question: str, *, kbs: str | Sequence[str] | None = None, history: History = (),
                  llm=None, overrides: Mapping[str, Any] | None = None, files: Iterable[str] | None = None,
                  on_sources=None, system: str | None = None) -> Generator[str | Answer, None, Answer]:
    """Text pieces, then the final `Answer` (last item, and the return value). See the module docstring."""
    return QAChain(app, llm).stream_answer(question, history, kbs, overrides=overrides, files=files,
                                           on_sources=on_sources, system=system)


def answer(app, question: str, *, kbs: str | Sequence[str] | None = None, history: History = (), llm=None,
           overrides: Mapping[str, Any] | None = None, files: Iterable[str] | None = None,
           system: str | None = None) -> Answer:
    return QAChain(app, llm).answer(question, history, kbs, overrides=overrides, files=files, system=system)


def _total(timings: dict[str, float], started: float) -> dict[str, float]:
    out = {k: round(v, 3) for k, v in timings.items()}
    out["total"] = round(_ms(started), 3)
    return out


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
