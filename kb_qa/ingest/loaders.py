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

Deliberately not here: OCR, splitting (splitter.py), hashing and storing (pipeline.py).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import unicodedata
import zipfile
from collections.abc import Callable, Iterable
from datetime import date, datetime, time
from pathlib import Path, PurePosixPath

from kb_qa.ingest.encoding import DecodeError, decode_text, normalize_encoding
from kb_qa.schema import Section

log = logging.getLogger(__name__)

__all__ = ["SUPPORTED_EXTENSIONS", "LoadError", "clean_text", "load_bytes", "load_document"]


class LoadError(Exception):
    """A document that cannot be turned into text; `str(e)` reads '<path>: <reason>'."""

    def __init__(self, path, reason: str):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# ---------------------------------------------------------------------------------------------------------------
# Entry points

def load_document(path: Path, *, max_bytes: int | None = None) -> list[Section]:
    """Read and load one file. Raises LoadError (with `path` in it) for anything that yields no usable text."""
    path = Path(path)
    try:
        if path.is_dir():
            raise LoadError(path, "is a folder, not a file")
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise LoadError(path, f"file is {_human(size)}, over the limit of {_human(max_bytes)}")
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise LoadError(path, "file not found") from exc
    except OSError as exc:
        raise LoadError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        return load_bytes(data, path.name)
    except LoadError as exc:
        raise LoadError(path, exc.reason) from exc.__cause__


def load_bytes(data: bytes, name: str) -> list[Section]:
    """Load a document held in memory (an upload); `name` is its file name, whose extension picks the format."""
    ext = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    loader = _LOADERS.get(ext)
    if loader is None:
        raise LoadError(name, _unsupported_reason(ext))
    if not data.strip():
        raise LoadError(name, "empty document" + (" (0 bytes)" if not data else " (only whitespace)"))
    _check_content_type(data, ext, name)
    try:
        sections = loader(data, name)
    except LoadError:
        raise
    except DecodeError as exc:
        raise LoadError(name, f"cannot decode text: {exc}") from exc
    except RecursionError as exc:
        raise LoadError(name, "document structure is nested too deeply to read") from exc
    except Exception as exc:  # noqa: BLE001 - parsers raise anything on malformed input; say which file and why
        log.debug("parser error on %s", name, exc_info=True)
        raise LoadError(name, f"corrupt or truncated {_LABELS.get(ext, ext)} file "
                              f"({type(exc).__name__}: {_short(str(exc))})") from exc
    cleaned = []
    for section in sections:
        text = clean_text(section.text)
        if text:
            heading = " ".join(clean_text(section.heading or "").split()) or None
            cleaned.append(Section(text=text, page=section.page, heading=heading))
    if not cleaned:
        raise LoadError(name, "empty document (no text in it)")
    return cleaned


# ---------------------------------------------------------------------------------------------------------------
# Text cleaning

_DROP_CHARS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff\ufffe\uffff]")
_HSPACE = "[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
_INNER_SPACES = re.compile(rf"(?<=\S){_HSPACE}{{2,}}(?=\S)|(?<=\S)[\u00a0\u2000-\u200a\u202f\u205f](?=\S)")
# (?<!...) makes each pattern start only where a run of spaces starts: linear time on long runs of blanks
_TRAILING_SPACES = re.compile(rf"(?<!{_HSPACE}){_HSPACE}+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")
# PDF artefacts that NFKC maps to ordinary text: ligatures (ﬁ), Kangxi radicals standing in for the ideographs
# they look like (⽤ -> 用), CJK compatibility ideographs.
_COMPAT = re.compile("[\ufb00-\ufb06\u2f00-\u2fd5\u2e80-\u2ef3\uf900-\ufaff]")


def clean_text(text: str) -> str:
    """Normalise newlines, drop NUL/control/zero-width characters, fold PDF ligatures and radicals, collapse
    runs of spaces inside lines and of blank lines; keep indentation and all punctuation (Chinese included)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n").replace("\v", "\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n\n")
    text = _DROP_CHARS.sub("", text)
    text = _COMPAT.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    text = _INNER_SPACES.sub(lambda m: "\t" if "\t" in m.group() else " ", text)
    text = _TRAILING_SPACES.sub("", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


# ---------------------------------------------------------------------------------------------------------------
# Content-type checks (magic bytes)

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_SIGNATURES = (
    (b"%PDF-", "a PDF"),
    (b"PK\x03\x04", "a ZIP archive (e.g. DOCX/XLSX/PPTX)"),
    (_OLE2, "a legacy Office (OLE2) file"),
    (b"\x7fELF", "an ELF executable"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "gzip data"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"\x00\x00\x01\x00", "an icon"),
)
_ZIP_FORMATS = {".docx": "word/document.xml", ".pptx": "ppt/presentation.xml", ".xlsx": "xl/workbook.xml",
                ".odt": "content.xml", ".epub": "META-INF/container.xml"}
_MAX_UNZIPPED = 1 << 30  # 1 GiB: a package that expands beyond this (and 100x its size) is a zip bomb


def _sniff(data: bytes) -> str | None:
    """What binary format the bytes are, by signature; None for anything else (text, RTF, unknown)."""
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            return kind
    if data.startswith(b"MZ") and b"\x00" in data[:512]:
        return "a Windows executable"
    return None


def _check_content_type(data: bytes, ext: str, name: str) -> None:
    kind = _sniff(data)
    label = _LABELS.get(ext, ext)
    if ext == ".pdf":
        if b"%PDF-" not in data[:1024]:
            raise LoadError(name, f"not a PDF: the content does not match the .pdf extension "
                                  f"(it looks like {kind or 'something else'})")
    elif ext in _ZIP_FORMATS:
        if data.startswith(_OLE2):
            if "EncryptedPackage".encode("utf-16-le") in data:
                raise LoadError(name, f"encrypted {label}: a password is needed")
            raise LoadError(name, f"not a {label} file: it is a legacy binary Office file renamed {ext} "
                                  f"(open it in Office and save it as {ext})")
        if not data.startswith(b"PK\x03\x04"):
            raise LoadError(name, f"not a {label} file: the content does not match the {ext} extension "
                                  f"(it looks like {kind or 'something else'})")
        _check_zip(data, ext, name)
    elif ext == ".rtf":
        if not data.lstrip().startswith(b"{\\rtf"):
            raise LoadError(name, f"not an RTF document: the content does not match the .rtf extension"
                                  f"{f' (it looks like {kind})' if kind else ''}")
    elif kind is not None:  # text formats
        raise LoadError(name, f"the content does not match the {ext} extension: it looks like {kind}")


def _check_zip(data: bytes, ext: str, name: str) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            names = {i.filename for i in infos}
    except Exception as exc:  # noqa: BLE001 - BadZipFile, EOFError, NotImplementedError (bad version field)...
        raise LoadError(name, f"corrupt or truncated {_LABELS[ext]} file ({_short(str(exc))})") from exc
    if _ZIP_FORMATS[ext] not in names:
        raise LoadError(name, f"not a {_LABELS[ext]} file: the ZIP archive has no {_ZIP_FORMATS[ext]}")
    unpacked = sum(i.file_size for i in infos)
    if unpacked > _MAX_UNZIPPED and unpacked > 100 * len(data):
        raise LoadError(name, f"refused: the {_LABELS[ext]} package would expand to {_human(unpacked)}")


# ---------------------------------------------------------------------------------------------------------------
# Plain text and Markdown

def _load_text(data: bytes, name: str) -> list[Section]:
    return [Section(decode_text(data, name))]


_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r" {0,3}#{1,6}(?:[ \t]|$)")
_ATX_CLOSING = re.compile(r"(?:^|(?<![ \t])[ \t]+)#+[ \t]*$")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*$")


def _load_markdown(data: bytes, name: str) -> list[Section]:
    return _markdown_sections(decode_text(data, name))


def _markdown_sections(text: str) -> list[Section]:
    lines = text.split("\n")
    sections: list[Section] = []
    heading: str | None = None
    buf: list[str] = []
    fence: str | None = None
    front_matter = bool(lines) and lines[0].strip() == "---"

    heading_lines = 0  # leading lines of buf that are headings with nothing under them yet

    def flush(new_heading: str | None, keep: list[str]) -> None:
        nonlocal heading, buf, heading_lines
        if any(line.strip() for line in buf[heading_lines:]):
            sections.append(Section("\n".join(buf), heading=heading))
            buf, heading_lines = [], 0
        if new_heading is None and not keep:  # end of text: keep a trailing bare heading as text
            if any(line.strip() for line in buf):
                sections.append(Section("\n".join(buf), heading=heading))
            return
        heading = new_heading
        buf = buf + keep
        heading_lines = len(buf)

    for i, line in enumerate(lines):
        if front_matter:  # YAML front matter: text, never headings
            buf.append(line)
            if i > 0 and line.strip() in ("---", "..."):
                front_matter = False
            continue
        fence_match = _FENCE.match(line)
        if fence is not None:
            if fence_match and fence_match.group(1)[0] == fence[0] and len(fence_match.group(1)) >= len(fence) \
                    and not line.strip().strip(fence[0]):
                fence = None
            buf.append(line)
            continue
        if fence_match:
            fence = fence_match.group(1)
            buf.append(line)
            continue
        if _ATX.match(line):
            title = _ATX_CLOSING.sub("", line.strip().lstrip("#")).strip()
            flush(title or None, [line])
            continue
        if _SETEXT.match(line) and buf and buf[-1].strip() and not _is_block_start(buf[-1]) \
                and (len(buf) == 1 or not buf[-2].strip()):
            title = buf.pop()
            flush(title.strip(), [title, line])
            continue
        buf.append(line)
    flush(None, [])
    return sections


def _is_block_start(line: str) -> bool:
    """A line that cannot be a setext heading's text (list item, quote, table row, fence)."""
    return bool(re.match(r" {0,3}(?:[-*+>|]|\d+[.)]\s|#|`{3}|~{3})", line)) or "|" in line


# ---------------------------------------------------------------------------------------------------------------
# PDF

def _load_pdf(data: bytes, name: str) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                decrypted = reader.decrypt("")  # owner-password-only PDFs open with an empty user password
            except DependencyError as exc:
                raise LoadError(name, "encrypted PDF: opening it needs the 'cryptography' package") from exc
            if not decrypted:
                raise LoadError(name, "encrypted PDF: a password is needed")
        pages = list(reader.pages)
    except LoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types on damaged files
        raise LoadError(name, f"corrupt or truncated PDF ({type(exc).__name__}: {_short(str(exc))})") from exc
    if not pages:
        raise LoadError(name, "empty document (the PDF has no pages)")
    headings = _pdf_outline_headings(reader)
    sections: list[Section] = []
    unreadable = 0
    current_heading: str | None = None
    for number, page in enumerate(pages, start=1):
        first_on_page, last_on_page = headings.get(number, (None, None))
        heading = first_on_page or current_heading
        current_heading = last_on_page or current_heading
        try:
            text = page.extract_text() or ""
        except Exception:  # noqa: BLE001 - one bad page must not lose the rest
            log.warning("%s: page %d could not be read", name, number, exc_info=True)
            unreadable += 1
            continue
        text = _join_word_per_line(text)
        if text.strip():
            sections.append(Section(text, page=number, heading=heading))
    if not sections:
        if unreadable == len(pages):
            raise LoadError(name, "corrupt PDF: no page could be read")
        raise LoadError(name, "no text layer (scanned?): OCR is not configured")
    return sections


def _pdf_outline_headings(reader) -> dict[int, tuple[str, str]]:
    """page number -> (first, last) outline title on that page; {} if the PDF has no usable outline."""
    out: dict[int, tuple[str, str]] = {}

    def walk(items) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
                continue
            try:
                number = reader.get_destination_page_number(item) + 1
                title = str(item.title).strip()
            except Exception:  # noqa: BLE001 - broken outlines are common and harmless
                continue
            if number >= 1 and title:
                first, _ = out.get(number, (title, title))
                out[number] = (first, title)

    try:
        walk(reader.outline)
    except Exception:  # noqa: BLE001
        return {}
    return out


def _join_word_per_line(text: str) -> str:
    """Some PDFs put every word in its own text object and pypdf returns one word per line; join those back."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) < 20:
        return text
    single = sum(1 for ln in lines if " " not in ln.strip() and len(ln.strip()) <= 25)
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    if single < 0.8 * len(lines) or latin < 0.5 * len(text.replace("\n", "").replace(" ", "")):
        return text
    return " ".join(ln.strip() for ln in lines)


# ---------------------------------------------------------------------------------------------------------------
# DOCX

def _load_docx(data: bytes, name: str) -> list[Section]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(io.BytesIO(data))
    builder = _SectionBuilder()
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            text = block.text
            if _docx_heading_level(block) is not None and text.strip():
                builder.heading(text.strip())
            else:
                builder.line(text)
        elif isinstance(block, Table):
            builder.block(_docx_table_lines(block))
    return builder.sections()


_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*(\d)$|^(?:title|标题)$", re.IGNORECASE)


def _docx_heading_level(paragraph) -> int | None:
    """Heading level from the paragraph's style (or its base styles) or an explicit outline level."""
    from docx.oxml.ns import qn

    def outline_level(element) -> int | None:
        ppr = element.find(qn("w:pPr")) if element is not None else None
        lvl = ppr.find(qn("w:outlineLvl")) if ppr is not None else None
        if lvl is None:
            return None
        value = int(lvl.get(qn("w:val"), "9"))
        return value + 1 if value < 9 else None  # 9 = body text

    direct = outline_level(paragraph._p)
    if direct is not None:
        return direct
    style, depth = paragraph.style, 0
    while style is not None and depth < 10:
        match = _HEADING_STYLE.match((style.name or "").strip())
        if match:
            return int(match.group(1)) if match.group(1) else 0
        level = outline_level(style.element)
        if level is not None:
            return level
        style, depth = style.base_style, depth + 1
    return None


def _docx_table_lines(table) -> list[str]:
    lines = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell is returned once per grid column it spans
                continue
            seen.add(id(cell._tc))
            parts = [p.text.strip() for p in cell.paragraphs if p.text.strip()]
            for inner in cell.tables:
                parts.append("; ".join(_docx_table_lines(inner)))
            cells.append(" ".join(parts))
        if any(cells):
            lines.append(" | ".join(cells))
    return lines


# ---------------------------------------------------------------------------------------------------------------
# PPTX

def _load_pptx(data: bytes, name: str) -> list[Section]:
    from pptx import Presentation

    presentation = Presentation(io.BytesIO(data))
    sections = []
    for number, slide in enumerate(presentation.slides, start=1):
        title_shape = slide.shapes.title
        title = title_shape.text_frame.text.strip() if title_shape is not None and title_shape.has_text_frame \
            else ""
        lines = [title] if title else []
        for shape in _pptx_shapes(slide.shapes):
            if shape is title_shape or (title_shape is not None and shape.shape_id == title_shape.shape_id):
                continue
            lines.extend(_pptx_shape_lines(shape))
        if slide.has_notes_slide:
            notes_frame = slide.notes_slide.notes_text_frame
            notes = notes_frame.text.strip() if notes_frame is not None else ""
            if notes:
                lines += ["", "Notes: " + notes]
        text = "\n".join(lines)
        if text.strip():
            sections.append(Section(text, page=number, heading=title.replace("\n", " ") or None))
    return sections


def _pptx_shapes(shapes) -> Iterable:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        try:
            is_group = shape.shape_type == MSO_SHAPE_TYPE.GROUP
        except NotImplementedError:  # shape kinds python-pptx does not model
            is_group = False
        if is_group:
            yield from _pptx_shapes(shape.shapes)
        else:
            yield shape


def _pptx_shape_lines(shape) -> list[str]:
    lines: list[str] = []
    if shape.has_text_frame:
        lines.extend(p.text for p in shape.text_frame.paragraphs)
    if getattr(shape, "has_table", False) and shape.has_table:
        for row in shape.table.rows:
            cells = [cell.text.replace("\n", " ").strip() for cell in row.cells]
            if any(cells):
                lines.append(" | ".join(cells))
    return [ln for ln in lines if ln.strip()]


# ---------------------------------------------------------------------------------------------------------------
# Spreadsheets and delimited text

def _load_xlsx(data: bytes, name: str) -> list[Section]:
    import openpyxl

    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        sections = []
        for sheet in workbook.worksheets:
            rows = ([_cell_str(v) for v in row] for row in sheet.iter_rows(values_only=True))
            text = _records_text(rows)
            if text.strip():
                sections.append(Section(text, heading=sheet.title))
        return sections
    finally:
        workbook.close()


def _cell_str(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time(0) else value.isoformat(sep=" ")
    if isinstance(value, (date, time)):
        return value.isoformat()
    return str(value)


def _records_text(rows: Iterable[list[str]]) -> str:
    """Rows -> records of 'column: value' lines separated by blank lines. The header is the first row (of the
    first five) with at least two cells filled and at least half as many as the widest of them; rows above it
    (titles) are kept as plain lines. One-column tables become plain lines."""
    rows = [[c.strip() for c in row] for row in rows]
    rows = [row for row in rows if any(row)]
    if not rows:
        return ""
    head = rows[:5]
    widest = max(sum(1 for c in row if c) for row in head)
    if widest < 2:
        return "\n".join(" ".join(c for c in row if c) for row in rows)
    h = next(i for i, row in enumerate(head) if sum(1 for c in row if c) >= max(2, widest / 2))
    header = [c or f"column {j + 1}" for j, c in enumerate(rows[h])]
    blocks = [" ".join(c for c in row if c) for row in rows[:h]]
    for row in rows[h + 1:]:
        lines = []
        for j, value in enumerate(row):
            if value:
                column = header[j] if j < len(header) else f"column {j + 1}"
                lines.append(f"{column}: {value}")
        blocks.append("\n".join(lines))
    if len(rows) == h + 1:  # a header and nothing else
        blocks.append(" | ".join(rows[h]))
    return "\n\n".join(b for b in blocks if b)


def _load_csv(data: bytes, name: str) -> list[Section]:
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
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise LoadError(name, f"malformed CSV: {exc}") from exc
    return [Section(_records_text(rows))]


# ---------------------------------------------------------------------------------------------------------------
# JSON

def _load_json(data: bytes, name: str) -> list[Section]:
    text = decode_text(data, name)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(name, f"invalid JSON: {exc}") from exc
    items = value if isinstance(value, list) else [value]
    return [Section("\n\n".join(_json_text(item) for item in items))]


def _load_jsonl(data: bytes, name: str) -> list[Section]:
    text = decode_text(data, name)
    blocks = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            blocks.append(_json_text(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise LoadError(name, f"invalid JSON on line {number}: {exc}") from exc
    return [Section("\n\n".join(blocks))]


def _json_text(value, indent: str = "") -> str:
    """Nested JSON as indented 'key: value' lines; list items as '- value'."""
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{indent}{key}:")
                lines.append(_json_text(item, indent + "  "))
            else:
                lines.append(f"{indent}{key}: {_json_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                inner = _json_text(item, indent + "  ")
                lines.append(f"{indent}- {inner.lstrip()}")
            else:
                lines.append(f"{indent}- {_json_scalar(item)}")
        return "\n".join(lines)
    return indent + _json_scalar(value)


def _json_scalar(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(value)


# ---------------------------------------------------------------------------------------------------------------
# HTML (also used by EPUB, EML and XHTML)

_HTML_DROP = {"script", "style", "nav", "noscript", "template", "svg", "canvas", "iframe", "object", "embed",
              "button", "select", "option", "input", "textarea", "head", "math"}
_HTML_BLOCK = {"p", "div", "section", "article", "main", "aside", "header", "footer", "blockquote", "ul", "ol",
               "dl", "dt", "dd", "figure", "figcaption", "address", "details", "summary", "caption", "form",
               "fieldset", "legend", "hr", "center", "body", "html"}
_HTML_PARAGRAPH = {"p", "blockquote", "ul", "ol", "dl", "figure", "section", "article", "pre", "table", "hr"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


def _load_html(data: bytes, name: str) -> list[Section]:
    return _html_sections(decode_text(data, name))


def _html_sections(markup: str) -> list[Section]:
    import warnings

    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, XMLParsedAsHTMLWarning

    with warnings.catch_warnings():  # XHTML read as HTML, and short fragments, are what we mean to parse
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(markup, "lxml")
    title = soup.title.get_text(" ", strip=True) if soup.title is not None else ""
    walker = _HtmlText(title or None)
    walker.walk(soup.body if soup.body is not None else soup)
    return walker.finish()


class _SectionBuilder:
    """Collects lines into sections. A heading closes the current section and opens the next one; a heading
    with nothing under it (e.g. a chapter title right before a section title) stays as text of the next."""

    def __init__(self, heading: str | None = None, page: int | None = None):
        self._sections: list[Section] = []
        self._heading = heading
        self._page = page
        self._lines: list[str] = []
        self._content = False  # anything but heading lines in _lines

    def heading(self, text: str) -> None:
        if self._content:
            self._close()
        self._heading = text
        self._lines.append(text)

    def line(self, text: str) -> None:
        self._lines.append(text)
        self._content = self._content or bool(text.strip())

    def block(self, lines: list[str]) -> None:
        if lines:
            self._lines += ["", *lines, ""]
            self._content = True

    def _close(self) -> None:
        body = "\n".join(self._lines)
        if body.strip():
            self._sections.append(Section(body, page=self._page, heading=self._heading))
        self._lines, self._content = [], False

    def sections(self) -> list[Section]:
        self._close()
        return self._sections


class _HtmlText:
    """Walks a parsed page: block elements end lines, inline ones join; headings open sections."""

    def __init__(self, heading: str | None):
        from bs4 import Comment, Doctype, NavigableString, ProcessingInstruction, Tag

        self._text_types, self._skip_types, self._tag_type = NavigableString, (Comment, Doctype,
                                                                                ProcessingInstruction), Tag
        self.builder = _SectionBuilder(heading)
        self.inline: list[str] = []

    def flush(self, paragraph: bool = False) -> None:
        text = re.sub(r"[ \t\r\n\f]+", " ", "".join(self.inline)).strip()
        self.inline = []
        if text:
            self.builder.line(text)
        if paragraph:
            self.builder.line("")

    def walk(self, node) -> None:
        for child in node.children:
            if isinstance(child, self._text_types):
                if not isinstance(child, self._skip_types):
                    self.inline.append(str(child))
                continue
            if not isinstance(child, self._tag_type):
                continue
            tag = (child.name or "").lower()
            if tag in _HTML_DROP or _hidden(child):
                continue
            if tag in _HEADINGS:
                self.flush()
                text = re.sub(r"\s+", " ", child.get_text(" ", strip=True))
                if text:
                    self.builder.heading(text)
            elif tag == "br":
                self.flush()
            elif tag == "table":
                self.flush()
                self.builder.block(_html_table_lines(child))
            elif tag == "pre":
                self.flush()
                self.builder.block(child.get_text().strip("\n").split("\n"))
            elif tag == "li":
                self.flush()
                self.inline.append("- ")
                self.walk(child)
                self.flush()
            elif tag in _HTML_BLOCK or tag in _HTML_PARAGRAPH or tag == "tr":
                self.flush()
                self.walk(child)
                self.flush(paragraph=tag in _HTML_PARAGRAPH)
            else:
                self.walk(child)

    def finish(self) -> list[Section]:
        self.flush()
        return self.builder.sections()


def _hidden(tag) -> bool:
    attrs = tag.attrs or {}
    style = str(attrs.get("style", "")).replace(" ", "").lower()
    return "hidden" in attrs or attrs.get("aria-hidden") == "true" or "display:none" in style


def _html_table_lines(table) -> list[str]:
    lines = []
    for tr in table.find_all("tr"):
        if tr.find_parent("table") is not table:
            continue  # a nested table's row: its text is already in the enclosing cell
        cells = [re.sub(r"\s+", " ", td.get_text(" ", strip=True)) for td in tr.find_all(["td", "th"], recursive=False)]
        cells = [c for c in cells if c]
        if cells:
            lines.append(" | ".join(cells))
    return lines


# ---------------------------------------------------------------------------------------------------------------
# XML

def _safe_xml_parser():
    from lxml import etree

    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                           remove_comments=True, remove_pis=True)


def _load_xml(data: bytes, name: str) -> list[Section]:
    from lxml import etree

    text = decode_text(data, name)
    parser = _safe_xml_parser()
    try:
        root = etree.fromstring(_strip_xml_declaration(text).encode("utf-8"), parser=parser)
    except etree.XMLSyntaxError as exc:
        raise LoadError(name, f"malformed XML: {exc}") from exc
    if root is None:
        raise LoadError(name, "empty document (no XML elements)")
    if etree.QName(root).localname.lower() == "html":
        return _html_sections(text)
    lines: list[str] = []
    _xml_lines(root, lines)
    return [Section("\n".join(lines))]


def _strip_xml_declaration(text: str) -> str:
    return re.sub(r"^\s*<\?xml[^>]*\?>", "", text, count=1)


_LOOKS_HTML = re.compile(r"<[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>|</[a-zA-Z][a-zA-Z0-9]*>")


def _xml_lines(element, lines: list[str]) -> None:
    """Leaf elements as 'name: text'; mixed content (text with inline elements) as one line of its text;
    containers recurse."""
    from lxml import etree

    if not isinstance(element.tag, str):  # comments, PIs, entities
        return
    name = etree.QName(element).localname
    children = [c for c in element if isinstance(c.tag, str)]
    own = (element.text or "").strip()
    mixed = bool(children) and (own or any((c.tail or "").strip() for c in children))
    if not children or mixed:
        text = " ".join("".join(element.itertext()).split()) if mixed else own
        if _LOOKS_HTML.search(text):  # escaped HTML inside a feed's <description>
            text = "\n".join(s.text for s in _html_sections(text))
        if text:
            lines.append(f"{name}: {text}")
        return
    for child in children:
        _xml_lines(child, lines)


# ---------------------------------------------------------------------------------------------------------------
# ODT

_ODF = {
    "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
    "table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
    "office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
    "draw": "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0",
}


def _odf(tag: str) -> str:
    prefix, local = tag.split(":")
    return f"{{{_ODF[prefix]}}}{local}"


def _load_odt(data: bytes, name: str) -> list[Section]:
    from lxml import etree

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        mimetype = archive.read("mimetype").decode("ascii", "replace").strip() if "mimetype" in \
            archive.namelist() else ""
        if mimetype and mimetype != "application/vnd.oasis.opendocument.text":
            raise LoadError(name, f"not an ODF text document (its type is {mimetype})")
        if "META-INF/encryption.xml" in archive.namelist() or _odf_encrypted(archive):
            raise LoadError(name, "encrypted ODT: a password is needed")
        content = archive.read("content.xml")
    root = etree.fromstring(content, parser=_safe_xml_parser())
    body = root.find(f"{_odf('office:body')}/{_odf('office:text')}")
    builder = _SectionBuilder()
    if body is not None:
        _odt_walk(body, builder)
    return builder.sections()


def _odf_encrypted(archive: zipfile.ZipFile) -> bool:
    try:
        manifest = archive.read("META-INF/manifest.xml")
    except KeyError:
        return False
    return b"encryption-data" in manifest


def _odt_walk(parent, builder: _SectionBuilder) -> None:
    for child in parent:
        tag = child.tag
        if tag == _odf("text:h"):
            text = _odt_inline(child).strip()
            if text:
                builder.heading(text)
        elif tag == _odf("text:p"):
            builder.line(_odt_inline(child))
        elif tag == _odf("text:list"):
            for item in child.iter(_odf("text:list-item")):
                texts = [_odt_inline(p).strip() for p in item if p.tag in (_odf("text:p"), _odf("text:h"))]
                texts = [t for t in texts if t]
                if texts:
                    builder.line("- " + " ".join(texts))
        elif tag == _odf("table:table"):
            lines = []
            for row in child.iter(_odf("table:table-row")):
                cells = [" ".join(_odt_inline(p).strip() for p in cell.iter(_odf("text:p"), _odf("text:h")))
                         for cell in row if cell.tag == _odf("table:table-cell")]
                cells = [c.strip() for c in cells if c.strip()]
                if cells:
                    lines.append(" | ".join(cells))
            builder.block(lines)
        elif tag in (_odf("text:section"), _odf("text:index-body"), _odf("text:table-of-content")):
            _odt_walk(child, builder)


def _odt_inline(element) -> str:
    parts = [element.text or ""]
    for child in element:
        tag = child.tag
        if tag == _odf("text:s"):
            parts.append(" " * min(int(child.get(_odf("text:c"), "1")), 64))  # collapsed later anyway
        elif tag == _odf("text:tab"):
            parts.append("\t")
        elif tag == _odf("text:line-break"):
            parts.append("\n")
        elif tag in (_odf("text:note"), _odf("office:annotation"), _odf("text:tracked-changes")):
            pass
        else:
            parts.append(_odt_inline(child))
        parts.append(child.tail or "")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# EPUB

def _load_epub(data: bytes, name: str) -> list[Section]:
    from lxml import etree

    parser = _safe_xml_parser()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        container = etree.fromstring(archive.read("META-INF/container.xml"), parser=parser)
        rootfile = container.find(".//{*}rootfile")
        if rootfile is None or not rootfile.get("full-path"):
            raise LoadError(name, "corrupt EPUB: META-INF/container.xml names no package document")
        opf_path = PurePosixPath(rootfile.get("full-path"))
        opf = etree.fromstring(archive.read(str(opf_path)), parser=parser)
        manifest = {item.get("id"): item for item in opf.iter("{*}item")}
        encrypted = set()
        if "META-INF/encryption.xml" in archive.namelist():
            enc = etree.fromstring(archive.read("META-INF/encryption.xml"), parser=parser)
            encrypted = {ref.get("URI") for ref in enc.iter("{*}CipherReference")}
        sections: list[Section] = []
        for itemref in opf.iter("{*}itemref"):
            item = manifest.get(itemref.get("idref"))
            if item is None or "html" not in (item.get("media-type") or ""):
                continue
            href = _join_zip_path(opf_path.parent, item.get("href", ""))
            if href in encrypted:
                raise LoadError(name, "encrypted EPUB (DRM): its chapters cannot be read")
            try:
                chapter = archive.read(href)
            except KeyError:
                log.warning("%s: chapter %s listed but missing", name, href)
                continue
            sections.extend(_html_sections(decode_text(chapter, href)))
    return sections


def _join_zip_path(base: PurePosixPath, href: str) -> str:
    from urllib.parse import unquote

    parts: list[str] = []
    for part in (base / unquote(href.split("#")[0])).parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return "/".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# EML

def _load_eml(data: bytes, name: str) -> list[Section]:
    import email
    from email import policy

    message = email.message_from_bytes(data, policy=policy.default)
    headers = _eml_headers(data, name)
    subject = headers.get("Subject", "")
    header_lines = [f"{h}: {value}" for h, value in headers.items() if value]
    body_part = message.get_body(preferencelist=("plain", "html"))
    if body_part is None and not message.is_multipart() and message.get_content_maintype() == "text":
        body_part = message
    body = ""
    if body_part is not None:
        payload = body_part.get_payload(decode=True) or b""
        body = _decode_declared(payload, body_part.get_content_charset(), name)
        if body_part.get_content_subtype() == "html":
            body = "\n\n".join(s.text for s in _html_sections(body))
    if not header_lines and not body.strip():
        raise LoadError(name, "not an e-mail message (no headers, no text body)")
    return [Section("\n".join(header_lines) + "\n\n" + body, heading=subject or None)]


def _eml_headers(data: bytes, name: str) -> dict[str, str]:
    """Subject/From/To/Cc/Date as text: RFC 2047 encoded words decoded with their charset, raw 8-bit header
    bytes (e.g. GBK straight in the header, common from older Chinese mail clients) detected like a text file.
    (The modern email policy turns such bytes into U+FFFD, so headers are read with the compat32 parser.)"""
    from email import policy
    from email.header import decode_header
    from email.parser import BytesHeaderParser

    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(data)
    raw_items = {key.lower(): value for key, value in reversed(list(parsed.raw_items()))}  # first one wins
    out: dict[str, str] = {}
    for header in ("Subject", "From", "To", "Cc", "Date"):
        raw = raw_items.get(header.lower())
        if raw is None:
            continue
        raw = str(raw)
        if any("\udc80" <= ch <= "\udcff" for ch in raw):  # undecoded 8-bit bytes (surrogate escapes)
            text = decode_text(raw.encode("ascii", "surrogateescape"), name)
        else:
            parts = []
            for chunk, charset in decode_header(raw):
                if isinstance(chunk, str):
                    parts.append(chunk)
                else:
                    parts.append(_decode_declared(chunk, charset, name))
            text = "".join(parts)
        out[header] = " ".join(text.split())
    return out


def _decode_declared(payload: bytes, charset: str | None, name: str) -> str:
    encoding = normalize_encoding(charset) if charset else None
    if encoding is not None:
        try:
            return payload.decode(encoding).replace("\r\n", "\n")
        except UnicodeDecodeError:
            pass  # a wrong declaration: detect instead
    return decode_text(payload, name)


# ---------------------------------------------------------------------------------------------------------------
# RTF

def _load_rtf(data: bytes, name: str) -> list[Section]:
    return _RtfReader(data).sections()


_RTF_TOKEN = re.compile(rb"\\([a-zA-Z]{1,32})(-?\d{1,10})? ?|\\'([0-9a-fA-F]{2})|\\(.)|([{}])|([^\\{}\r\n]+)|[\r\n]+",
                        re.DOTALL)
_RTF_SKIP = {
    "fonttbl", "colortbl", "stylesheet", "info", "pict", "object", "header", "headerl", "headerr", "headerf",
    "footer", "footerl", "footerr", "footerf", "footnote", "fldinst", "themedata", "colorschememapping",
    "datastore", "latentstyles", "xmlnstbl", "listtable", "listoverridetable", "revtbl", "rsidtbl", "generator",
    "mmathPr", "pgdsctbl", "filetbl", "shpinst", "nonshppict", "annotation", "atnid", "atnauthor", "comment",
    "private", "userprops", "xmlopen", "operator", "author", "title", "subject", "company", "keywords", "doccomm",
}
_RTF_CHARSET_CODEPAGE = {0: "cp1252", 128: "cp932", 129: "cp949", 134: "gb18030", 136: "cp950", 161: "cp1253",
                         162: "cp1254", 163: "cp1258", 177: "cp1255", 178: "cp1256", 186: "cp1257",
                         204: "cp1251", 222: "cp874", 238: "cp1250"}
_RTF_SYMBOLS = {"emdash": "\u2014", "endash": "\u2013", "bullet": "\u2022", "lquote": "\u2018", "rquote": "\u2019",
                "ldblquote": "\u201c", "rdblquote": "\u201d", "tab": "\t", "line": "\n", "emspace": " ",
                "enspace": " ", "qmspace": " "}


class _RtfReader:
    """A small RTF-to-text reader: paragraphs, tables (cells ' | ', rows as lines), \\uN and \\'hh characters in
    the document's code page (or the current font's charset), \\outlinelevel paragraphs as headings.
    Pictures, objects, headers/footers, footnotes, field instructions and metadata are skipped."""

    def __init__(self, data: bytes):
        self.data = data
        self.codepage = "cp1252"
        self.fonts: dict[int, str] = {}
        self.builder = _SectionBuilder()

    def sections(self) -> list[Section]:
        stack: list[dict] = []
        state = {"skip": False, "uc": 1, "font": None, "in_fonttbl": False}
        line: list[str] = []
        pending = bytearray()
        skip_chars = 0
        outline: int | None = None
        font_num: int | None = None
        expect_destination = False

        def flush_bytes() -> None:
            if pending:
                codepage = self.fonts.get(state["font"], self.codepage) if state["font"] is not None else \
                    self.codepage
                try:
                    line.append(bytes(pending).decode(codepage))
                except (UnicodeDecodeError, LookupError):
                    line.append(bytes(pending).decode("cp1252", errors="strict") if _cp1252_ok(pending)
                                else bytes(pending).decode("latin-1"))
                pending.clear()

        def end_paragraph() -> None:
            flush_bytes()
            text = _join_surrogates("".join(line))
            line.clear()
            if outline is not None and text.strip():
                self.builder.heading(text.strip())
            else:
                self.builder.line(text)

        pos, size = 0, len(self.data)
        while pos < size:
            match = _RTF_TOKEN.match(self.data, pos)
            if match is None:  # a lone backslash at the very end
                break
            pos = match.end()
            word, arg, hexbyte, symbol, brace, text = match.groups()
            if hexbyte is None:
                flush_bytes()
            if brace == b"{":
                stack.append(dict(state))
                expect_destination = False
                continue
            if brace == b"}":
                state = stack.pop() if stack else state
                continue
            if skip_chars and (hexbyte is not None or text is not None):
                if hexbyte is not None:
                    skip_chars -= 1
                    continue
                consumed = min(skip_chars, len(text))
                skip_chars -= consumed
                text = text[consumed:]
                if not text:
                    continue
            if symbol is not None:
                if symbol == b"*":
                    expect_destination = True
                    continue
                if state["skip"]:
                    continue
                if symbol in (b"\\", b"{", b"}"):
                    line.append(symbol.decode())
                elif symbol == b"~":
                    line.append("\u00a0")
                elif symbol == b"_":
                    line.append("-")
                elif symbol in (b"\n", b"\r"):
                    end_paragraph()
                continue
            if word is not None:
                w = word.decode()
                n = int(arg) if arg is not None else None
                if expect_destination:
                    expect_destination = False
                    state["skip"] = True  # {\* ...} destinations we do not know are skipped
                if w in _RTF_SKIP:
                    state["skip"] = True
                    if w == "fonttbl":
                        state["in_fonttbl"] = True
                        state["skip"] = True
                    continue
                if state["in_fonttbl"]:
                    if w == "f" and n is not None:
                        font_num = n
                    elif w == "fcharset" and font_num is not None and n in _RTF_CHARSET_CODEPAGE:
                        self.fonts[font_num] = _RTF_CHARSET_CODEPAGE[n]
                    elif w == "cpg" and font_num is not None and n:
                        self.fonts[font_num] = normalize_encoding(f"cp{n}") or self.fonts.get(font_num, "cp1252")
                    continue
                if w == "bin" and n:  # raw binary data (inside pictures): skip it unread
                    pos += max(0, n)
                    continue
                if w == "ansicpg" and n:
                    self.codepage = normalize_encoding(f"cp{n}") or "cp1252"
                elif w == "uc" and n is not None:
                    state["uc"] = n
                elif w == "f" and n is not None:
                    state["font"] = n
                elif state["skip"]:
                    continue
                elif w == "u" and n is not None:
                    line.append(chr(n + 65536 if n < 0 else n))
                    skip_chars = state["uc"]
                elif w in ("par", "sect", "page"):
                    end_paragraph()
                elif w == "pard":
                    outline = None
                elif w == "outlinelevel" and n is not None and n < 9:
                    outline = n
                elif w == "cell" or w == "nestcell":
                    flush_bytes()
                    line.append(" | ")
                elif w == "row" or w == "nestrow":
                    flush_bytes()
                    row = "".join(line).rstrip().removesuffix("|").rstrip()
                    line.clear()
                    self.builder.line(row)
                elif w in _RTF_SYMBOLS:
                    line.append(_RTF_SYMBOLS[w])
                continue
            if hexbyte is not None:
                if not state["skip"]:
                    pending.append(int(hexbyte, 16))
                continue
            if text is not None and not state["skip"]:
                line.append(text.decode(self.codepage, errors="strict") if text.isascii() else
                            _decode_rtf_raw(text, self.codepage))
        end_paragraph()
        return self.builder.sections()


def _join_surrogates(text: str) -> str:
    """RTF writes characters beyond U+FFFF as two \\uN surrogates: pair them up; drop unpaired halves (which
    no encoder could write out)."""
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    return re.sub("[\ud800-\udbff][\udc00-\udfff]|[\ud800-\udfff]",
                  lambda m: m.group().encode("utf-16-le", "surrogatepass").decode("utf-16-le")
                  if len(m.group()) == 2 else "", text)


def _cp1252_ok(data: bytes | bytearray) -> bool:
    try:
        bytes(data).decode("cp1252")
        return True
    except UnicodeDecodeError:
        return False


def _decode_rtf_raw(raw: bytes, codepage: str) -> str:
    for encoding in ("utf-8", codepage):
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    return raw.decode("latin-1")


# ---------------------------------------------------------------------------------------------------------------
# Registry

_LOADERS: dict[str, Callable[[bytes, str], list[Section]]] = {
    ".txt": _load_text, ".text": _load_text,
    ".md": _load_markdown, ".markdown": _load_markdown,
    ".pdf": _load_pdf,
    ".docx": _load_docx,
    ".pptx": _load_pptx,
    ".xlsx": _load_xlsx,
    ".csv": _load_csv, ".tsv": _load_csv,
    ".json": _load_json, ".jsonl": _load_jsonl,
    ".html": _load_html, ".htm": _load_html, ".xhtml": _load_html,
    ".xml": _load_xml,
    ".odt": _load_odt,
    ".epub": _load_epub,
    ".eml": _load_eml,
    ".rtf": _load_rtf,
}
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_LOADERS)

_LABELS = {".pdf": "PDF", ".docx": "DOCX", ".pptx": "PPTX", ".xlsx": "XLSX", ".odt": "ODT", ".epub": "EPUB",
           ".rtf": "RTF", ".eml": "e-mail", ".xml": "XML", ".json": "JSON", ".jsonl": "JSON Lines",
           ".csv": "CSV", ".tsv": "TSV", ".html": "HTML", ".htm": "HTML", ".xhtml": "XHTML", ".md": "Markdown",
           ".markdown": "Markdown", ".txt": "text", ".text": "text"}
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


def _human(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


def _short(message: str, limit: int = 200) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit - 1] + "…"
