"""The question-answering chain: question (+ history) -> standalone query -> retrieve -> pack -> generate -> Answer.

    stream_answer(app, question, kbs=None, history=(), llm=None, overrides=None, files=None)
        a generator: the answer's text pieces (str) as they are generated, then the final `Answer` as the last
        item (it is also the generator's return value, for `yield from` / StopIteration users)
    answer(app, question, ...) -> Answer                       the same, collected
    QAChain(app, llm).stream_answer(...) / .answer(...) / .search(...)

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

import logging
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from kb_qa.qa.packing import Packed, pack, token_counter
from kb_qa.qa.prompts import Prompts, load_prompts
from kb_qa.qa.rewrite import standalone_query
from kb_qa.retrieval.retriever import SearchResult
from kb_qa.schema import Answer, History, Source

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


class QAChain:
    def __init__(self, app, llm=None):
        self.app = app
        self.llm = llm

    # -- retrieval only ------------------------------------------------------------------------------------
    def search(self, query: str, kbs: str | Sequence[str] | None = None, *, overrides=None,
               files: Iterable[str] | None = None, **options) -> SearchResult:
        """Retrieval as the chain does it (same settings and overrides), without rewriting or generation."""
        settings = apply_overrides(self.app.settings, overrides)
        return self.app.retriever.search_detailed(query, kbs, settings=settings.retrieval, files=files,
                                                       **options)

    def prompts(self, settings=None) -> Prompts:
        return load_prompts((settings or self.app.settings).qa.language)

    def pack(self, question: str, sources: Sequence[Source], history: History = (), settings=None) -> Packed:
        """The prompt for `question` with `sources` ([1]..[n]) and `history`, fitted to the window."""
        settings = settings or self.app.settings
        prompts = self.prompts(settings)
        _, tokenizer = _llm_parts(self.llm, self.app)
        count, estimated = token_counter(tokenizer)
        rounds = settings.qa.history_rounds
        history = list(history)[-rounds:] if rounds > 0 else []
        return pack(question, [(_label(s), s.text) for s in sources], history,
                    render=lambda q, chosen: prompts.rag(q, prompts.context(chosen)),
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
                      on_sources=None) -> Generator[str | Answer, None, Answer]:
        """`on_sources(sources, query)`: called once the passages are chosen, before generation starts (the web
        page shows them, and keeps them if the user stops the answer half-way)."""
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
                                                  query, mode="chat", on_sources=on_sources))
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
                                          mode="llm", on_sources=on_sources))

    def _generate(self, question, sources, history, settings, prompts, timings, started, query, *, mode,
                  on_sources=None):
        lc, _ = _llm_parts(self.llm)
        t = time.perf_counter()
        if mode == "chat":
            packed = self._pack_plain(question, history, settings)
            kept: list[Source] = []
        else:
            packed = self.pack(question, sources, history, settings)
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

    def _pack_plain(self, question: str, history: History, settings) -> Packed:
        _, tokenizer = _llm_parts(self.llm, self.app)
        count, estimated = token_counter(tokenizer)
        rounds = settings.qa.history_rounds
        history = list(history)[-rounds:] if rounds > 0 else []
        return pack(question, [], history, render=lambda q, _chosen: q, count_tokens=count,
                    max_context_tokens=settings.llm.max_context_tokens,
                    max_new_tokens=settings.llm.max_new_tokens, estimated=estimated)


def stream_answer(app, question: str, *, kbs: str | Sequence[str] | None = None, history: History = (),
                  llm=None, overrides: Mapping[str, Any] | None = None, files: Iterable[str] | None = None,
                  on_sources=None) -> Generator[str | Answer, None, Answer]:
    """Text pieces, then the final `Answer` (last item, and the return value). See the module docstring."""
    return QAChain(app, llm).stream_answer(question, history, kbs, overrides=overrides, files=files,
                                           on_sources=on_sources)


def answer(app, question: str, *, kbs: str | Sequence[str] | None = None, history: History = (), llm=None,
           overrides: Mapping[str, Any] | None = None, files: Iterable[str] | None = None) -> Answer:
    return QAChain(app, llm).answer(question, history, kbs, overrides=overrides, files=files)


def _total(timings: dict[str, float], started: float) -> dict[str, float]:
    out = {k: round(v, 3) for k, v in timings.items()}
    out["total"] = round(_ms(started), 3)
    return out


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
