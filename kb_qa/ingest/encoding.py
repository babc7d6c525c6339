"""Bytes -> str for text documents: detect the encoding, never assume it, never drop bytes silently.

Order of evidence (first that decodes cleanly wins):
  1. a byte-order mark (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE); the BOM is not part of the text;
  2. NUL-byte patterns of BOM-less UTF-32 / UTF-16 (ASCII-range characters leave zero bytes at fixed positions);
  3. strict UTF-8;
  4. for HTML/XML, the charset the document declares (<meta charset>, <?xml encoding?>);
  5. charset-normalizer's guess among the encodings this project expects (GB18030, Big5, cp1252), with a
     frequency tie-break between GB and Big5 for short texts, where the statistics are too thin to decide.
"Clean" means a strict decode with no control characters other than tab, newline, carriage return and form
feed. Nothing decodes with errors="ignore"/"replace": bytes that fit none of these raise DecodeError.

Deliberately not here: cleaning whitespace or control characters out of text that decoded fine (loaders do
that), and encodings outside the list above (Shift-JIS, EUC-KR, KOI8...), which short texts would too often be
mistaken for.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

from kb_qa.errors import KbQaError

__all__ = ["DecodeError", "decode_text", "normalize_encoding"]


class DecodeError(KbQaError, ValueError):
    """The bytes are not text in any encoding we accept. The message says why (no file name in it); loaders
    turn it into a `LoadError` that names the file."""


_BOMS = (  # longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# Candidates handed to charset-normalizer; anything else it might suggest for a short text is usually wrong.
_GUESSABLE = ["utf_8", "gb18030", "big5", "cp1252"]

# Declared / detected names -> the codec we decode with (supersets: GB2312 < GBK < GB18030, Big5 < cp950,
# ISO-8859-1 is treated as cp1252 as browsers do).
_SUPERSETS = {
    "gb2312": "gb18030", "gbk": "gb18030", "cp936": "gb18030", "gb18030": "gb18030", "hz": "gb18030",
    "euc_cn": "gb18030", "big5": "big5", "cp950": "cp950", "big5hkscs": "big5hkscs",
    "latin_1": "cp1252", "iso8859_1": "cp1252", "ascii": "cp1252", "cp1252": "cp1252",
    "utf_8": "utf-8", "utf_8_sig": "utf-8",
}

# C0 controls other than tab/newline/CR/FF, DEL and C1 controls: the mark of a wrong guess (or of binary data)
_BAD_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_DECLARED_RE = re.compile(
    rb"""<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']"""
    rb"""|<meta[^>]+?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""",
    re.IGNORECASE,
)
_MARKUP_SUFFIXES = (".html", ".htm", ".xhtml", ".xml", ".svg", ".rss", ".atom", ".opf", ".ncx")


def normalize_encoding(name: str) -> str | None:
    """A Python codec name for an encoding label ('GB2312' -> 'gb18030'), or None if Python has no such codec."""
    try:
        canonical = codecs.lookup(name.strip().lower()).name.replace("-", "_")
    except LookupError:
        return None
    return _SUPERSETS.get(canonical, canonical)


def decode_text(data: bytes, name: str = "") -> str:
    """Decode a text document's bytes. `name` (a file name) only enables the charset declaration of HTML/XML.

    Returns text with no BOM and with '\\n' line ends. Raises DecodeError when no accepted encoding fits.
    """
    text = _decode(data, name)
    if text.startswith("\ufeff"):  # a BOM inside an already-BOM-stripped decode (double BOM) or a UTF-8 sig
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode(data: bytes, name: str) -> str:
    if not data:
        return ""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            body = data[len(bom):]
            try:
                return body.decode(encoding)
            except UnicodeDecodeError as exc:
                raise DecodeError(f"starts with a {encoding.upper()} byte-order mark but is not valid "
                                  f"{encoding.upper()} (byte {exc.start + len(bom)})") from exc
    wide = _wide_unicode(data)
    if wide is not None:
        return wide
    if b"\x00" in data:
        raise DecodeError("binary data (NUL bytes) in what should be a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if name.lower().endswith(_MARKUP_SUFFIXES):
        declared = _declared_charset(data)
        if declared is not None:
            text = _clean_decode(data, declared)
            if text is not None:
                return text
    return _guess(data)


def _wide_unicode(data: bytes) -> str | None:
    """BOM-less UTF-32/UTF-16, recognised by where the zero bytes sit; None if the pattern does not fit."""
    zeros = data.count(0)
    if zeros < 2 or zeros * 200 < len(data):  # a stray NUL or two in 8-bit text is not a wide encoding
        return None
    candidates = []
    if len(data) % 4 == 0:
        quads = [data[i::4] for i in range(4)]  # code points < 0x110000: top byte 0, next byte <= 0x10
        if quads[3].count(0) == len(quads[3]) and max(quads[2]) <= 0x10:
            candidates.append("utf-32-le")
        if quads[0].count(0) == len(quads[0]) and max(quads[1]) <= 0x10:
            candidates.append("utf-32-be")
    if len(data) % 2 == 0:
        even_zeros, odd_zeros = data[0::2].count(0), data[1::2].count(0)
        # ASCII characters (spaces, newlines, digits, latin text) put their zero byte on one side only.
        if odd_zeros >= 0.9 * zeros and odd_zeros > 0:
            candidates.append("utf-16-le")
        if even_zeros >= 0.9 * zeros and even_zeros > 0:
            candidates.append("utf-16-be")
    for encoding in candidates:
        text = _clean_decode(data, encoding)
        if text is not None and "\x00" not in text and any(ch in text for ch in " \n\t"):
            return text
    return None


def _declared_charset(data: bytes) -> str | None:
    match = _DECLARED_RE.search(data[:4096])
    if match is None:
        return None
    label = (match.group(1) or match.group(2)).decode("ascii")
    encoding = normalize_encoding(label)
    if encoding is None or encoding.startswith(("utf_16", "utf_32")):  # a wide declaration in 8-bit bytes lies
        return None
    return encoding


def _guess(data: bytes) -> str:
    from charset_normalizer import from_bytes

    results = from_bytes(data, cp_isolation=_GUESSABLE)
    guesses: list[str] = []
    for match in results:
        encoding = normalize_encoding(match.encoding) or match.encoding
        if encoding not in guesses:
            guesses.append(encoding)
    if "gb18030" in guesses and "big5" in guesses:
        guesses = _order_chinese(data, guesses)
    for encoding in guesses:
        for codec in _widen(encoding):
            text = _clean_decode(data, codec)
            if text is not None:
                return text
    # charset-normalizer had no opinion (e.g. too few bytes); a strict, clean decode of an expected encoding
    # is still evidence, GB first because most of this project's users write Simplified Chinese.
    for codec in ("gb18030", "big5", "cp950"):
        text = _clean_decode(data, codec)
        if text is not None and _mostly_cjk(text):
            return text
    raise DecodeError("not UTF-8/16/32, GB18030, Big5 or cp1252 text (binary or an unsupported encoding)")


def _widen(encoding: str) -> list[str]:
    if encoding == "big5":
        return ["big5", "cp950", "big5hkscs"]
    if encoding == "cp1252":
        return ["cp1252", "latin_1"]  # latin-1 also covers the 5 bytes cp1252 leaves undefined
    return [encoding]


def _clean_decode(data: bytes, encoding: str) -> str | None:
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None
    return None if _BAD_CONTROLS.search(text) else text


def _order_chinese(data: bytes, guesses: list[str]) -> list[str]:
    """GB vs Big5 by which reading lands in its standard's frequent-character block (GB2312 level 1, Big5
    level 1). Both encodings accept most byte pairs, so short texts need this."""
    sample = data[:65536]
    sample = sample[:len(sample.rstrip(bytes(range(0x80, 0x100))))] if len(data) > 65536 else sample  # whole chars
    scores = {enc: _common_share(sample, enc) for enc in ("gb18030", "big5")}
    if scores["gb18030"] == scores["big5"]:
        return guesses
    first = max(scores, key=scores.__getitem__)
    return [first] + [g for g in guesses if g != first]


def _common_share(data: bytes, encoding: str) -> float:
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        return -1.0
    wide = [ch.encode(encoding) for ch in text if ord(ch) > 0x7F]
    wide = [b for b in wide if len(b) == 2]
    if not wide:
        return 0.0
    if encoding == "gb18030":
        common = sum(1 for b in wide if 0xB0 <= b[0] <= 0xD7 and 0xA1 <= b[1] <= 0xFE)
        common += sum(1 for b in wide if b[0] == 0xA1 or b[0] == 0xA3)  # CJK punctuation, full-width forms
    else:
        common = sum(1 for b in wide if 0xA4 <= b[0] <= 0xC6 or (b[0] == 0xA1 and b[1] >= 0x40))
    return common / len(wide)


def _mostly_cjk(text: str) -> bool:
    wide = [ch for ch in text if ord(ch) > 0x7F]
    return bool(wide) and sum(1 for ch in wide if unicodedata.name(ch, "").startswith("CJK")) >= 0.8 * len(wide)
