"""What every format loader shares: the error it raises, a section builder, a safe XML parser, labels, helpers."""

from __future__ import annotations

from kb_qa.errors import KbQaError
from kb_qa.schema import Section


class LoadError(KbQaError):
    """A document that cannot be turned into text; `str(e)` reads '<path>: <reason>'.

    A `KbQaError` (exit code `EXIT_ERROR`): front ends show it as one line, and ingest records it per file and
    goes on with the rest of the batch."""

    def __init__(self, path, reason: str):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class SectionBuilder:
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

    def ocr_text(self, text: str) -> None:
        """Text recognised from a picture at this point: its own section (marked OCR), the text so far closed
        before it, the heading kept for what follows."""
        if not text.strip():
            return
        self._close()
        self._sections.append(Section(text, page=self._page, heading=self._heading, ocr=True))

    def _close(self) -> None:
        body = "\n".join(self._lines)
        if body.strip():
            self._sections.append(Section(body, page=self._page, heading=self._heading))
        self._lines, self._content = [], False

    def sections(self) -> list[Section]:
        self._close()
        return self._sections


def safe_xml_parser():
    """lxml parser that never resolves entities, loads DTDs or touches the network (no XXE, no billion laughs)."""
    from lxml import etree

    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                           remove_comments=True, remove_pis=True)


LABELS = {".pdf": "PDF", ".docx": "DOCX", ".pptx": "PPTX", ".xlsx": "XLSX", ".odt": "ODT", ".epub": "EPUB",
          ".rtf": "RTF", ".eml": "e-mail", ".xml": "XML", ".json": "JSON", ".jsonl": "JSON Lines",
          ".csv": "CSV", ".tsv": "TSV", ".html": "HTML", ".htm": "HTML", ".xhtml": "XHTML", ".md": "Markdown",
          ".markdown": "Markdown", ".txt": "text", ".text": "text", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG",
          ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WebP"}


def human_size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


def shorten(message: str, limit: int = 200) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[:limit - 1] + "…"
