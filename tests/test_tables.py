"""Tables become chunks that keep rows with their header (issue 16): a long table split into several chunks
repeats its header row in each, so a question naming a column ("第三季度的营业收入是多少") finds the row together
with that column's name. Fixtures are made in tmp_path; the ../shared files are used when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb_qa.ingest.loaders import load_document
from kb_qa.ingest.loaders.pdf_tables import pipe_simple_tables
from kb_qa.ingest.splitter import split_sections
from kb_qa.schema import Section

SHARED_DOCS = Path(__file__).resolve().parents[1] / ".." / "shared" / "docs"
HEADER = ["项目", "第一季度", "第二季度", "第三季度", "第四季度"]
FILLER = [[f"费用科目{i:02d}", str(10 * i), str(20 * i), str(30 * i), str(40 * i)] for i in range(40)]
REVENUE = ["营业收入", "1,200.50", "1,350.00", "1,588.88", "1,720.00"]  # last: far from the header
ROWS = FILLER + [REVENUE]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("|")]  # cleaning folds '|  |' to '| |': split on the bar


def _chunk_with(chunks, phrase: str):
    found = [c for c in chunks if phrase in c.text]
    assert found, f"no chunk contains {phrase!r}"
    return found[0]


def _assert_row_under_header(chunks) -> None:
    assert len(chunks) > 3, "the table should be long enough to be split"
    revenue = _chunk_with(chunks, "营业收入")
    lines = revenue.text.split("\n")
    header = next(line for line in lines if "第三季度" in line)
    row = next(line for line in lines if "营业收入" in line)
    assert lines.index(header) < lines.index(row)
    # the value sits in the 第三季度 column of its row
    assert _cells(row)[_cells(header).index("第三季度")] == "1,588.88"
    assert all(len(c.text) <= 300 for c in chunks)


def test_docx_long_table_repeats_its_header(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("季度财务数据", level=1)
    document.add_paragraph("下表列出本年度各季度的主要财务数据，单位：万元。")
    table = document.add_table(rows=0, cols=len(HEADER))
    for values in [HEADER] + ROWS:
        for cell, value in zip(table.add_row().cells, values, strict=True):
            cell.text = value
    document.add_paragraph("表后的说明文字。")
    path = tmp_path / "quarters.docx"
    document.save(path)
    _assert_row_under_header(split_sections(load_document(path), path.name))


def test_html_long_table_repeats_its_header_and_keeps_empty_cells_in_place(tmp_path):
    head = "".join(f"<th>{h}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in ROWS)
    gap = "<tr><td>营业外收入</td><td></td><td></td><td>9.99</td><td></td></tr>"  # empty cells keep columns
    path = tmp_path / "quarters.html"
    path.write_text(f"<html><body><h1>季度</h1><table><tr>{head}</tr>{body}{gap}</table></body></html>",
                    encoding="utf-8")
    chunks = split_sections(load_document(path), path.name)
    _assert_row_under_header(chunks)
    other = _chunk_with(chunks, "营业外收入").text.split("\n")
    assert _cells(other[0]) == HEADER
    assert _cells(other[-1])[HEADER.index("第三季度")] == "9.99"


def test_xlsx_rows_carry_their_column_names(tmp_path):
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "季度数据"
    for values in [HEADER] + ROWS:
        sheet.append(values)
    path = tmp_path / "quarters.xlsx"
    workbook.save(path)
    chunks = split_sections(load_document(path), path.name)
    assert len(chunks) > 3
    revenue = _chunk_with(chunks, "项目: 营业收入").text
    assert "第三季度: 1,588.88" in revenue


def test_markdown_table_repeats_header_and_rule(tmp_path):
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in ROWS]
    chunks = split_sections([Section("前言。\n\n" + "\n".join(lines) + "\n\n结语。")], "t.md",
                            chunk_size=200, chunk_overlap=30)
    tables = [c for c in chunks if "|" in c.text]
    assert len(tables) > 3
    for chunk in tables:
        assert chunk.text.split("\n")[:2] == lines[:2]
    assert chunks[0].text == "前言。" and chunks[-1].text == "结语。"


def test_table_chunks_are_whole_rows_with_exact_offsets():
    text = "说明。\n" + "\n".join(" | ".join(r) for r in [HEADER] + ROWS) + "\n尾注。"
    section = Section(text)
    chunks = split_sections([section], "t.txt", chunk_size=120, chunk_overlap=20)
    header = " | ".join(HEADER)
    rows_seen = []
    for chunk in chunks:
        body = text[chunk.start:chunk.end]
        if chunk.text != body:  # a continued table chunk: the header, then its own exact span
            assert chunk.text == f"{header}\n{body}"
        assert len(chunk.text) <= 120
        rows_seen += [line for line in body.split("\n") if " | " in line]
    assert rows_seen == [" | ".join(r) for r in [HEADER] + ROWS]  # every row once, none cut


def test_a_header_too_long_to_repeat_is_not_repeated():
    header = " | ".join(f"很长的列名{i}" for i in range(12))
    text = header + "\n" + "\n".join(" | ".join(str(i * j) for j in range(12)) for i in range(30))
    chunks = split_sections([Section(text)], "t.txt", chunk_size=120, chunk_overlap=10)
    assert all(c.text == text[c.start:c.end] and len(c.text) <= 120 for c in chunks)


def test_pdf_text_tables_become_rows_only_when_unambiguous():
    table = ("单位：万元\n序号 金融机构名称 授信总额 剩余额度\n1 工商银行 330,435.30 95,585.30\n"
             "2 杭州银行 109,000.00 76,310.00")
    assert pipe_simple_tables(table).split("\n")[1:] == [
        "序号 | 金融机构名称 | 授信总额 | 剩余额度", "1 | 工商银行 | 330,435.30 | 95,585.30",
        "2 | 杭州银行 | 109,000.00 | 76,310.00"]
    prose = "The quick brown fox\njumps over the dog\nand runs far away"
    assert pipe_simple_tables(prose) == prose  # equal word counts, but no numeric column


@pytest.mark.skipif(not (SHARED_DOCS / "pymupdf_zh" / "chinese-tables.pdf").is_file(), reason="../shared absent")
def test_chinese_prospectus_table_rows_keep_their_header():
    path = SHARED_DOCS / "pymupdf_zh" / "chinese-tables.pdf"
    chunks = split_sections(load_document(path), path.name, chunk_size=150, chunk_overlap=30)
    chunk = _chunk_with(chunks, "上海银行盐城分行").text.split("\n")  # the table's last row
    assert "序号 | 金融机构名称 | 授信总额 | 已使用情况 | 剩余额度" in chunk
    assert "11 | 上海银行盐城分行 | 46,265.00 | 46,265.00 | 0.00" in chunk


@pytest.mark.skipif(not (SHARED_DOCS / "mineru" / "docx_01.docx").is_file(), reason="../shared absent")
def test_mineru_docx_tables_are_rows_under_their_header():
    path = SHARED_DOCS / "mineru" / "docx_01.docx"
    chunks = split_sections(load_document(path), path.name, chunk_size=120, chunk_overlap=20)
    rich = [c.text for c in chunks if "Column A | Column B" in c.text]
    assert len(rich) >= 2  # the long 'rich cells' table is split, each part under its header
    assert any("This is a formatted list: B First" in text for text in rich[1:] + rich[:1])
    for chunk in chunks:
        for line in chunk.text.split("\n"):
            if "This is a list: A First" in line:
                assert line.startswith("This is a list") and " | This is a formatted list" in line  # one row
