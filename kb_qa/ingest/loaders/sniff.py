"""Content-type checks by magic bytes: a file's bytes must match its extension before a parser sees them."""

from __future__ import annotations

import io
import zipfile

from kb_qa.ingest.limits import current_options
from kb_qa.ingest.loaders.base import LABELS, LoadError, human_size, shorten
from kb_qa.ingest.ocr import IMAGE_EXTENSIONS

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
_MAX_MEMBERS = 100_000  # files in one package; real documents hold tens to a few thousand


def sniff(data: bytes) -> str | None:
    """What binary format the bytes are, by signature; None for anything else (text, RTF, unknown)."""
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            return kind
    if data.startswith(b"MZ") and b"\x00" in data[:512]:
        return "a Windows executable"
    return None


def check_content_type(data: bytes, ext: str, name: str) -> None:
    kind = sniff(data)
    label = LABELS.get(ext, ext)
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
    elif ext in IMAGE_EXTENSIONS:
        if not _is_image(data):
            raise LoadError(name, f"not an image: the content does not match the {ext} extension"
                                  f"{f' (it looks like {kind})' if kind else ''}")
    elif kind is not None:  # text formats
        raise LoadError(name, f"the content does not match the {ext} extension: it looks like {kind}")


def _check_zip(data: bytes, ext: str, name: str) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            names = {i.filename for i in infos}
    except Exception as exc:  # noqa: BLE001 - BadZipFile, EOFError, NotImplementedError (bad version field)...
        raise LoadError(name, f"corrupt or truncated {LABELS[ext]} file ({shorten(str(exc))})") from exc
    if _ZIP_FORMATS[ext] not in names:
        raise LoadError(name, f"not a {LABELS[ext]} file: the ZIP archive has no {_ZIP_FORMATS[ext]}")
    limit = current_options.get().limits.max_expanded_bytes
    if len(infos) > _MAX_MEMBERS:
        raise LoadError(name, f"refused: the {LABELS[ext]} package holds {len(infos):,} files "
                              f"(over {_MAX_MEMBERS:,}; a zip bomb?)")
    # Sizes from the central directory, before any member is read; zipfile stops each member at its declared
    # size (and fails its CRC check), so a directory that lies cannot expand past this sum.
    unpacked = sum(i.file_size for i in infos)
    if unpacked > limit:
        raise LoadError(name, f"refused: the {LABELS[ext]} package would expand to {human_size(unpacked)}, over "
                              f"the limit of {human_size(limit)} per file (ingest.max_expanded_mb; a zip bomb?)")


def _is_image(data: bytes) -> bool:
    """PNG, JPEG, BMP, TIFF or WebP by signature."""
    return (data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*"))
            or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"))
