"""Markdown: one section per ATX/setext heading, text kept as written; '#' lines in fenced code are not headings."""

from __future__ import annotations

import re

from kb_qa.ingest.encoding import decode_text
from kb_qa.schema import Section

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r" {0,3}#{1,6}(?:[ \t]|$)")
_ATX_CLOSING = re.compile(r"(?:^|(?<![ \t])[ \t]+)#+[ \t]*$")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")


def load_markdown(data: bytes, name: str) -> list[Section]:
    return markdown_sections(decode_text(data, name))


def markdown_sections(text: str) -> list[Section]:
    lines = text.split("\n")
    sections: list[Section] = []
    heading: str | None = None
    buf: list[str] = []
    fence: str | None = None
    front_matter = bool(lines) and lines[0].strip() == "---"

    heading_lines = 0  # leading lines of buf that are headings with nothing under them yet

    def flush(new_heading: str | None, keep: list[str]) -> None:
        nonlocal heading, buf, heading_lines
        if any(line.strip() for line in buf[heading_lines:]):
            sections.append(Section("\n".join(buf), heading=heading))
            buf, heading_lines = [], 0
        if new_heading is None and not keep:  # end of text: keep a trailing bare heading as text
            if any(line.strip() for line in buf):
                sections.append(Section("\n".join(buf), heading=heading))
            return
        heading = new_heading
        buf = buf + keep
        heading_lines = len(buf)

    for i, line in enumerate(lines):
        if front_matter:  # YAML front matter: text, never headings
            buf.append(line)
            if i > 0 and line.strip() in ("---", "..."):
                front_matter = False
            continue
        fence_match = _FENCE.match(line)
        if fence is not None:
            if fence_match and fence_match.group(1)[0] == fence[0] and len(fence_match.group(1)) >= len(fence) \
                    and not line.strip().strip(fence[0]):
                fence = None
            buf.append(line)
            continue
        if fence_match:
            fence = fence_match.group(1)
            buf.append(line)
            continue
        if _ATX.match(line):
            title = _ATX_CLOSING.sub("", line.strip().lstrip("#")).strip()
            flush(title or None, [line])
            continue
        if _SETEXT.match(line) and buf and buf[-1].strip() and not _is_block_start(buf[-1]) \
                and (len(buf) == 1 or not buf[-2].strip()):
            title = buf.pop()
            flush(title.strip(), [title, line])
            continue
        buf.append(line)
    flush(None, [])
    return sections


def _is_block_start(line: str) -> bool:
    """A line that cannot be a setext heading's text (list item, quote, table row, fence)."""
    return bool(re.match(r" {0,3}(?:[-*+>|]|\d+[.)]\s|#|`{3}|~{3})", line)) or "|" in line
