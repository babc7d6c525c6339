"""The loader package's public surface: the registry, `load(path)`, and errors in the kb_qa family."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb_qa.errors import EXIT_ERROR, KbQaError
from kb_qa.ingest.loaders import SUPPORTED_EXTENSIONS, DecodeError, LoadError, load, load_document

DOCS = Path(__file__).parent / "fixtures" / "docs"


def test_errors_belong_to_the_kb_qa_family():
    assert issubclass(LoadError, KbQaError) and LoadError(DOCS, "x").exit_code == EXIT_ERROR
    assert issubclass(DecodeError, KbQaError) and issubclass(DecodeError, ValueError)
    with pytest.raises(KbQaError, match="empty.txt: empty document"):
        load(DOCS / "empty.txt")


def test_every_extension_has_a_loader_and_load_matches_load_document():
    assert {".txt", ".md", ".pdf", ".docx", ".pptx", ".xlsx", ".csv", ".tsv", ".json", ".jsonl", ".html",
            ".xml", ".odt", ".epub", ".eml", ".rtf"} <= SUPPORTED_EXTENSIONS
    for ext in (".txt", ".pdf", ".docx", ".rtf"):
        path = DOCS / f"sample{ext}"
        assert load(path) == load_document(path) and load(path)


def test_no_loader_module_is_over_400_lines():
    package = Path(__file__).parents[1] / "kb_qa" / "ingest" / "loaders"
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in package.glob("*.py")}
    assert len(sizes) >= 15 and max(sizes.values()) <= 400, sizes
