"""Text cleaning shared by every loader: newlines, control and zero-width characters, PDF ligatures, spaces."""

from __future__ import annotations

import re
import unicodedata

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
