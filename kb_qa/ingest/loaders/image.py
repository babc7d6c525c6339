"""Images (.png .jpg .jpeg .bmp .tif .tiff .webp): text by OCR, one section per frame (multi-page TIFF: per page).

With `ingest.ocr: off` an image is refused (it has no text without OCR)."""

from __future__ import annotations

from kb_qa.ingest.limits import check_pages, current_options
from kb_qa.ingest.loaders.base import LoadError
from kb_qa.ingest.ocr import image_frames, ocr_pages
from kb_qa.schema import Section


def load_image(data: bytes, name: str) -> list[Section]:
    options = current_options.get()
    if options.ocr == "off":
        raise LoadError(name, "an image has no text without OCR (set ingest.ocr: auto)")
    frames = image_frames(data)
    check_pages(len(frames), name, options.limits, unit="frames")
    sections = ocr_pages(((n, [frame]) for n, frame in enumerate(frames, start=1)), len(frames))
    if len(frames) == 1:
        sections = [Section(s.text, ocr=True) for s in sections]  # a single image has no page numbers
    if not sections:
        raise LoadError(name, "no text found by OCR in the image")
    return sections
