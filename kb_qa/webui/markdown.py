"""Model answers rendered as Markdown, safely: parsed, filtered, and written back as Markdown Streamlit shows inert.

ChatGLM2 answers in Markdown (bold, lists, tables, code), so showing it escaped (kb_qa.webui.support.md_literal)
is unreadable. `safe_markdown` parses the answer with markdown-it-py (CommonMark + tables + strikethrough, raw
HTML off) and re-emits only a known set of constructs, with every piece of text escaped by md_literal:
  kept      paragraphs, headings (shown at level 4 and below), lists, block quotes, code spans and blocks,
            tables, emphasis, strikethrough, rules, line breaks; links to http(s) and mailto addresses
  dropped   raw HTML (shown as its text), images (their alt text, in brackets: nothing is fetched),
            links to any other scheme (javascript:, data:, file:, relative: their text only)
  escaped   Streamlit's own extensions inside text: `$math$`, `:red[colour]` directives, `:material/icons:`,
            emoji shortcodes, bare-URL autolinks (md_literal escapes all ASCII punctuation)
`[n]` citations (1 <= n <= the number of sources) become links to the page anchor of the answer's sources.

Deliberately not here: Streamlit calls (the page modules draw), HTML output (the page never renders raw HTML).
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import quote, urlsplit

from kb_qa.webui.support import LiteralStream, fence, md_literal

_CITATION = re.compile(r"\[(\d{1,3})\]")
_SAFE_SCHEMES = {"http", "https", "mailto"}
_MIN_HEADING = 4  # '# Title' in an answer would dwarf the page: headings start at level 4 (####)


@lru_cache(maxsize=1)
def _parser():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(["table", "strikethrough"])


def safe_markdown(text: str, *, n_sources: int = 0, anchor: str | None = None) -> str:
    """`text` (Markdown from a model) as Markdown that Streamlit renders with nothing active in it.
    `anchor`: the id citations [1]..[n_sources] link to (`#anchor`); None leaves them as text."""
    from markdown_it.tree import SyntaxTreeNode

    root = SyntaxTreeNode(_parser().parse(text or ""))
    writer = _Writer(n_sources, anchor)
    return "\n\n".join(b for b in (writer.block(node) for node in root.children) if b.strip()).rstrip() + "\n"


def safe_link_target(url: str) -> str | None:
    """`url` if it is an http(s)/mailto address, percent-encoded so it cannot end the Markdown link early."""
    url = (url or "").strip()
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    if scheme not in _SAFE_SCHEMES:
        return None
    return quote(url, safe="/:?#[]@!$&'*+,;=%-._~")  # what is left cannot close '(...)' or start markup


class _Writer:
    def __init__(self, n_sources: int, anchor: str | None) -> None:
        self.n_sources = n_sources
        self.anchor = anchor

    # -- blocks ------------------------------------------------------------------------------------------
    def block(self, node) -> str:
        kind = node.type
        if kind == "paragraph":
            return self.inline_children(node)
        if kind == "heading":
            level = max(_MIN_HEADING, int(node.tag[1]))
            return "#" * min(level, 6) + " " + self.inline_children(node).replace("  \n", " ")
        if kind in ("bullet_list", "ordered_list"):
            return self.list(node)
        if kind == "blockquote":
            inner = "\n\n".join(self.block(c) for c in node.children)
            return "\n".join("> " + line if line else ">" for line in inner.split("\n"))
        if kind in ("fence", "code_block"):
            info = re.sub(r"[^A-Za-z0-9_+-]", "", (node.info or "").split(" ")[0])[:20]
            return fence(node.content, info or "text")
        if kind == "hr":
            return "---"
        if kind == "table":
            return self.table(node)
        if kind == "html_block":  # only with html on; kept as text in any case
            return md_literal(node.content)
        return md_literal(node.content or "")  # an unknown block: its text, escaped

    def list(self, node) -> str:
        ordered = node.type == "ordered_list"
        start = int(node.attrs.get("start", 1)) if ordered else 1
        items = []
        for i, item in enumerate(node.children):
            marker = f"{start + i}. " if ordered else "- "
            body = "\n\n".join(self.block(c) for c in item.children) or md_literal("")
            pad = " " * len(marker)
            lines = body.split("\n")
            items.append(marker + lines[0] + "".join("\n" + (pad + line if line else "") for line in lines[1:]))
        return "\n".join(items)

    def table(self, node) -> str:
        rows: list[list[str]] = []
        aligns: list[str] = []
        for section in node.children:  # thead, tbody
            for tr in section.children:
                cells = []
                for cell in tr.children:
                    cells.append(self.inline_children(cell).replace("  \n", " ").replace("\n", " ") or " ")
                    if section.type == "thead":
                        style = (cell.attrs or {}).get("style", "")
                        aligns.append({"text-align:center": ":-:", "text-align:right": "--:",
                                       "text-align:left": ":--"}.get(style, "---"))
                rows.append(cells)
        if not rows:
            return ""
        width = max(len(r) for r in rows)
        aligns += ["---"] * (width - len(aligns))
        lines = ["| " + " | ".join(r + [" "] * (width - len(r))) + " |" for r in rows]
        lines.insert(1, "| " + " | ".join(aligns) + " |")
        return "\n".join(lines)

    # -- inline ------------------------------------------------------------------------------------------
    def inline_children(self, node) -> str:
        return "".join(self.inline(c) for c in node.children)

    def inline(self, node) -> str:
        kind = node.type
        if kind == "inline":
            return self.inline_children(node)
        if kind == "text":
            return self.text(node.content)
        if kind == "softbreak":
            return "\n"
        if kind == "hardbreak":
            return "  \n"
        if kind == "code_inline":
            return _code_span(node.content)
        if kind == "em":
            return "*" + self.inline_children(node) + "*"
        if kind == "strong":
            return "**" + self.inline_children(node) + "**"
        if kind == "s":
            return "~~" + self.inline_children(node) + "~~"
        if kind == "link":
            label = self.inline_children(node) or md_literal(node.attrs.get("href", ""))
            target = safe_link_target(str(node.attrs.get("href", "")))
            return f"[{label}]({target})" if target else label
        if kind == "image":  # never fetched: its description, in brackets
            alt = "".join(c.content for c in node.children if c.type == "text") or "image"
            return md_literal(f"[{alt}]")
        if kind == "html_inline":
            return md_literal(node.content)
        return md_literal(node.content or "")

    def text(self, text: str) -> str:
        if not self.anchor or not self.n_sources:
            return _escape_inline(text)
        out, last = [], 0
        for m in _CITATION.finditer(text):
            n = int(m.group(1))
            if not 1 <= n <= self.n_sources:
                continue
            out.append(_escape_inline(text[last:m.start()]))
            out.append(f"[\\[{n}\\]](#{self.anchor})")
            last = m.end()
        out.append(_escape_inline(text[last:]))
        return "".join(out)


def _escape_inline(text: str) -> str:
    """md_literal for text inside a line (a text node never starts a line: its spaces stay spaces)."""
    escaper = LiteralStream()
    escaper._line_start = False  # noqa: SLF001 - the one option LiteralStream has no argument for
    return escaper.feed(text)


def _code_span(content: str) -> str:
    """A code span `content` cannot close early: the fence is one backtick longer than any run inside."""
    longest = max((len(r) for r in re.findall(r"`+", content)), default=0)
    ticks = "`" * (longest + 1)
    content = content.replace("\n", " ")
    pad = " " if content.startswith("`") or content.endswith("`") or not content.strip() else ""
    return f"{ticks}{pad}{content}{pad}{ticks}"
