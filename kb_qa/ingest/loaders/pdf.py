"""PDF: one section per page with text (pypdf); heading from the PDF outline when it has one.

Page text is what lies on the page (`pdf_text.visible_text`): pypdf alone repeats a form XObject's whole text
on every page that shows part of it. Simple tables become 'cell | cell' rows (`pdf_tables`)."""

from __future__ import annotations

import io
import logging

from kb_qa.ingest.limits import check_pages, current_options
from kb_qa.ingest.loaders.base import LoadError, shorten
from kb_qa.ingest.loaders.pdf_images import page_picture
from kb_qa.ingest.loaders.pdf_tables import pipe_simple_tables
from kb_qa.ingest.loaders.pdf_text import visible_text
from kb_qa.ingest.ocr import ocr_pages, ocr_replaces_layer, open_image, page_wants_ocr
from kb_qa.schema import Section

log = logging.getLogger(__name__)


def load_pdf(data: bytes, name: str) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    if current_options.get().pdf_backend == "pymupdf":
        from kb_qa.ingest.loaders.pdf_pymupdf import load_pdf_pymupdf

        return load_pdf_pymupdf(data, name)

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                decrypted = reader.decrypt("")  # owner-password-only PDFs open with an empty user password
            except DependencyError as exc:
                raise LoadError(name, "encrypted PDF: opening it needs the 'cryptography' package") from exc
            if not decrypted:
                raise LoadError(name, "encrypted PDF: a password is needed")
        pages = list(reader.pages)
    except LoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types on damaged files
        raise LoadError(name, f"corrupt or truncated PDF ({type(exc).__name__}: {shorten(str(exc))})") from exc
    if not pages:
        raise LoadError(name, "empty document (the PDF has no pages)")
    options = current_options.get()
    check_pages(len(pages), name, options.limits)
    headings = _pdf_outline_headings(reader)
    sections: list[Section] = []
    unreadable = 0
    current_heading: str | None = None
    to_ocr: list[int] = []  # page numbers with no (or almost no) text layer, or every page when forced
    for number, page in enumerate(pages, start=1):
        first_on_page, last_on_page = headings.get(number, (None, None))
        heading = first_on_page or current_heading
        current_heading = last_on_page or current_heading
        try:
            text = visible_text(page) or ""
        except Exception:  # noqa: BLE001 - one bad page must not lose the rest
            log.warning("%s: page %d could not be read", name, number, exc_info=True)
            unreadable += 1
            continue
        text = pipe_simple_tables(_join_word_per_line(text))
        if page_wants_ocr(text, options.ocr) and _has_images(page):
            to_ocr.append(number)
            if ocr_replaces_layer(text, options.ocr):
                continue
        if text.strip():
            sections.append(Section(text, page=number, heading=heading))
    if to_ocr:
        ocr_sections = ocr_pages(((n, _ocr_pictures(pages[n - 1], reader, name, n)) for n in to_ocr), len(to_ocr))
        sections = sorted(sections + ocr_sections, key=lambda s: s.page or 0)
    if not sections:
        if unreadable == len(pages):
            raise LoadError(name, "corrupt PDF: no page could be read")
        if options.ocr == "off":
            raise LoadError(name, "no text layer (scanned?): OCR is not configured (set ingest.ocr: auto)")
        raise LoadError(name, "no text layer and no text found by OCR in its images" if to_ocr else
                              "no text layer (and no images to OCR)")
    return sections


def _has_images(page) -> bool:
    try:
        resources = page.get("/Resources")
        xobjects = resources.get_object().get("/XObject") if resources is not None else None
        if not xobjects:
            return False
        return any(xobjects[key].get_object().get("/Subtype") == "/Image" or
                   xobjects[key].get_object().get("/Subtype") == "/Form" for key in xobjects.get_object())
    except Exception:  # noqa: BLE001 - a damaged resource dictionary: let the image extraction decide
        return True


def _ocr_pictures(page, reader, name: str, number: int) -> list:
    """What to OCR on a page: its images composed in page layout (one picture: a scan split into strips reads
    as whole lines, in one OCR call), else its images one by one."""
    try:
        picture = page_picture(page, reader)
    except Exception:  # noqa: BLE001 - a content stream pypdf cannot walk: fall back to the images themselves
        log.debug("%s: page %d could not be composed for OCR", name, number, exc_info=True)
        picture = None
    return [picture] if picture is not None else _page_images(page, name, number)


def _page_images(page, name: str, number: int) -> list:
    """The page's images as RGB PIL images, largest first (a scan is one image covering the page)."""
    images = []
    try:
        for image_file in page.images:
            try:
                images.append(open_image(image_file.data).convert("RGB"))
            except Exception:  # noqa: BLE001 - an image Pillow cannot decode: skip it, keep the others
                log.warning("%s: an image on page %d could not be decoded", name, number, exc_info=True)
    except Exception:  # noqa: BLE001
        log.warning("%s: images on page %d could not be read", name, number, exc_info=True)
    return sorted(images, key=lambda im: -im.width * im.height)


def _pdf_outline_headings(reader) -> dict[int, tuple[str, str]]:
    """page number -> (first, last) outline title on that page; {} if the PDF has no usable outline."""
    out: dict[int, tuple[str, str]] = {}

    def walk(items) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
                continue
            try:
                number = reader.get_destination_page_number(item) + 1
                title = str(item.title).strip()
            except Exception:  # noqa: BLE001 - broken outlines are common and harmless
                continue
            if number >= 1 and title:
                first, _ = out.get(number, (title, title))
                out[number] = (first, title)

    try:
        walk(reader.outline)
    except Exception:  # noqa: BLE001
        return {}
    return out


def _join_word_per_line(text: str) -> str:
    """Some PDFs put every word in its own text object and pypdf returns one word per line; join those back."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) < 20:
        return text
    single = sum(1 for ln in lines if " " not in ln.strip() and len(ln.strip()) <= 25)
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    if single < 0.8 * len(lines) or latin < 0.5 * len(text.replace("\n", "").replace(" ", "")):
        return text
    return " ".join(ln.strip() for ln in lines)
