"""CSV/TSV: one section; the delimiter sniffed; each row a record of 'column: value' lines."""

from __future__ import annotations

import csv
import io

from kb_qa.ingest.encoding import decode_text
from kb_qa.ingest.loaders.base import LoadError
from kb_qa.ingest.loaders.records import records_text, within_width
from kb_qa.schema import Section


def load_csv(data: bytes, name: str) -> list[Section]:
    text = decode_text(data, name)
    if name.lower().endswith(".tsv"):
        delimiter = "\t"
    else:
        try:
            sample = text[:16384].rsplit("\n", 1)[0] if len(text) > 16384 else text  # whole lines, bounded
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    try:
        rows = list(within_width(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), name))
    except csv.Error as exc:
        raise LoadError(name, f"malformed CSV: {exc}") from exc
    return [Section(records_text(rows))]
