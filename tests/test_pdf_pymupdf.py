"""The opt-in PyMuPDF backend (`ingest.pdf_backend: pymupdf`, AGPL-3.0, from requirements-bench.txt).

Skipped where PyMuPDF is not installed, except the test that its absence is one clear error line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kb_qa.ingest.limits import ParseOptions
from kb_qa.ingest.loaders import LoadError, load_document
from kb_qa.ingest.splitter import split_sections

FIXTURES = Path(__file__).parent / "fixtures" / "docs"
SHARED_DOCS = Path(__file__).resolve().parents[1] / ".." / "shared" / "docs"
PYMUPDF = ParseOptions(pdf_backend="pymupdf")


def test_missing_pymupdf_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymupdf", None)  # import fails as if not installed
    with pytest.raises(LoadError) as info:
        load_document(FIXTURES / "sample.pdf", options=PYMUPDF)
    assert "pymupdf needs PyMuPDF (AGPL-3.0)" in str(info.value) and "sample.pdf" in str(info.value)


def test_pages_match_the_pypdf_backend():
    pytest.importorskip("pymupdf")
    by_pypdf = load_document(FIXTURES / "sample.pdf")
    by_pymupdf = load_document(FIXTURES / "sample.pdf", options=PYMUPDF)
    assert [s.page for s in by_pymupdf] == [s.page for s in by_pypdf]
    for a, b in zip(by_pypdf, by_pymupdf, strict=True):
        assert "".join(a.text.split()) == "".join(b.text.split())


def test_spread_pages_keep_only_their_half(tmp_path):
    pytest.importorskip("pymupdf")
    from test_pdf_pages import _spread_pdf

    sections = load_document(_spread_pdf(tmp_path / "spread.pdf"), options=PYMUPDF)
    assert [s.page for s in sections] == [1, 2]
    assert "Left half" in sections[0].text and "Right half" not in sections[0].text
    assert "Right half" in sections[1].text and "Left half" not in sections[1].text


def test_encrypted_pdf_is_refused_with_the_reason():
    pytest.importorskip("pymupdf")
    with pytest.raises(LoadError, match="encrypted PDF: a password is needed"):
        load_document(FIXTURES / "encrypted.pdf", options=PYMUPDF)


@pytest.mark.skipif(not (SHARED_DOCS / "pymupdf_zh" / "chinese-tables.pdf").is_file(), reason="../shared absent")
def test_ruled_tables_become_rows_with_wrapped_cells_joined():
    pytest.importorskip("pymupdf")
    path = SHARED_DOCS / "pymupdf_zh" / "chinese-tables.pdf"
    sections = load_document(path, options=PYMUPDF)
    lines = sections[0].text.split("\n")
    assert "年份 | 主体信用评级 | 涵义 | 评级机构 | 评级展望" in lines  # '主体信用\n评级' is one cell
    assert any(line.startswith("2023 | AA+ | ") and "中诚信国际信用评级有限责任公司" in line for line in lines)
    chunks = split_sections(sections, path.name, chunk_size=150, chunk_overlap=30)
    last = next(c for c in chunks if "上海银行盐城分行" in c.text).text.split("\n")
    assert "序号 | 金融机构名称 | 授信总额 | 已使用情况 | 剩余额度" in last
