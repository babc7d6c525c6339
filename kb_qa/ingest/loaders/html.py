"""HTML (also used by EPUB, EML and XHTML): script/style/nav/forms dropped, h1-h6 open sections, tables as 'cell | cell'
rows (one line per row; the splitter repeats the header row on every chunk of a long table)."""

from __future__ import annotations

import re

from kb_qa.ingest.encoding import decode_text
from kb_qa.ingest.limits import check_columns, current_options, row_too_wide
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
    return html_sections(decode_text(data, name), name)


def html_sections(markup: str, name: str = "document") -> list[Section]:
    """Sections of a page. `name` is the file a refusal names (LoadError: a table row over
    ingest.max_table_columns)."""
    import warnings

    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, XMLParsedAsHTMLWarning

    _check_row_tags(markup, name)
    with warnings.catch_warnings():  # XHTML read as HTML, and short fragments, are what we mean to parse
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(markup, "lxml")
    title = soup.title.get_text(" ", strip=True) if soup.title is not None else ""
    walker = _HtmlText(title or None, name)
    walker.walk(soup.body if soup.body is not None else soup)
    return walker.finish()


_ROW_TAGS = re.compile(r"<(t[dhr]|/?table)[\s/>]", re.IGNORECASE)


def _check_row_tags(markup: str, name: str) -> None:
    """Refuse a page with a table row of more cells than ingest.max_table_columns, counted in the markup before
    it is parsed: BeautifulSoup costs ~1 KB and ~45 us per tag, so one row of 10^6 cells (10 MB of HTML) would
    take 45 s and 1.1 GB before any check on the parsed rows could run. Here empty cells (and cell tags inside
    scripts or comments) count too; a nested table starts a new count (its own rows), so the enclosing row is,
    if anything, undercounted."""
    limit = current_options.get().limits.max_table_columns
    rows = cells = 0
    for match in _ROW_TAGS.finditer(markup):
        if match.group(1).lower() == "tr" or match.group(1).lower().endswith("table"):
            if cells > limit:
                break
            rows += match.group(1).lower() == "tr"
            cells = 0
        else:
            cells += 1
    if cells > limit:
        raise row_too_wide(name, f"table row {max(rows, 1):,} has {cells:,} cells", limit)


class _HtmlText:
    """Walks a parsed page: block elements end lines, inline ones join; headings open sections."""

    def __init__(self, heading: str | None, name: str = "document"):
        from bs4 import Comment, Doctype, NavigableString, ProcessingInstruction, Tag

        self._text_types, self._skip_types, self._tag_type = NavigableString, (Comment, Doctype,
                                                                                ProcessingInstruction), Tag
        self.builder = SectionBuilder(heading)
        self.inline: list[str] = []
        self.name, self.tables = name, 0  # (for a refusal: which file, which table)

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
                self.tables += 1
                self.builder.block(_html_table_lines(child, self.name, f"table {self.tables}, "))
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


def _html_table_lines(table, name: str = "document", where: str = "") -> list[str]:
    """Rows as 'cell | cell' lines. A cell empty in this row stays (so each value stays under its column's
    header); a column empty in every row (layout spacers, common in filings) is dropped. A row wider than
    ingest.max_table_columns makes the file refused (LoadError naming `name`, `where` and the row)."""
    limits = current_options.get().limits
    rows = []
    number = 0
    for tr in table.find_all("tr"):
        if tr.find_parent("table") is not table:
            continue  # a nested table's row: its text is already in the enclosing cell
        number += 1
        cells = [re.sub(r"\s+", " ", td.get_text(" ", strip=True)) for td in tr.find_all(["td", "th"], recursive=False)]
        check_columns(cells, number, name, limits, where)
        if any(cells):
            rows.append(cells)
    width = max((len(r) for r in rows), default=0)
    used = [j for j in range(width) if any(j < len(r) and r[j] for r in rows)]
    return [" | ".join(r[j] if j < len(r) else "" for j in used).rstrip(" |") for r in rows]
