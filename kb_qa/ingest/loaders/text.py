"""Plain text: one section, decoded by `kb_qa.ingest.encoding`."""

from __future__ import annotations

from kb_qa.ingest.encoding import decode_text
from kb_qa.schema import Section


def load_text(data: bytes, name: str) -> list[Section]:
    return [Section(decode_text(data, name))]
