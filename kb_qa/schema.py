"""Plain typed objects that cross module boundaries: what a document was split into, and what an answer cites."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

History = Sequence[tuple[str, str]]  # dialogue rounds, oldest first: (user's question, model's answer)


@dataclass(frozen=True)
class Section:
    """A piece of a loaded document before splitting: text plus where it came from (page from 1, heading)."""

    text: str
    page: int | None = None
    heading: str | None = None
    ocr: bool = False  # text recognised from an image (a scanned page, a picture), not read from a text layer


@dataclass(frozen=True)
class Chunk:
    """A retrievable unit: part of one document's text with the metadata a citation needs.

    `start`/`end` are character offsets into the section the chunk was cut from.
    """

    text: str
    source: str  # document path relative to its knowledge base, '/'-separated
    page: int | None = None
    heading: str | None = None
    start: int = 0
    end: int = 0
    ordinal: int = 0  # position of the chunk within its document
    ocr: bool = False  # cut from OCR text (see Section.ocr)


@dataclass
class Source:
    """One retrieved passage as an answer cites it."""

    kb: str
    source: str
    text: str
    score: float  # relevance in [0, 1], higher = closer (see kb_qa.retrieval)
    page: int | None = None
    heading: str | None = None
    chunk_id: int = 0
    dense_score: float | None = None  # cosine similarity mapped to [0, 1], when the dense side found it
    keyword_score: float | None = None  # BM25 mapped to [0, 1], when the keyword side found it

    def label(self) -> str:
        return source_label(self.source, self.page, self.heading)


def source_label(source: str, page: int | None = None, heading: str | None = None) -> str:
    """How answers cite a passage: its document path, then " p.<page>" and " § <heading>" where known."""
    where = source
    if page is not None:
        where += f" p.{page}"
    if heading:
        where += f" § {heading}"
    return where


@dataclass
class Answer:
    """What the question-answering chain returns."""

    question: str
    text: str
    sources: list[Source] = field(default_factory=list)
    mode: str = "llm"  # 'llm' | 'retrieval-only' | 'no-answer' | 'chat'
    query: str = ""  # the standalone query actually used for retrieval
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class AnswerChunk:
    """A piece of a streamed answer (`QAChain.stream`, LangChain-style): `text` is the new text; the last chunk
    has no text and carries the complete `answer`. Chunks add up (`a + b`), as LangChain's streaming expects:
    the sum of a whole stream has the answer's full `text` and its `answer` (sources, mode, timings)."""

    text: str = ""
    answer: Answer | None = None

    def __add__(self, other: AnswerChunk) -> AnswerChunk:
        if not isinstance(other, AnswerChunk):
            return NotImplemented
        return AnswerChunk(self.text + other.text, other.answer or self.answer)

    @property
    def sources(self) -> list[Source]:
        """The answer's sources once the final chunk is in (or summed in), else []."""
        return self.answer.sources if self.answer is not None else []

    @property
    def mode(self) -> str:
        return self.answer.mode if self.answer is not None else ""
