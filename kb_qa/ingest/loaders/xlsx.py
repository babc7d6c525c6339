"""XLSX: one section per sheet (heading = sheet name), cached values, rows as records.

Rows are read as wide as their own last cell, not as the sheet's declared dimension: a sheet claiming
`A1:XFD300000` (16,384 columns) with two cells a row would otherwise be padded to 16,384 values a row. A row
wider than ingest.max_table_columns (counted to its last non-empty cell) makes the file refused."""

from __future__ import annotations

import io

from kb_qa.ingest.loaders.records import cell_str, records_text, within_width
from kb_qa.schema import Section


def load_xlsx(data: bytes, name: str) -> list[Section]:
    import openpyxl

    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sections = []
        for sheet in workbook.worksheets:
            if hasattr(sheet, "reset_dimensions"):  # read-only sheets: forget the declared (maybe lying) size
                sheet.reset_dimensions()
            rows = within_width(sheet.iter_rows(values_only=True), name, where=f"sheet {sheet.title!r}, ")
            text = records_text([cell_str(v) for v in row] for row in rows)
            if text.strip():
                sections.append(Section(text, heading=sheet.title))
        return sections
    finally:
        workbook.close()
