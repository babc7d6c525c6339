"""Sections -> chunks: Chinese-aware splitting into pieces of at most `chunk_size` characters, with overlap.

Every chunk is an exact substring of its section's text (`section.text[chunk.start:chunk.end] == chunk.text`),
trimmed of surrounding whitespace, never empty, never longer than `chunk_size`. Where a chunk ends is chosen by
the strength of the boundary there, strongest first:

    0 paragraph (blank line)  1 line break  2 sentence end (。！？；… and . ! ? ; before a space or the end)
    3 clause (，、： and , : before a space)  4 space  5 any character

(ASCII marks count before a space, the end, or a CJK character, so '3.14', '1,000' and URLs are not cut.)

A chunk ends at the strongest boundary that leaves it at least a fifth full and adds at least a fifth of
`chunk_size` of text its predecessor did not have (the furthest such boundary of that strength; so a heading
line is never a chunk of its own, nor is a sliver of new text behind a long overlap), else it is cut hard at
`chunk_size`. A line break inside a sentence of hard-wrapped text (PDFs, fixed-width .txt) counts as a space,
not as a line boundary, and so does the line break after a Markdown heading (it goes with the text under it).
Punctuation stays with the sentence it ends (and closing quotes or brackets with it). The next chunk starts up
to `chunk_overlap` characters back, at the strongest boundary in that window (a sentence start if there is
one), unless that overlap would force a weaker end than no overlap would, in which case the overlap shrinks
until it fits or is dropped.

Why not LangChain's RecursiveCharacterTextSplitter: its overlap is made of whole pieces of the level being
merged, so with sentences or paragraphs longer than the overlap there is none at all, and its `start_index`
is recovered with `str.find`, which can point at an earlier copy of a repeated passage. Here offsets are
computed, not searched for.

Tables are the one exception to "exact substring". A run of two or more table rows ('cell | cell' lines, as the
docx, html and pdf loaders write them, or Markdown pipe rows) is split on row boundaries only, without overlap,
and every chunk after the first repeats the table's header row (and a Markdown separator row under it) before its
rows: `chunk.text == header + "\n" + section.text[chunk.start:chunk.end]`, so a row found by retrieval still
carries its column names ("第三季度的营业收入" needs the 第三季度 column's header). The header counts towards
`chunk_size`; a header longer than half of it is not repeated. Text around a table is split as usual.

Deliberately not here: token counting (sizes are characters; the context packer counts real tokens) and any
prefix such as the heading (it travels in `Chunk.heading`).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right

from kb_qa.schema import Chunk, Section

__all__ = ["split_sections", "split_text"]

PARAGRAPH, LINE, SENTENCE, CLAUSE, SPACE, CHAR = range(6)

_CLOSERS = "”’」』）》】〉)\\]\"'"
_CJK = "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]"  # ASCII marks end a clause before these too
# (level, pattern, which end of the match is the boundary). Whitespace separators end a chunk where the
# whitespace begins (it is trimmed anyway); punctuation ends it after the mark and any closing quotes.
_BOUNDARIES = (
    (PARAGRAPH, re.compile(r"(?<![^\S\n])[^\S\n]*\n(?:[^\S\n]*\n)+"), "start"),  # (?<!..): linear on long
    (LINE, re.compile(r"(?<![^\S\n])[^\S\n]*\n"), "start"),                   # runs of blanks
    (SENTENCE, re.compile(rf"[。！？；…]+[{_CLOSERS}]*|[.!?;]+[{_CLOSERS}]*(?=\s|$|{_CJK})"), "end"),
    (CLAUSE, re.compile(rf"[，、：]+[{_CLOSERS}]*|[,:]+[{_CLOSERS}]*(?=\s|{_CJK})"), "end"),
    (SPACE, re.compile(r"[^\S\n]+"), "start"),
)
_MIN_FILL = 1 / 5  # a chunk ends at a weaker boundary rather than come out less than a fifth full


def _is_soft_wrap(text: str, pos: int, next_start: int) -> bool:
    """A line break inside a sentence of hard-wrapped text (PDF extraction, fixed-width .txt): the line is
    long, does not end in punctuation, and the next line continues without indentation or a list marker.
    Such a break is only a space; ranking it above sentence ends would cut sentences in half."""
    if next_start >= len(text) or not (text[next_start].isalnum() and not _LIST_ITEM.match(text, next_start)):
        return False
    line_start = text.rfind("\n", 0, pos) + 1
    line = text[line_start:pos]
    if not line or _ENDS_SENTENCE.search(line):
        return False
    width = sum(2 if ord(ch) >= 0x1100 else 1 for ch in line)  # CJK characters are about two columns wide
    return width >= _WRAP_WIDTH


_HEADING_LINE = re.compile(r" {0,3}#{1,6}[ \t]")
_LIST_ITEM = re.compile(r"(?:\d{1,3}|[a-zA-Z]|[一二三四五六七八九十]+)[.、)．](?:\s|$)"
                        r"|第[一二三四五六七八九十百\d]+[章节条]")
_ENDS_SENTENCE = re.compile(rf"[。！？；…!?.;:：][{_CLOSERS}]*\s*$")
_WRAP_WIDTH = 50  # columns; shorter lines without final punctuation are headings, list items or table rows


def split_sections(sections: list[Section], source: str, *, chunk_size: int = 300,
                   chunk_overlap: int = 50) -> list[Chunk]:
    """Split each section into chunks carrying the section's page and heading; ordinals run across all of them."""
    chunks: list[Chunk] = []
    for section in sections:
        for start, end, header in _pieces(section.text, chunk_size, chunk_overlap):
            text = section.text[start:end] if header is None else f"{header}\n{section.text[start:end]}"
            chunks.append(Chunk(text=text, source=source, page=section.page, heading=section.heading,
                                start=start, end=end, ordinal=len(chunks), ocr=section.ocr))
    return chunks


_MARKDOWN_ROW = re.compile(r"[ \t]*\|.*\|[ \t]*")


def _is_table_row(line: str) -> bool:
    """'a | b' (empty cells allowed: 'a |  | c') or a Markdown '| a | b |' row, with some text in it."""
    return (" | " in line or bool(_MARKDOWN_ROW.fullmatch(line))) and bool(line.replace("|", "").strip())
_MARKDOWN_RULE = re.compile(r"[ \t|:\-]*-{3}[ \t|:\-]*")


def _table_regions(text: str) -> list[list[tuple[int, int]]]:
    """Runs of at least two consecutive table rows, each row as the (start, end) span of its line."""
    regions: list[list[tuple[int, int]]] = []
    run: list[tuple[int, int]] = []
    pos = 0
    for line in text.split("\n"):
        end = pos + len(line)
        if _is_table_row(line):
            run.append((pos, end))
        else:
            if len(run) >= 2:
                regions.append(run)
            run = []
        pos = end + 1
    if len(run) >= 2:
        regions.append(run)
    return regions


def _pieces(text: str, chunk_size: int, chunk_overlap: int) -> list[tuple[int, int, str | None]]:
    """(start, end, repeated header or None) for every chunk of `text`: prose by `split_text`, tables by rows."""
    regions = _table_regions(text)
    if not regions:
        return [(s, e, None) for s, e in split_text(text, chunk_size=chunk_size, chunk_overlap=chunk_overlap)]
    out: list[tuple[int, int, str | None]] = []
    done = 0

    def prose(a: int, b: int) -> None:
        out.extend((a + s, a + e, None)
                   for s, e in split_text(text[a:b], chunk_size=chunk_size, chunk_overlap=chunk_overlap))

    for rows in regions:
        prose(done, rows[0][0])
        out.extend(_table_pieces(text, rows, chunk_size, chunk_overlap))
        done = rows[-1][1]
    prose(done, len(text))
    return out


def _table_pieces(text: str, rows: list[tuple[int, int]], chunk_size: int,
                  chunk_overlap: int) -> list[tuple[int, int, str | None]]:
    """Whole rows per chunk; chunks after the first start with the header row(s) (when short enough to repeat)."""
    header_rows = 2 if len(rows) > 2 and _MARKDOWN_RULE.fullmatch(text[rows[1][0]:rows[1][1]]) else 1
    header = text[rows[0][0]:rows[header_rows - 1][1]].strip()
    repeat = header if len(header) + 1 <= chunk_size // 2 else None
    out: list[tuple[int, int, str | None]] = []
    i = 0
    while i < len(rows):
        first = i == 0
        budget = chunk_size if first or repeat is None else chunk_size - len(repeat) - 1
        prefix = None if first else repeat
        start = rows[i][0]
        j = i
        while j + 1 < len(rows) and rows[j + 1][1] - start <= budget:
            j += 1
        if rows[j][1] - start <= budget:
            out.append((start, rows[j][1], prefix))
        else:  # one row longer than the budget: cut it like prose, every piece under the header
            overlap = min(chunk_overlap, budget - 1)
            out.extend((start + s, start + e, prefix)
                       for s, e in split_text(text[start:rows[j][1]], chunk_size=budget, chunk_overlap=overlap))
        i = j + 1
    trimmed = []
    for s, e, h in out:
        piece = text[s:e]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            trimmed.append((s + lead, s + len(piece.rstrip()), h))
    return trimmed


def split_text(text: str, *, chunk_size: int = 300, chunk_overlap: int = 50) -> list[tuple[int, int]]:
    """(start, end) character spans of the chunks of `text`, in order; each span trimmed and non-empty."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0 <= chunk_overlap < chunk_size:
        raise ValueError(f"chunk_overlap must be >= 0 and < chunk_size ({chunk_size}), got {chunk_overlap}")
    n = len(text)
    # at_most[level] = sorted positions of boundaries of that strength or stronger
    by_level: list[set[int]] = [set() for _ in _BOUNDARIES]
    for level, pattern, side in _BOUNDARIES:
        for match in pattern.finditer(text):
            pos = match.start() if side == "start" else match.end()
            if 0 < pos < n:
                strength = level
                if level <= LINE and _HEADING_LINE.match(text, text.rfind("\n", 0, pos) + 1):
                    strength = SPACE  # a Markdown heading belongs with what follows it, not at a chunk's end
                elif level == LINE and _is_soft_wrap(text, pos, match.end()):
                    strength = SPACE
                by_level[strength].add(pos)
    at_most: list[list[int]] = []
    acc: set[int] = set()
    for positions in by_level:
        acc |= positions
        at_most.append(sorted(acc))

    def skip_space(pos: int) -> int:
        while pos < n and text[pos].isspace():
            pos += 1
        return pos

    def choose_end(start: int, after: int) -> tuple[int, int]:
        """Best end in (after, start + chunk_size] for a chunk starting at `start`: (position, level).
        `after` is the first character (not whitespace) the previous chunk did not cover."""
        hi = start + chunk_size
        if hi >= n:
            return n, PARAGRAPH
        min_fill = max(1, int(chunk_size * _MIN_FILL))
        lo = max(after + 1, start + min_fill, after + min_fill)  # and never a chunk that is mostly overlap
        for level, positions in enumerate(at_most):
            i = bisect_right(positions, hi) - 1
            if i >= 0 and positions[i] >= lo:
                return positions[i], level
        return hi, CHAR

    def choose_overlap(end: int, floor: int) -> int:
        """Start of the next chunk: the strongest boundary in [end - overlap, end) at or after `floor`
        (earliest of that strength, i.e. the most overlap), whitespace skipped; `end` when there is none."""
        lo = max(end - chunk_overlap, floor)
        if chunk_overlap == 0 or lo >= end:
            return end
        for positions in at_most:
            i = bisect_left(positions, lo)
            if i < len(positions) and positions[i] < end:
                start = skip_space(positions[i])
                return start if start < end else end
        start = skip_space(lo)  # a hard cut in the window (no boundary there, e.g. a long token)
        return start if start < end else end

    spans: list[tuple[int, int]] = []
    start = skip_space(0)
    new_from = start  # the chunk must reach past this position: it has to add text the previous one lacked
    while start < n:
        end, _ = choose_end(start, new_from)
        trimmed = end
        while trimmed > start and text[trimmed - 1].isspace():
            trimmed -= 1
        spans.append((start, trimmed))
        fresh = skip_space(end)
        if fresh >= n:
            break
        # next chunk: with overlap if that does not cost a weaker end than starting fresh would get
        fresh_end, fresh_level = choose_end(fresh, fresh)
        floor = max(start + 1, fresh + 1 - chunk_size)  # with the overlap it must still reach past `fresh`
        lapped = choose_overlap(trimmed, floor=floor)
        if lapped < fresh:
            _, lapped_level = choose_end(lapped, fresh)
            if lapped_level > fresh_level:  # overlap would push the end to a weaker boundary: shrink it
                lapped = choose_overlap(trimmed, floor=max(floor, fresh_end - chunk_size))
        start, new_from = skip_space(min(lapped, fresh)), fresh
    return spans
