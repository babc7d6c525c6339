"""The registry: file name extension -> loader, and the entry points that check bytes, load and clean.

`load(path)` / `load_document(path)` read a file; `load_bytes(data, name)` loads bytes held in memory (an upload).
Each returns at least one non-empty `Section` or raises `LoadError` naming the file and the reason.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from kb_qa.ingest.encoding import DecodeError
from kb_qa.ingest.limits import ParseOptions, check_chars, current_options
from kb_qa.ingest.loaders.base import LABELS, LoadError, human_size, shorten
from kb_qa.ingest.loaders.cleaning import clean_text
from kb_qa.ingest.loaders.csv import load_csv
from kb_qa.ingest.loaders.docx import load_docx
from kb_qa.ingest.loaders.eml import load_eml
from kb_qa.ingest.loaders.epub import load_epub
from kb_qa.ingest.loaders.html import load_html
from kb_qa.ingest.loaders.image import load_image
from kb_qa.ingest.loaders.json import load_json, load_jsonl
from kb_qa.ingest.loaders.markdown import load_markdown
from kb_qa.ingest.loaders.odt import load_odt
from kb_qa.ingest.loaders.pdf import load_pdf
from kb_qa.ingest.loaders.pptx import load_pptx
from kb_qa.ingest.loaders.rtf import load_rtf
from kb_qa.ingest.loaders.sniff import check_content_type
from kb_qa.ingest.loaders.text import load_text
from kb_qa.ingest.loaders.xlsx import load_xlsx
from kb_qa.ingest.loaders.xml import load_xml
from kb_qa.ingest.ocr import IMAGE_EXTENSIONS
from kb_qa.schema import Section

log = logging.getLogger(__name__)

Loader = Callable[[bytes, str], list[Section]]  # (file bytes, file name) -> sections, or raises

_LOADERS: dict[str, Loader] = {
    ".txt": load_text, ".text": load_text,
    ".md": load_markdown, ".markdown": load_markdown,
    ".pdf": load_pdf,
    ".docx": load_docx,
    ".pptx": load_pptx,
    ".xlsx": load_xlsx,
    ".csv": load_csv, ".tsv": load_csv,
    ".json": load_json, ".jsonl": load_jsonl,
    ".html": load_html, ".htm": load_html, ".xhtml": load_html,
    ".xml": load_xml,
    ".odt": load_odt,
    ".epub": load_epub,
    ".eml": load_eml,
    ".rtf": load_rtf,
    **dict.fromkeys(IMAGE_EXTENSIONS, load_image),
}
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_LOADERS)


_LEGACY = {".doc": ("Word 97-2003", ".docx"), ".xls": ("Excel 97-2003", ".xlsx"),
           ".ppt": ("PowerPoint 97-2003", ".pptx"), ".wps": ("Works", ".docx")}


def _unsupported_reason(ext: str) -> str:
    if ext in _LEGACY:
        kind, modern = _LEGACY[ext]
        return f"unsupported file type {ext} ({kind} binary format): save it as {modern} and add that"
    supported = " ".join(sorted(SUPPORTED_EXTENSIONS))
    if not ext:
        return f"unsupported file type (no file name extension); supported: {supported}"
    return f"unsupported file type {ext}; supported: {supported}"



def load_document(path: Path, *, max_bytes: int | None = None,
                  options: ParseOptions | None = None) -> list[Section]:
    """Read and load one file. Raises LoadError (with `path` in it) for anything that yields no usable text.
    Only regular files are read (never a FIFO or a device, which could block or never end)."""
    path = Path(path)
    if options is not None and max_bytes is None:
        max_bytes = options.limits.max_file_bytes
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise LoadError(path, "is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise LoadError(path, f"not a regular file ({file_kind(info.st_mode)}): not read")
        size = info.st_size
        if max_bytes is not None and size > max_bytes:
            raise LoadError(path, f"file is {human_size(size)}, over the limit of {human_size(max_bytes)}")
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise LoadError(path, "file not found") from exc
    except OSError as exc:
        raise LoadError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        return load_bytes(data, path.name, options=options)
    except LoadError as exc:
        raise LoadError(path, exc.reason) from exc.__cause__


def load_bytes(data: bytes, name: str, *, options: ParseOptions | None = None) -> list[Section]:
    """Load a document held in memory (an upload); `name` is its file name, whose extension picks the format.
    `options` (bounds, OCR) default to `ParseOptions()`; in-process, time and memory are not bounded (see
    `kb_qa.ingest.worker` for that)."""
    token = current_options.set(options or current_options.get())
    try:
        return _load_bytes(data, name, current_options.get())
    finally:
        current_options.reset(token)


def _load_bytes(data: bytes, name: str, options: ParseOptions) -> list[Section]:
    ext = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    loader = _LOADERS.get(ext)
    if loader is None:
        raise LoadError(name, _unsupported_reason(ext))
    if not data.strip():
        raise LoadError(name, "empty document" + (" (0 bytes)" if not data else " (only whitespace)"))
    check_content_type(data, ext, name)
    try:
        sections = loader(data, name)
    except LoadError:
        raise
    except DecodeError as exc:
        raise LoadError(name, f"cannot decode text: {exc}") from exc
    except RecursionError as exc:
        raise LoadError(name, "document structure is nested too deeply to read") from exc
    except MemoryError as exc:
        raise LoadError(name, "refused: parsing it needs more memory than allowed "
                              f"({options.limits.memory_mb} MiB, ingest.parse_memory_mb)") from exc
    except Exception as exc:  # noqa: BLE001 - parsers raise anything on malformed input; say which file and why
        log.debug("parser error on %s", name, exc_info=True)
        raise LoadError(name, f"corrupt or truncated {LABELS.get(ext, ext)} file "
                              f"({type(exc).__name__}: {shorten(str(exc))})") from exc
    cleaned = []
    for section in sections:
        text = clean_text(section.text)
        if text:
            heading = " ".join(clean_text(section.heading or "").split()) or None
            cleaned.append(Section(text=text, page=section.page, heading=heading, ocr=section.ocr))
    if not cleaned:
        raise LoadError(name, "empty document (no text in it)")
    check_chars(cleaned, name, options.limits)
    return cleaned


def load(path: Path, options: ParseOptions | None = None) -> list[Section]:
    """Read and load one file in this process: the registry's one-call entry point."""
    return load_document(path, options=options)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"
