"""PDF pages come out as pages: no page repeats another page's text, page numbers exact (issue 16).

The bug class: a producer (pdfjam, N-up or spread-splitting tools) draws one wide form XObject on several pages,
each shifted and clipped by a wrapping form's /BBox; pypdf's plain extraction returns the whole form on every
page. `_spread_pdf` makes such a file with pypdf itself, so the test needs nothing from ../shared."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kb_qa.ingest.loaders import load_document
from kb_qa.ingest.loaders.pdf_text import visible_text

SHARED_DOCS = Path(__file__).resolve().parents[1] / ".." / "shared" / "docs"
PAGE_W, PAGE_H = 300.0, 200.0  # points


def _spread_pdf(path: Path) -> Path:
    """Two pages, each showing its half of one 600 pt wide spread (left text on page 1, right on page 2)."""
    from pypdf import PdfWriter
    from pypdf.generic import (
        ArrayObject,
        DecodedStreamObject,
        DictionaryObject,
        FloatObject,
        NameObject,
    )

    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica")}))

    def form(data: bytes, bbox: list[float], resources: DictionaryObject):
        stream = DecodedStreamObject()
        stream.set_data(data)
        stream.update({NameObject("/Type"): NameObject("/XObject"), NameObject("/Subtype"): NameObject("/Form"),
                       NameObject("/BBox"): ArrayObject(FloatObject(v) for v in bbox),
                       NameObject("/Resources"): resources})
        return writer._add_object(stream)

    spread = form(b"BT /F1 12 Tf 20 100 Td (Left half text on the first page) Tj ET\n"
                  b"BT /F1 12 Tf 320 100 Td (Right half text on the second page) Tj ET\n",
                  [0, 0, 2 * PAGE_W, PAGE_H],
                  DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}))
    for shift in (0, -PAGE_W):
        wrapper = form(f"q 1 0 0 1 {shift} 0 cm /Sp Do Q\n".encode(), [0, 0, PAGE_W, PAGE_H],
                       DictionaryObject({NameObject("/XObject"): DictionaryObject({NameObject("/Sp"): spread})}))
        page = writer.add_blank_page(PAGE_W, PAGE_H)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/XObject"): DictionaryObject(
            {NameObject("/Fm"): wrapper})})
        contents = DecodedStreamObject()
        contents.set_data(b"q /Fm Do Q\n")
        page[NameObject("/Contents")] = writer._add_object(contents)
    with open(path, "wb") as out:
        writer.write(out)
    return path


def test_spread_pages_keep_only_their_half(tmp_path):
    path = _spread_pdf(tmp_path / "spread.pdf")
    from pypdf import PdfReader

    pages = PdfReader(path).pages
    assert pages[0].extract_text() == pages[1].extract_text()  # the bug this guards against: pypdf alone
    sections = load_document(path)
    assert [s.page for s in sections] == [1, 2]
    assert "Left half" in sections[0].text and "Right half" not in sections[0].text
    assert "Right half" in sections[1].text and "Left half" not in sections[1].text


def test_plain_pages_are_pypdf_text_unchanged():
    from pypdf import PdfReader

    sample = Path(__file__).parent / "fixtures" / "docs" / "sample.pdf"
    for page in PdfReader(sample).pages:
        assert visible_text(page) == page.extract_text()


def _drawing(page) -> list[bytes]:
    """What a page draws: its content stream and, depth first, every form XObject's stream it can reach (two
    pages that differ only in how a shared form is placed differ here, as reliance.pdf's pages 2 and 3 do)."""
    out, seen = [page.get_contents().get_data() if page.get_contents() else b""], set()

    def forms(resources) -> None:
        xobjects = resources.get_object().get("/XObject") if resources else None
        for name in sorted(xobjects or {}):
            xobject = xobjects[name].get_object()
            if xobject.get("/Subtype") == "/Form" and id(xobject) not in seen:
                seen.add(id(xobject))
                out.append(xobject.get_data())
                forms(xobject.get("/Resources"))

    forms(page.get("/Resources"))
    return out


def _shared_pdfs() -> list[Path]:
    return sorted(SHARED_DOCS.glob("**/*.pdf")) if SHARED_DOCS.is_dir() else []


@pytest.mark.skipif(not SHARED_DOCS.is_dir(), reason="../shared/docs is absent")
@pytest.mark.parametrize("path", _shared_pdfs(), ids=lambda p: str(p.relative_to(SHARED_DOCS)))
def test_no_two_pages_of_a_shared_pdf_share_their_text(path):
    """Identical non-empty text on two pages is allowed only where the pages' content streams are identical."""
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(path, strict=False)
    if reader.is_encrypted and not reader.decrypt(""):
        pytest.skip("needs a password")
    seen: dict[str, int] = {}
    for number, page in enumerate(reader.pages, start=1):
        text = " ".join(visible_text(page).split())
        if not text:
            continue
        if text in seen:
            first = reader.pages[seen[text] - 1]
            assert _drawing(first) == _drawing(page), (
                f"pages {seen[text]} and {number} yield the same text but draw different content")
        seen.setdefault(text, number)


@pytest.mark.skipif(not (SHARED_DOCS / "unstructured" / "reliance.pdf").is_file(), reason="../shared is absent")
def test_reliance_spread_pages_differ():
    sections = load_document(SHARED_DOCS / "unstructured" / "reliance.pdf")
    by_page = {s.page: s.text for s in sections}
    assert sorted(by_page) == [1, 2, 3]
    assert by_page[2] != by_page[3]
    assert "I would like the story of" in by_page[2] and "I would like the story of" not in by_page[3]
    assert "Reliance at a Glance" in by_page[3] and "Reliance at a Glance" not in by_page[2]
