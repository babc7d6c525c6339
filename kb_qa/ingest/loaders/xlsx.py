"""XLSX: one section per sheet (heading = sheet name), cached values, rows as records."""

from __future__ import annotations

import io

from kb_qa.ingest.loaders.records import cell_str, records_text
from kb_qa.schema import Section


def load_xlsx(data: bytes, name: str) -> list[Section]:
    import openpyxl

    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sections = []
        for sheet in workbook.worksheets:
            rows = ([cell_str(v) for v in row] for row in sheet.iter_rows(values_only=True))
            text = records_text(rows)
            if text.strip():
                sections.append(Section(text, heading=sheet.title))
        return sections
    finally:
        workbook.close()
