"""PPTX: one section per slide (page = slide number, heading = slide title); tables, groups and notes included.

Pictures on a slide are OCR'd when `ingest.ocr` allows (`ocr.EmbeddedPictures` decides which): the text of a
picture is its own section, marked OCR, with the slide's page and title, placed where the picture comes in the
slide's shape order (the slide's text before it is one section, the text after it another)."""

from __future__ import annotations

import io
from collections.abc import Iterable

from kb_qa.ingest.loaders.base import SectionBuilder
from kb_qa.ingest.ocr import EmbeddedPictures
from kb_qa.schema import Section


def load_pptx(data: bytes, name: str) -> list[Section]:
    from pptx import Presentation

    presentation = Presentation(io.BytesIO(data))
    sections: list[Section] = []
    pictures = EmbeddedPictures(name)
    for number, slide in enumerate(presentation.slides, start=1):
        title_shape = slide.shapes.title
        title = title_shape.text_frame.text.strip() if title_shape is not None and title_shape.has_text_frame \
            else ""
        slide_text = SectionBuilder(heading=title.replace("\n", " ") or None, page=number)
        if title:
            slide_text.line(title)
        for shape in _pptx_shapes(slide.shapes):
            if shape is title_shape or (title_shape is not None and shape.shape_id == title_shape.shape_id):
                continue
            for line in _pptx_shape_lines(shape):
                slide_text.line(line)
            if pictures.enabled:
                slide_text.ocr_text(pictures.text(_pptx_picture_blob(shape)))
        if slide.has_notes_slide:
            notes_frame = slide.notes_slide.notes_text_frame
            notes = notes_frame.text.strip() if notes_frame is not None else ""
            if notes:
                slide_text.line("")
                slide_text.line("Notes: " + notes)
        sections += slide_text.sections()
    pictures.finish()
    return sections


def _pptx_picture_blob(shape) -> bytes:
    """The bytes of a picture shape (or a picture placeholder), b'' for any other shape or a linked picture."""
    try:
        image = getattr(shape, "image", None)  # Picture and PlaceholderPicture; raises when the picture is linked
        return image.blob if image is not None else b""
    except (AttributeError, KeyError, ValueError):
        return b""


def _pptx_shapes(shapes) -> Iterable:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        try:
            is_group = shape.shape_type == MSO_SHAPE_TYPE.GROUP
        except NotImplementedError:  # shape kinds python-pptx does not model
            is_group = False
        if is_group:
            yield from _pptx_shapes(shape.shapes)
        else:
            yield shape


def _pptx_shape_lines(shape) -> list[str]:
    lines: list[str] = []
    if shape.has_text_frame:
        lines.extend(p.text for p in shape.text_frame.paragraphs)
    if getattr(shape, "has_table", False) and shape.has_table:
        for row in shape.table.rows:
            cells = [cell.text.replace("\n", " ").strip() for cell in row.cells]
            if any(cells):
                lines.append(" | ".join(cells))
    return [ln for ln in lines if ln.strip()]
