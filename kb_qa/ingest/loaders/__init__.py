"""Document bytes -> `Section`s of clean text, one small loader per format, all offline.

A loader either returns at least one non-empty section or raises `LoadError` saying why, in words a user can
act on: missing file, too big, unsupported type, content that does not match the extension (checked by magic
bytes), encrypted, truncated/corrupt, no text layer, empty, undecodable. It never returns silently empty and
never drops undecodable bytes.

What each format becomes (page numbers from 1; heading = the nearest heading above the text):
  .txt               one section
  .md .markdown      one section per ATX/setext heading, text kept as written (heading line included);
                     '#' lines inside fenced code are not headings
  .pdf               one section per page with text (pypdf); heading from the PDF outline when it has one
  .docx              body paragraphs and tables in order; Heading/Title styles (or outline levels) open a
                     section; table rows as 'cell | cell' lines. Headers/footers/comments are left out.
  .pptx              one section per slide: page = slide number, heading = slide title; tables, grouped
                     shapes and speaker notes included
  .xlsx              one section per sheet (heading = sheet name), cached values, rows as records
  .csv .tsv          one section; delimiter sniffed; each row a record of 'column: value' lines, records
                     separated by blank lines so the splitter keeps a row together
  .json .jsonl       keys kept, values pretty-printed as 'key: value' lines; top-level list items / lines are
                     separate records
  .html .htm .xhtml  script/style/nav/forms dropped; h1-h6 open sections; tables as 'cell | cell' lines;
                     the declared charset honoured
  .xml               'element: text' lines (XHTML goes the HTML way); entities and DTDs are never loaded
  .odt .epub .rtf .eml   text, headings where the format marks them (epub chapters go the HTML way; eml:
                     headers + the plain-text body, else the HTML body; attachments are left out)
Legacy binary Office files (.doc/.xls/.ppt) are refused with a hint to save them in the current format.

Layout: `registry.py` (extension -> loader, `load`, `load_bytes`, `load_document`), `sniff.py` (magic bytes),
`cleaning.py` (`clean_text`), `base.py` (`LoadError`, `SectionBuilder`), one module per format.

Deliberately not here: splitting (splitter.py), hashing and storing (pipeline.py).
"""

from __future__ import annotations

from kb_qa.ingest.encoding import DecodeError
from kb_qa.ingest.loaders.base import LoadError
from kb_qa.ingest.loaders.cleaning import clean_text
from kb_qa.ingest.loaders.registry import SUPPORTED_EXTENSIONS, load, load_bytes, load_document

__all__ = ["SUPPORTED_EXTENSIONS", "DecodeError", "LoadError", "clean_text", "load", "load_bytes", "load_document"]
