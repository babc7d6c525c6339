"""Per-file bounds and options for parsing untrusted documents, as plain data that can cross a process boundary.

`ParseOptions` is what a parse needs besides the file: the bounds (`ParseLimits`) and the OCR / PDF choices. It
is built from `IngestSettings` (`ParseOptions.from_settings`) and turned into JSON for the worker process
(`to_json` / `from_json`) so that nothing is ever unpickled from a process that read a hostile file.

Bounds and where they are enforced:
  max_file_bytes      before reading (stat), in the parent and again in the worker
  max_expanded_bytes  ZIP containers (docx xlsx pptx odt epub): the central directory's uncompressed sizes, summed,
                      before any member is read (zipfile stops a member at its declared size, so a lying directory
                      cannot expand past it)
  max_pages           PDF pages / slides, counted before any page is read
  max_chars           characters of text after loading
  max_chunks          chunks after splitting, checked by the caller that splits (`check_chunks`) before anything
                      is embedded: embedding is the costly step (31 chunks/s measured on 2 shared CPU cores
                      with all-MiniLM-L6-v2, so the default 10,000 is ~5 min there; a GPU embeds thousands a
                      second). 10,000 chunks is ~2.5M characters, a ~1,300-page book of dense text.
  max_table_columns   cells in one table row (CSV/TSV, XLSX, HTML, DOCX, ODT tables; `check_columns`), counted
                      up to the row's last non-empty cell, as each row is read: a row of 10^6 columns is a few MB
                      of CSV that turns into 16,000 chunks (minutes of embedding) of one unreadable record
  max_seconds         wall time of one file's parse: the worker is killed at it
  memory_mb           address space of the worker process (RLIMIT_AS): a parser that needs more gets MemoryError
The time and memory bounds hold only when parsing runs in the worker (`isolate`, the default).
"""

from __future__ import annotations

import contextvars
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

OcrMode = Literal["auto", "off", "force"]
PdfBackend = Literal["pypdf", "pymupdf"]

MiB = 1 << 20


@dataclass(frozen=True)
class ParseLimits:
    max_file_bytes: int = 50 * MiB
    max_expanded_bytes: int = 256 * MiB
    max_pages: int = 5_000
    max_chars: int = 10_000_000  # ~33k chunks of 300 characters
    max_chunks: int = 10_000
    max_table_columns: int = 2_048  # Excel's limit is 16,384; a record wider than this is not text to search
    max_seconds: float = 300.0
    memory_mb: int = 3_072
    isolate: bool = True


@dataclass(frozen=True)
class ParseOptions:
    limits: ParseLimits = field(default_factory=ParseLimits)
    ocr: OcrMode = "off"  # library calls OCR only when asked; ingest passes its setting (default auto)
    ocr_threads: int = 2  # onnxruntime intra-op threads for OCR
    ocr_max_pages: int = 100  # pages (PDF pages, images) OCR'd per file; later ones are skipped and said so
    ocr_max_images: int = 50  # pictures inside one DOCX/PPTX OCR'd; later ones are skipped and said so
    pdf_backend: PdfBackend = "pypdf"

    @classmethod
    def from_settings(cls, settings) -> ParseOptions:
        """From an `IngestSettings` (fields it lacks keep their defaults)."""
        limits = ParseLimits(
            max_file_bytes=int(settings.max_file_mb * MiB),
            max_expanded_bytes=int(getattr(settings, "max_expanded_mb", 256) * MiB),
            max_pages=getattr(settings, "max_pages_per_file", ParseLimits.max_pages),
            max_chars=getattr(settings, "max_chars_per_file", ParseLimits.max_chars),
            max_chunks=getattr(settings, "max_chunks_per_file", ParseLimits.max_chunks),
            max_table_columns=getattr(settings, "max_table_columns", ParseLimits.max_table_columns),
            max_seconds=getattr(settings, "max_parse_seconds", ParseLimits.max_seconds),
            memory_mb=getattr(settings, "parse_memory_mb", ParseLimits.memory_mb),
            isolate=getattr(settings, "isolate_parsing", True),
        )
        return cls(limits=limits, ocr=getattr(settings, "ocr", "auto"),
                   ocr_threads=getattr(settings, "ocr_threads", 2),
                   ocr_max_pages=getattr(settings, "ocr_max_pages", 100),
                   ocr_max_images=getattr(settings, "ocr_max_images", 50),
                   pdf_backend=getattr(settings, "pdf_backend", "pypdf"))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ParseOptions:
        raw = json.loads(text)
        return cls(limits=ParseLimits(**raw.pop("limits")), **raw)


# The options of the parse in progress: loaders read them here instead of through every signature.
current_options: contextvars.ContextVar[ParseOptions] = contextvars.ContextVar(
    "current_options", default=ParseOptions())  # noqa: B039 - frozen, so sharing the default is safe


def check_chars(sections, name, limits: ParseLimits) -> None:
    from kb_qa.ingest.loaders.base import LoadError  # (lazy: the loaders import this module)

    total = sum(len(s.text) for s in sections)
    if total > limits.max_chars:
        raise LoadError(name, f"refused: {total:,} characters of text, over the limit of {limits.max_chars:,} "
                              f"per file (ingest.max_chars_per_file)")


def check_chunks(count: int, name, limits: ParseLimits) -> None:
    from kb_qa.ingest.loaders.base import LoadError  # (lazy: the loaders import this module)

    if count > limits.max_chunks:
        raise LoadError(name, f"refused: {count:,} chunks, over the limit of {limits.max_chunks:,} per file "
                              f"(ingest.max_chunks_per_file)")


def check_pages(count: int, name, limits: ParseLimits, unit: str = "pages") -> None:
    from kb_qa.ingest.loaders.base import LoadError  # (lazy: the loaders import this module)

    if count > limits.max_pages:
        raise LoadError(name, f"refused: {count:,} {unit}, over the limit of {limits.max_pages:,} per file "
                              f"(ingest.max_pages_per_file)")


def _empty(cell) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def filled_width(cells) -> int:
    """Columns of a row up to its last non-empty cell (trailing empty cells, as spreadsheets export, don't count)."""
    width = len(cells)
    while width and _empty(cells[width - 1]):
        width -= 1
    return width


def check_columns(cells, row: int, name, limits: ParseLimits, where: str = "") -> None:
    """Refuse the file if table row `row` (1-based) has more columns than `limits.max_table_columns`. Cheap for
    ordinary rows: only a row longer than the limit is looked at cell by cell."""
    if len(cells) <= limits.max_table_columns:
        return
    width = filled_width(cells)
    if width > limits.max_table_columns:
        raise row_too_wide(name, f"{where}row {row:,} has {width:,} columns", limits.max_table_columns)


def row_too_wide(name, row_says: str, limit: int):
    """The refusal of a table row wider than ingest.max_table_columns, e.g. `row_says` 'table 1, row 3 has 2,049
    columns' (a LoadError, for the loader to raise)."""
    from kb_qa.ingest.loaders.base import LoadError  # (lazy: the loaders import this module)

    return LoadError(name, f"refused: {row_says}, over the limit of {limit:,} per table row (ingest.max_table_columns)")
