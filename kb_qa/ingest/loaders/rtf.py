"""RTF: a small reader for paragraphs, tables, \\uN and \\'hh characters in the document's code page, and
\\outlinelevel headings. Pictures, objects, headers/footers, footnotes, fields and metadata are skipped."""

from __future__ import annotations

import re

from kb_qa.ingest.encoding import normalize_encoding
from kb_qa.ingest.loaders.base import SectionBuilder
from kb_qa.schema import Section


def load_rtf(data: bytes, name: str) -> list[Section]:
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
    Pictures, objects, headers/footers, footnotes, field instructions and metadata are skipped.

    One pass over the tokens; group state (skipping, \\uc count, font) is pushed at '{' and popped at '}'."""

    def __init__(self, data: bytes):
        self.data = data
        self.codepage = "cp1252"
        self.fonts: dict[int, str] = {}  # font number -> code page (from the font table's \fcharset / \cpg)
        self.builder = SectionBuilder()
        self.stack: list[dict] = []
        self.state: dict = {"skip": False, "uc": 1, "font": None, "in_fonttbl": False}
        self.line: list[str] = []
        self.pending = bytearray()  # \'hh bytes waiting to be decoded together (multi-byte code pages)
        self.skip_chars = 0  # fallback characters still to skip after a \uN
        self.outline: int | None = None
        self.font_num: int | None = None  # the font table entry being read
        self.expect_destination = False  # just saw \*: the next control word names an optional destination
        self.pos = 0

    def sections(self) -> list[Section]:
        size = len(self.data)
        while self.pos < size:
            match = _RTF_TOKEN.match(self.data, self.pos)
            if match is None:  # a lone backslash at the very end
                break
            self.pos = match.end()
            self._token(*match.groups())
        self._end_paragraph()
        return self.builder.sections()

    def _token(self, word, arg, hexbyte, symbol, brace, text) -> None:
        if hexbyte is None:
            self._flush_bytes()
        if brace == b"{":
            self.stack.append(dict(self.state))
            self.expect_destination = False
            return
        if brace == b"}":
            self.state = self.stack.pop() if self.stack else self.state
            return
        if self.skip_chars and (hexbyte is not None or text is not None):
            if hexbyte is not None:
                self.skip_chars -= 1
                return
            consumed = min(self.skip_chars, len(text))
            self.skip_chars -= consumed
            text = text[consumed:]
            if not text:
                return
        if symbol is not None:
            self._symbol(symbol)
        elif word is not None:
            self._control_word(word.decode(), int(arg) if arg is not None else None)
        elif hexbyte is not None:
            if not self.state["skip"]:
                self.pending.append(int(hexbyte, 16))
        elif text is not None and not self.state["skip"]:
            self.line.append(text.decode(self.codepage, errors="strict") if text.isascii() else
                             _decode_rtf_raw(text, self.codepage))

    def _symbol(self, symbol: bytes) -> None:
        if symbol == b"*":
            self.expect_destination = True
        elif self.state["skip"]:
            return
        elif symbol in (b"\\", b"{", b"}"):
            self.line.append(symbol.decode())
        elif symbol == b"~":
            self.line.append("\u00a0")
        elif symbol == b"_":
            self.line.append("-")
        elif symbol in (b"\n", b"\r"):
            self._end_paragraph()

    def _control_word(self, w: str, n: int | None) -> None:
        state = self.state
        if self.expect_destination:
            self.expect_destination = False
            state["skip"] = True  # {\* ...} destinations we do not know are skipped
        if w in _RTF_SKIP:
            state["skip"] = True
            if w == "fonttbl":
                state["in_fonttbl"] = True
            return
        if state["in_fonttbl"]:
            self._font_table_word(w, n)
            return
        if w == "bin" and n:  # raw binary data (inside pictures): skip it unread
            self.pos += max(0, n)
        elif w == "ansicpg" and n:
            self.codepage = normalize_encoding(f"cp{n}") or "cp1252"
        elif w == "uc" and n is not None:
            state["uc"] = n
        elif w == "f" and n is not None:
            state["font"] = n
        elif state["skip"]:
            return
        else:
            self._content_word(w, n)

    def _font_table_word(self, w: str, n: int | None) -> None:
        if w == "f" and n is not None:
            self.font_num = n
        elif w == "fcharset" and self.font_num is not None and n in _RTF_CHARSET_CODEPAGE:
            self.fonts[self.font_num] = _RTF_CHARSET_CODEPAGE[n]
        elif w == "cpg" and self.font_num is not None and n:
            self.fonts[self.font_num] = normalize_encoding(f"cp{n}") or self.fonts.get(self.font_num, "cp1252")

    def _content_word(self, w: str, n: int | None) -> None:
        if w == "u" and n is not None:
            self.line.append(chr(n + 65536 if n < 0 else n))
            self.skip_chars = self.state["uc"]
        elif w in ("par", "sect", "page"):
            self._end_paragraph()
        elif w == "pard":
            self.outline = None
        elif w == "outlinelevel" and n is not None and n < 9:
            self.outline = n
        elif w in ("cell", "nestcell"):
            self._flush_bytes()
            self.line.append(" | ")
        elif w in ("row", "nestrow"):
            self._flush_bytes()
            row = "".join(self.line).rstrip().removesuffix("|").rstrip()
            self.line.clear()
            self.builder.line(row)
        elif w in _RTF_SYMBOLS:
            self.line.append(_RTF_SYMBOLS[w])

    def _flush_bytes(self) -> None:
        if not self.pending:
            return
        font = self.state["font"]
        codepage = self.fonts.get(font, self.codepage) if font is not None else self.codepage
        pending = bytes(self.pending)
        try:
            self.line.append(pending.decode(codepage))
        except (UnicodeDecodeError, LookupError):
            self.line.append(pending.decode("cp1252") if _cp1252_ok(pending) else pending.decode("latin-1"))
        self.pending.clear()

    def _end_paragraph(self) -> None:
        self._flush_bytes()
        text = _join_surrogates("".join(self.line))
        self.line.clear()
        if self.outline is not None and text.strip():
            self.builder.heading(text.strip())
        else:
            self.builder.line(text)


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
