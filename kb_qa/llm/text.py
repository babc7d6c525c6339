"""Pure-Python text handling shared by both backends: sampling settings, ChatGLM2's answer post-processing, stop
strings, and incremental decoding, all shaped so that streamed pieces add up to exactly the non-streamed answer.
No torch, no transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

TRAINING_TIME_MARK = "[[训练时间]]"  # ChatGLM2's process_response replaces this placeholder
TRAINING_TIME_TEXT = "2023年"


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 1024
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 0.8
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()  # cut the answer before the first of these strings

    @classmethod
    def from_settings(cls, llm_settings) -> SamplingParams:
        return cls(max_new_tokens=llm_settings.max_new_tokens, temperature=llm_settings.temperature,
                   top_p=llm_settings.top_p, repetition_penalty=llm_settings.repetition_penalty)

    def updated(self, **overrides) -> SamplingParams:
        values = {k: v for k, v in overrides.items() if v is not None}
        if "stop" in values:
            values["stop"] = tuple(values["stop"])
        return replace(self, **values) if values else self


def process_response(text: str) -> str:
    """ChatGLM2's post-processing of an answer."""
    return text.strip().replace(TRAINING_TIME_MARK, TRAINING_TIME_TEXT)


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class IncrementalDecoder:
    """Text deltas from a growing list of ids, equal in sum to decoding the whole list.

    Decodes a window from the last complete point (not the whole answer each token) and holds back text ending in
    U+FFFD: an incomplete UTF-8 character spread over byte-fallback pieces."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start
        self.read_offset = 0  # ids before this are emitted

    def push(self, new_ids: Sequence[int], *, final: bool = False) -> str:
        self.ids.extend(new_ids)
        emitted = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        text = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(text) > len(emitted) and (final or not text.endswith("\ufffd")):
            delta = text[len(emitted):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        return self.push([], final=True)


class ResponseAssembler:
    """Streams `process_response(full_text)` (cut at stop strings) as deltas: drops leading whitespace, holds back
    trailing whitespace and any tail that could still become "[[训练时间]]" or a stop string."""

    def __init__(self, stop: Sequence[str] = ()):
        self.stop = [s for s in stop if s]
        self.started = False
        self.pending = ""
        self.stopped = False

    def _held_tail(self, text: str) -> int:
        held = 0
        for pattern in [TRAINING_TIME_MARK, *self.stop]:
            for k in range(min(len(pattern) - 1, len(text)), held, -1):
                if text.endswith(pattern[:k]):
                    held = k
                    break
        return held

    def feed(self, delta: str) -> str:
        if self.stopped or not delta:
            return ""
        if not self.started:
            delta = delta.lstrip()
            if not delta:
                return ""
            self.started = True
        text = (self.pending + delta).replace(TRAINING_TIME_MARK, TRAINING_TIME_TEXT)
        text, self.stopped = apply_stop(text, self.stop)
        if self.stopped:
            self.pending = ""
            return text.rstrip()
        cut = len(text) - self._held_tail(text)
        cut = len(text[:cut].rstrip())
        self.pending = text[cut:]
        return text[:cut]

    def finish(self) -> str:
        rest = "" if self.stopped else self.pending.rstrip()
        self.pending = ""
        return rest
