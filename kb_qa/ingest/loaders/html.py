"""HTML (also used by EPUB, EML and XHTML): script/style/nav/forms dropped, h1-h6 open sections, tables as 'cell | cell'
rows (one line per row; the splitter repeats the header row on every chunk of a long table)."""

from __future__ import annotations

import re

from kb_qa.ingest.encoding import decode_text
from kb_qa.ingest.loaders.base import SectionBuilder
from kb_qa.schema import Section

_HTML_DROP = {"script", "style", "nav", "noscript", "template", "svg", "canvas", "iframe", "object", "embed",
              "button", "select", "option", "input", "textarea", "head", "math"}
_HTML_BLOCK = {"p", "div", "section", "article", "main", "aside", "header", "footer", "blockquote", "ul", "ol",
               "dl", "dt", "dd", "figure", "figcaption", "address", "details", "summary", "caption", "form",
               "fieldset", "legend", "hr", "center", "body", "html"}
_HTML_PARAGRAPH = {"p", "blockquote", "ul", "ol", "dl", "figure", "section", "article", "pre", "table", "hr"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


def load_html(data: bytes, name: str) -> list[Section]:
    return html_sections(decode_text(data, name))


def html_sections(markup: str) -> list[Section]:
    import warnings

    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, XMLParsedAsHTMLWarning

    with warnings.catch_warnings():  # XHTML read as HTML, and short fragments, are what we mean to parse
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(markup, "lxml")
    title = soup.title.get_text(" ", strip=True) if soup.title is not None else ""
    walker = _HtmlText(title or None)
    walker.walk(soup.body if soup.body is not None else soup)
    return walker.finish()


class _HtmlText:
    """Walks a parsed page: block elements end lines, inline ones join; headings open sections."""

    def __init__(self, heading: str | None):
        from bs4 import Comment, Doctype, NavigableString, ProcessingInstruction, Tag

        self._text_types, self._skip_types, self._tag_type = NavigableString, (Comment, Doctype,
                                                                                ProcessingInstruction), Tag
        self.builder = SectionBuilder(heading)
        self.inline: list[str] = []

    def flush(self, paragraph: bool = False) -> None:
        text = re.sub(r"[ \t\r\n\f]+", " ", "".join(self.inline)).strip()
        self.inline = []
        if text:
            self.builder.line(text)
        if paragraph:
            self.builder.line("")

    def walk(self, node) -> None:
        for child in node.children:
            if isinstance(child, self._text_types):
                if not isinstance(child, self._skip_types):
                    self.inline.append(str(child))
                continue
            if not isinstance(child, self._tag_type):
                continue
            tag = (child.name or "").lower()
            if tag in _HTML_DROP or _hidden(child):
                continue
            if tag in _HEADINGS:
                self.flush()
                text = re.sub(r"\s+", " ", child.get_text(" ", strip=True))
                if text:
                    self.builder.heading(text)
            elif tag == "br":
                self.flush()
            elif tag == "table":
                self.flush()
                self.builder.block(_html_table_lines(child))
            elif tag == "pre":
                self.flush()
                self.builder.block(child.get_text().strip("\n").split("\n"))
            elif tag == "li":
                self.flush()
                self.inline.append("- ")
                self.walk(child)
                self.flush()
            elif tag in _HTML_BLOCK or tag in _HTML_PARAGRAPH or tag == "tr":
                self.flush()
                self.walk(child)
                self.flush(paragraph=tag in _HTML_PARAGRAPH)
            else:
                self.walk(child)

    def finish(self) -> list[Section]:
        self.flush()
        return self.builder.sections()


def _hidden(tag) -> bool:
    attrs = tag.attrs or {}
    style = str(attrs.get("style", "")).replace(" ", "").lower()
    return "hidden" in attrs or attrs.get("aria-hidden") == "true" or "display:none" in style


def _html_table_lines(table) -> list[str]:
    """Rows as 'cell | cell' lines. A cell empty in this row stays (so each value stays under its column's
    header); a column empty in every row (layout spacers, common in filings) is dropped."""
    rows = []
    for tr in table.find_all("tr"):
        if tr.find_parent("table") is not table:
            continue  # a nested table's row: its text is already in the enclosing cell
        cells = [re.sub(r"\s+", " ", td.get_text(" ", strip=True)) for td in tr.find_all(["td", "th"], recursive=False)]
        if any(cells):
            rows.append(cells)
    width = max((len(r) for r in rows), default=0)
    used = [j for j in range(width) if any(j < len(r) and r[j] for r in rows)]
    return [" | ".join(r[j] if j < len(r) else "" for j in used).rstrip(" |") for r in rows]
