"""DOCX: body paragraphs and tables in order; Heading/Title styles (or outline levels) open a section.

Table rows become 'cell | cell' lines, one line per row (the splitter keeps rows whole and repeats the first
row, the header, on every chunk of a long table). Headers, footers and comments are left out.

Pictures in body paragraphs (DrawingML `a:blip`, legacy VML `v:imagedata`) are OCR'd when `ingest.ocr` allows
(`ocr.EmbeddedPictures` decides which): their text becomes its own section, marked OCR, right after the text of
the paragraph that holds the picture, under the heading in force."""

from __future__ import annotations

import io
import re

from kb_qa.ingest.limits import current_options, row_too_wide
from kb_qa.ingest.loaders.base import SectionBuilder
from kb_qa.ingest.ocr import EmbeddedPictures
from kb_qa.schema import Section


def load_docx(data: bytes, name: str) -> list[Section]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(io.BytesIO(data))
    builder = SectionBuilder()
    pictures = EmbeddedPictures(name)
    tables = 0
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            text = block.text
            if _docx_heading_level(block) is not None and text.strip():
                builder.heading(text.strip())
            else:
                builder.line(text)
            if pictures.enabled:
                for blob in _docx_picture_blobs(block, document.part):
                    builder.ocr_text(pictures.text(blob))
        elif isinstance(block, Table):
            tables += 1
            builder.block(_docx_table_lines(block, name, f"table {tables}, "))
    pictures.finish()
    return builder.sections()


def _docx_picture_blobs(paragraph, part) -> list[bytes]:
    """Bytes of the pictures a paragraph shows, in document order (links to outside files are not followed)."""
    blobs = []
    for rel_id in paragraph._p.xpath(".//a:blip/@r:embed | .//*[local-name()='imagedata']/@r:id"):
        related = part.related_parts.get(str(rel_id))
        blob = getattr(related, "blob", None)
        if blob:
            blobs.append(blob)
    return blobs


_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*(\d)$|^(?:title|标题)$", re.IGNORECASE)


def _docx_heading_level(paragraph) -> int | None:
    """Heading level from the paragraph's style (or its base styles) or an explicit outline level."""
    from docx.oxml.ns import qn

    def outline_level(element) -> int | None:
        ppr = element.find(qn("w:pPr")) if element is not None else None
        lvl = ppr.find(qn("w:outlineLvl")) if ppr is not None else None
        if lvl is None:
            return None
        value = int(lvl.get(qn("w:val"), "9"))
        return value + 1 if value < 9 else None  # 9 = body text

    direct = outline_level(paragraph._p)
    if direct is not None:
        return direct
    style, depth = paragraph.style, 0
    while style is not None and depth < 10:
        match = _HEADING_STYLE.match((style.name or "").strip())
        if match:
            return int(match.group(1)) if match.group(1) else 0
        level = outline_level(style.element)
        if level is not None:
            return level
        style, depth = style.base_style, depth + 1
    return None


def _docx_table_lines(table, name: str = "document", where: str = "") -> list[str]:
    """Rows as 'cell | cell' lines; a row wider than ingest.max_table_columns makes the file refused."""
    limits = current_options.get().limits
    lines = []
    for number, row in enumerate(table.rows, 1):
        # Grid columns from the XML before `row.cells`, which repeats a merged cell once per column it spans
        # (w:gridSpan="100000000" would be a tuple of 10^8). Word itself stops at 63 columns.
        grid = sum(tc.grid_span for tc in row._tr.tc_lst)
        if grid > limits.max_table_columns:
            raise row_too_wide(name, f"{where}row {number:,} spans {grid:,} columns", limits.max_table_columns)
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell is returned once per grid column it spans
                continue
            seen.add(id(cell._tc))
            parts = [p.text.strip() for p in cell.paragraphs if p.text.strip()]
            for inner in cell.tables:
                parts.append("; ".join(_docx_table_lines(inner, name, where)))
            cells.append(" ".join(" ".join(parts).split()))  # one line per row: the splitter keeps rows whole
        if any(cells):
            lines.append(" | ".join(cells))
    return lines
