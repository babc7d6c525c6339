"""PPTX: one section per slide (page = slide number, heading = slide title); tables, groups and notes included.

Pictures on a slide are OCR'd when `ingest.ocr` allows (`ocr.EmbeddedPictures` decides which): the text of a
picture is its own section, marked OCR, with the slide's page and title, placed where the picture comes in the
slide's shape order (the slide's text before it is one section, the text after it another)."""

from __future__ import annotations

import io
from collections.abc import Iterable

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
        heading = title.replace("\n", " ") or None
        lines = [title] if title else []

        def close_text(lines: list[str] = lines, number: int = number, heading: str | None = heading) -> None:
            text = "\n".join(lines)
            if text.strip():
                sections.append(Section(text, page=number, heading=heading))
            lines.clear()

        for shape in _pptx_shapes(slide.shapes):
            if shape is title_shape or (title_shape is not None and shape.shape_id == title_shape.shape_id):
                continue
            lines.extend(_pptx_shape_lines(shape))
            recognised = pictures.text(_pptx_picture_blob(shape)) if pictures.enabled else ""
            if recognised:
                close_text()
                sections.append(Section(recognised, page=number, heading=heading, ocr=True))
        if slide.has_notes_slide:
            notes_frame = slide.notes_slide.notes_text_frame
            notes = notes_frame.text.strip() if notes_frame is not None else ""
            if notes:
                lines += ["", "Notes: " + notes]
        close_text()
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
