"""Small pure helpers for the Streamlit page (webui.py): safe rendering of untrusted text, display rows, export.

Everything a user's document or the model says is untrusted. Streamlit renders `st.markdown`, `st.write_stream`,
expander labels, alerts and toasts as Markdown, and Markdown images (`![](http://host/x.png)`) make the browser
fetch a remote address. `md_literal` escapes text so it renders exactly as written: every ASCII punctuation
character is backslash-escaped (CommonMark allows that for all of them), so no emphasis, link, image, HTML tag,
math (`$`), Streamlit directive (`:red[...]`) or code span can form, and line structure is kept with hard line
breaks. Bare URLs and e-mail addresses are linkified after parsing (GFM autolink literals ignore escapes), so an
invisible WORD JOINER (U+2060) goes into `://`, `www.` and after `@` to keep them plain text. Escaping looks at
most three characters back, so streamed pieces can be escaped one by one (`LiteralStream`).

Deliberately not here: anything that talks to a knowledge base or a model (that is kb_qa.app and kb_qa.qa).
"""

from __future__ import annotations

import string
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ESCAPE = {ch: "\\" + ch for ch in string.punctuation}  # the 32 ASCII punctuation characters
_NBSP = "&nbsp;"  # written by us after escaping, so it is the only entity that can appear
_JOINER = "\u2060"  # WORD JOINER: invisible, breaks GFM's autolink literals (http://, www., user@host)


class LiteralStream:
    """Escapes text for Streamlit Markdown piece by piece; `feed` pieces in order, concatenate the outputs.

    Newlines become hard breaks (two spaces + newline), blank lines stay paragraph breaks, spaces and tabs at the
    start of a line become non-breaking spaces (so indentation shows and never turns into a code block)."""

    def __init__(self) -> None:
        self._line_start = True
        self._tail = ""  # the last three characters fed (for autolink breaking)

    def feed(self, piece: str) -> str:
        out: list[str] = []
        for ch in piece:
            tail, self._tail = self._tail, (self._tail + ch)[-3:]
            if (ch == "/" and tail.endswith(":")) or (ch == "." and tail.lower() == "www"):
                out.append(_JOINER)
            if ch == "\n":
                out.append("  \n")
                self._line_start = True
                continue
            if ch == "\r":
                continue
            if self._line_start and ch in " \t":
                out.append(_NBSP * (4 if ch == "\t" else 1))
                continue
            self._line_start = False
            if ch in _ESCAPE:
                out.append(_ESCAPE[ch])
                if ch == "@":
                    out.append(_JOINER)
            elif ch == "\x00" or (ord(ch) < 32 and ch != "\t"):
                out.append("\N{REPLACEMENT CHARACTER}")
            else:
                out.append(ch)
        return "".join(out)


def md_literal(text: Any) -> str:
    """`text` escaped so that Streamlit's Markdown shows it verbatim and inert (see the module docstring)."""
    return LiteralStream().feed("" if text is None else str(text))


def literal_stream(pieces: Iterable[str]) -> Iterator[str]:
    """Escape a stream of text pieces (for st.write_stream) without changing how they split."""
    escaper = LiteralStream()
    for piece in pieces:
        if piece:
            yield escaper.feed(piece)


def fence(text: str, info: str = "text") -> str:
    """A fenced code block that `text` cannot break out of (the fence is longer than any backtick run in it)."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text.rstrip()}\n{ticks}"


# -- display rows ------------------------------------------------------------------------------------------
def human_size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "-"
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def document_rows(records: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows for the document table from DocumentRecord-like objects (source, n_chunks, size, updated_at)."""
    rows = []
    for r in records:
        rows.append({
            "document": r.source,
            "chunks": int(r.n_chunks),
            "size": human_size(r.size),
            "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated_at)) if r.updated_at else "-",
        })
    return rows


def outside_folder(records: Iterable[Any], folder: Path) -> list[str]:
    """Documents whose recorded origin is not under `folder` (ingested from elsewhere, e.g. by the CLI)."""
    root = Path(folder).resolve()
    out = []
    for r in records:
        origin = getattr(r, "origin", None)
        if origin and not Path(origin).resolve().is_relative_to(root):
            out.append(r.source)
    return out


def outcome_rows(outcomes: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows for the per-file ingest result from FileOutcome-like objects (source, status, chunks, reason)."""
    return [{"file": o.source, "result": o.status, "chunks": int(o.chunks or 0), "note": o.reason or ""}
            for o in outcomes]


def outcome_counts(outcomes: Iterable[Any]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    order = ["added", "updated", "unchanged", "failed", "removed"]
    return ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "nothing to do"


def source_title(index: int, source: Any) -> str:
    """Plain-text expander title for a cited passage: '[1] file p.3 § Heading · kb · score 0.82'."""
    label = source.label() if hasattr(source, "label") else str(getattr(source, "source", source))
    score = getattr(source, "score", None)
    parts = [f"[{index}] {label}"]
    kb = getattr(source, "kb", None)
    if kb:
        parts.append(kb)
    if score is not None:
        parts.append(f"score {float(score):.2f}")
    return " · ".join(parts)


# -- conversation -----------------------------------------------------------------------------------------
@dataclass
class Turn:
    """One question and its answer as the page keeps them (per browser session)."""

    question: str
    answer: str = ""
    sources: list[Any] = field(default_factory=list)
    mode: str = ""
    kbs: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float | None = None


MODE_NOTES = {
    "llm": "",
    "retrieval-only": "Retrieval only: no language model is loaded, so these are the best-matching passages.",
    "no-answer": "Nothing in the selected knowledge bases was relevant enough to answer from.",
    "chat": "Answered without documents (nothing relevant was found).",
}


def history_pairs(turns: Iterable[Turn], rounds: int) -> list[tuple[str, str]]:
    """The last `rounds` completed (question, answer) pairs, oldest first; failed turns are skipped."""
    pairs = [(t.question, t.answer) for t in turns if t.answer and not t.error]
    return pairs[-rounds:] if rounds > 0 else []


def conversation_markdown(turns: Iterable[Turn], *, title: str = "kb_qa conversation",
                          now: float | None = None) -> str:
    """The conversation as a Markdown file. Untrusted text (questions, answers, passages) is escaped or fenced,
    so opening the file in a Markdown viewer fetches nothing and runs nothing."""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(now if now is not None else time.time()))
    lines = [f"# {title}", "", f"Exported {stamp}.", ""]
    for n, t in enumerate(turns, 1):
        kbs = ", ".join(t.kbs)
        lines += [f"## {n}. Question" + (f" ({md_literal(kbs)})" if kbs else ""), "", md_literal(t.question), ""]
        lines += ["**Answer**" + (f" ({t.mode})" if t.mode else ""), ""]
        lines += [md_literal(t.error) if t.error else md_literal(t.answer), ""]
        for i, s in enumerate(t.sources, 1):
            lines += [f"- {md_literal(source_title(i, s))}", "", _indent(fence(getattr(s, 'text', '') or "")), ""]
    return "\n".join(lines).rstrip() + "\n"


def _indent(block: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in block.splitlines())


# -- errors -----------------------------------------------------------------------------------------------
def friendly_error(exc: BaseException) -> str:
    """A one-paragraph message for an error shown in the page (plain text; escape before st.error)."""
    name = type(exc).__name__
    text = str(exc) or name
    if name == "KnowledgeBaseBusy":
        return ("The knowledge base is busy (another upload, rebuild or the CLI is writing to it). "
                f"Try again in a moment. ({text})")
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return ("The model ran out of memory. Try fewer passages (top_k), a shorter answer (max answer tokens) or "
                "fewer history rounds, or load the model quantized. Details: " + text[:500])
    if name in {"InvalidName", "UploadRejected", "KnowledgeBaseNotFound", "EmbeddingMismatch", "LoadError"}:
        return text
    return f"{name}: {text}"
