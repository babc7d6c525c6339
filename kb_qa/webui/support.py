"""Small pure helpers for the Streamlit page (kb_qa.webui): safe rendering of untrusted text, display rows, export.

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

import re
import string
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kb_qa.conversations import Turn as _Turn

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
            "status": "indexed",
            "chunks": int(r.n_chunks),
            "size": human_size(r.size),
            "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated_at)) if r.updated_at else "-",
            "note": "",
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
Turn = _Turn  # one home: kb_qa.conversations.Turn (re-exported for the page and its tests)


def history_pairs(turns: Iterable[Turn], rounds: int) -> list[tuple[str, str]]:
    """The last `rounds` completed (question, answer) pairs, oldest first; failed and stopped turns are skipped."""
    pairs = [(t.question, t.answer) for t in turns if t.answer and not t.error and not t.stopped]
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


def unindexed_files(folder: Path, records: Iterable[Any], jobs: Iterable[Any] = ()) -> dict[str, str]:
    """Files in a knowledge base's folder that are not indexed, with the reason the latest job gave (failed uploads
    stay on disk so a fix can be retried; the page lists them so they can be removed). Empty while a job runs."""
    from kb_qa.ingest.pipeline import collect_files

    jobs = list(jobs)
    if any(j.active for j in jobs) or not Path(folder).is_dir():
        return {}
    indexed = {r.source for r in records}
    candidates, _ = collect_files([folder])
    reasons: dict[str, str] = {}
    for job in jobs:  # oldest first: a later reason wins
        for o in job.outcomes:
            if o.status == "failed":
                reasons[o.source] = o.reason or "failed"
            else:
                reasons.pop(o.source, None)
    return {c.source: reasons.get(c.source, "not indexed (Rebuild index retries it)")
            for c in candidates if c.source not in indexed}


_LATIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_'-]{2,}")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]{2,}")


_STOP = frozenset("the and for are but not you all any can has had her was one our out his how its who did does "
                  "what when where which why with this that from have into your they them then than been were "
                  "will would could should about there their these those".split())


def query_terms(query: str) -> list[str]:
    """Words worth highlighting: Latin words of 3+ characters (common function words left out), Chinese words of
    2+ characters (jieba)."""
    terms = {m.group(0).lower() for m in _LATIN.finditer(query or "")} - _STOP
    for run in _CJK.findall(query or ""):
        try:
            import jieba

            terms.update(w for w in jieba.cut(run) if len(w) >= 2)
        except ImportError:  # pragma: no cover - jieba is a requirement
            terms.add(run)
    return sorted(terms, key=len, reverse=True)


_WORD_CHAR = "A-Za-z0-9\u00c0-\u024f"  # Latin letters (accented too) and digits: what a Latin word is made of


def term_pattern(term: str) -> str:
    """A regex for one highlight term. A Latin word matches whole words only (never inside a longer word, which
    would render as a split 'kettle s'), with or without a plural s/es, so "kettles" finds "kettle" too; a CJK
    term, which has no word boundaries, matches anywhere."""
    if not re.match(f"[{_WORD_CHAR}]", term):
        return re.escape(term)
    stem = term[:-1] if len(term) > 3 and term.endswith("s") and not term.endswith("ss") else term
    return f"(?<![{_WORD_CHAR}]){re.escape(stem)}(?:s|es)?(?![{_WORD_CHAR}])"


def highlight_terms(text: str, query: str) -> str:
    """`text` escaped like md_literal, with the query's words highlighted by a Streamlit colour directive that
    we write (`:orange-background[...]`). The text inside is escaped, so it can neither close the directive nor
    open one of its own; nothing else is added (no spaces): without the directives it is md_literal(text)."""
    terms = query_terms(query)
    if not terms or not text:
        return md_literal(text)
    pattern = re.compile("|".join(term_pattern(t) for t in terms), re.IGNORECASE)
    escaper, out, last = LiteralStream(), [], 0
    for m in pattern.finditer(text):
        out.append(escaper.feed(text[last:m.start()]))
        out.append(":orange-background[" + escaper.feed(m.group(0)) + "]")
        last = m.end()
    out.append(escaper.feed(text[last:]))
    return "".join(out)


# -- errors -----------------------------------------------------------------------------------------------
def friendly_error(exc: BaseException) -> str:
    """A one-paragraph message for an error shown in the page (plain text; escape before st.error). Matched by
    class: the user-error family (kb_qa.errors and the classes kb_qa.jobs.user_errors lists) shows its own
    message; running out of GPU memory gets advice."""
    import sys

    from kb_qa.jobs import error_text
    from kb_qa.store import KnowledgeBaseBusy

    text = str(exc) or type(exc).__name__
    if isinstance(exc, KnowledgeBaseBusy):
        return ("The knowledge base is busy (another upload, rebuild or the CLI is writing to it). "
                f"Try again in a moment. ({text})")
    torch = sys.modules.get("torch")
    if (torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ()))) or \
            "out of memory" in text.lower():
        return ("The model ran out of memory. Try fewer passages (top_k), a shorter answer (max answer tokens) or "
                "fewer history rounds, or load the model quantized. Details: " + text[:500])
    return error_text(exc)
