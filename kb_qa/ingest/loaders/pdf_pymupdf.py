"""PDF through PyMuPDF (`ingest.pdf_backend: pymupdf`): faster text, and ruled tables found by `find_tables`.

Opt-in only: PyMuPDF is AGPL-3.0, so it is not in requirements.txt (install it from requirements-bench.txt).
One section per page, like the pypdf loader: text blocks and tables in reading order (top to bottom), a table as
'cell | cell' rows (the splitter repeats its header row); text blocks inside a table's box are left out, since
the table carries them. Pages without a text layer are rendered and OCR'd when `ingest.ocr` allows it.
"""

from __future__ import annotations

import logging
import re

from kb_qa.ingest.limits import check_pages, current_options
from kb_qa.ingest.loaders.base import LoadError, shorten
from kb_qa.ingest.ocr import ocr_pages, ocr_replaces_layer, page_wants_ocr
from kb_qa.schema import Section

log = logging.getLogger(__name__)
_OCR_DPI = 200  # render resolution for OCR of a page without a text layer (dots per inch)
_CJK = r"\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
_CJK_WRAP = re.compile(rf"(?<=[{_CJK}])\n(?=[{_CJK}])")


def _cell(value) -> str:
    """A cell's text on one line: a wrap between two CJK characters joins them, any other wrap is a space."""
    return " ".join(_CJK_WRAP.sub("", str(value or "")).split())


def load_pdf_pymupdf(data: bytes, name: str) -> list[Section]:
    try:
        import pymupdf
    except ImportError as exc:
        raise LoadError(name, "ingest.pdf_backend: pymupdf needs PyMuPDF (AGPL-3.0): "
                              "pip install -r requirements-bench.txt, or set it to pypdf") from exc
    if hasattr(pymupdf, "no_recommend_layout"):
        pymupdf.no_recommend_layout()  # else find_tables prints an advert for another package on stdout
    try:
        document = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:  # noqa: BLE001 - MuPDF raises its own types on damaged files
        raise LoadError(name, f"corrupt or truncated PDF ({type(exc).__name__}: {shorten(str(exc))})") from exc
    with document:
        if document.needs_pass and not document.authenticate(""):
            raise LoadError(name, "encrypted PDF: a password is needed")
        if document.page_count == 0:
            raise LoadError(name, "empty document (the PDF has no pages)")
        options = current_options.get()
        check_pages(document.page_count, name, options.limits)
        headings = _toc_headings(document)
        sections: list[Section] = []
        to_ocr: list[int] = []
        heading = None
        # fitz.Document iterates its pages; its stubs lack __iter__ (and without pymupdf installed mypy sees Any).
        for page in document:  # type: ignore[attr-defined,unused-ignore]
            number = page.number + 1
            heading = headings.get(number, heading)
            try:
                text = _page_text(page)
            except Exception:  # noqa: BLE001 - one bad page must not lose the rest
                log.warning("%s: page %d could not be read", name, number, exc_info=True)
                continue
            if page_wants_ocr(text, options.ocr):
                to_ocr.append(number)
                if ocr_replaces_layer(text, options.ocr):
                    continue
            if text.strip():
                sections.append(Section(text, page=number, heading=heading))
        if to_ocr:
            rendered = ((n, [_render(document[n - 1])]) for n in to_ocr)
            sections = sorted(sections + ocr_pages(rendered, len(to_ocr)), key=lambda s: s.page or 0)
    if not sections:
        if options.ocr == "off":
            raise LoadError(name, "no text layer (scanned?): OCR is not configured (set ingest.ocr: auto)")
        raise LoadError(name, "no text layer and no text found by OCR")
    return sections


def _page_text(page) -> str:
    tables = list(page.find_tables().tables)
    boxes = [table.bbox for table in tables]
    items: list[tuple[float, float, str]] = []  # (top, left, text) in points
    for x0, y0, x1, y1, text, *_ in page.get_text("blocks", sort=True):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if not any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes) and text.strip():
            items.append((y0, x0, text.strip()))
    for table, box in zip(tables, boxes, strict=True):
        rows = [" | ".join(_cell(c) for c in row) for row in table.extract()]
        rows = [row for row in rows if row.replace("|", "").strip()]
        if rows:
            items.append((box[1], box[0], "\n".join(rows)))
    items.sort(key=lambda item: (round(item[0]), item[1]))
    return "\n".join(text for _, _, text in items)


def _render(page):
    from PIL import Image

    pixmap = page.get_pixmap(dpi=_OCR_DPI, colorspace="rgb", alpha=False)
    return Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)


def _toc_headings(document) -> dict[int, str]:
    """page number -> last outline title on it (the heading in force from that page on)."""
    out: dict[int, str] = {}
    try:
        for _level, title, page_number, *_ in document.get_toc(simple=True):
            if page_number >= 1 and str(title).strip():
                out[page_number] = str(title).strip()
    except Exception:  # noqa: BLE001 - broken outlines are common and harmless
        return {}
    return out
