"""Retrieved text and file names must not open or close a dialogue turn or the passage frame, in any spelling.

Each character is compared through a shadow key (NFKC, then a small confusables map, lower case), so full-width
`＜/资料＞`, `‹/ 资料>`, `［Round 2］` or `问：`/`答:` all count; a match is rewritten in the original text to a
neutral form that no longer matches (`[资料]`, `(Round 2)`, `【问】`), so the packed prompt has exactly the
template's own turns and frame.
"""

from __future__ import annotations

import re
import unicodedata

_CONFUSABLE = str.maketrans({"‹": "<", "〈": "<", "⟨": "<", "《": "<", "«": "<", "ᐸ": "<", "﹤": "<",
                             "˂": "<", "❮": "<", "❬": "<",
                             "›": ">", "〉": ">", "⟩": ">", "》": ">", "»": ">", "ᐳ": ">", "﹥": ">",
                             "˃": ">", "❯": ">", "❭": ">",
                             "⁄": "/", "∕": "/", "⧸": "/", "╱": "/", "\\": "/",
                             "【": "[", "〔": "[", "⟦": "[", "〖": "[", "〘": "[", "⁅": "[",
                             "】": "]", "〕": "]", "⟧": "]", "〗": "]", "〙": "]", "⁆": "]",
                             "∶": ":", "︰": ":", "꞉": ":", "ː": ":", "˸": ":", "׃": ":",
                             # Latin look-alikes (Cyrillic, Greek, Armenian, small capitals) of the letters of
                             # "round" and "material", which NFKC leaves alone
                             "о": "o", "ο": "o", "ᴏ": "o", "ℴ": "o", "Ʀ": "r", "Ꭱ": "r", "ʀ": "r", "г": "r",
                             "υ": "u", "ս": "u", "ᴜ": "u", "ո": "n", "ԁ": "d", "ᴅ": "d",
                             "а": "a", "α": "a", "е": "e", "ε": "e", "і": "i", "ι": "i", "т": "t", "τ": "t",
                             "м": "m", "ⅼ": "l", "ӏ": "l"})


def _spaced(word: str) -> str:
    """`word` with any run of spaces allowed between its characters ("r o u n d")."""
    return r"\s*".join(re.escape(c) for c in word)


_FRAME = re.compile(rf"<\s*/?\s*({_spaced('资料')}|{_spaced('material')})\s*>")
_ROUND = re.compile(rf"\[\s*{_spaced('round')}\s*(\d\s*)*\]")
_TURN = re.compile(r"(问|答)\s*:")


def _shadow(text: str) -> tuple[str, list[int]]:
    keys, owner = [], []
    for i, ch in enumerate(text):
        # confusables before NFKC too: NFKC turns some of them into something else ("︰" -> "‥")
        key = unicodedata.normalize("NFKC", ch.translate(_CONFUSABLE)).translate(_CONFUSABLE).lower()
        # invisible format characters and combining marks count as nothing: "[R\u200bound" is "[round"
        key = "".join(c for c in key if unicodedata.category(c) not in ("Cf", "Mn", "Me"))
        keys.append(key)
        owner.extend([i] * len(key))
    return "".join(keys), owner


def _neutral(kind: str, original: str) -> str:
    if kind == "frame":
        return "[/资料]" if "/" in _shadow(original)[0] else "[资料]"
    if kind == "round":
        return "(" + re.sub(r"[^\w ]", "", unicodedata.normalize("NFKC", original)).strip() + ")"
    return "【问】" if "问" in original else "【答】"


def neutralise(text: str) -> str:
    """`text` with every spelling of a turn marker or passage-frame marker made inert."""
    for _ in range(3):  # a rewrite can only remove markers; repeat in case neighbours formed a new one
        shadow, owner = _shadow(text)
        spans = []
        for kind, pattern in (("frame", _FRAME), ("round", _ROUND), ("turn", _TURN)):
            for m in pattern.finditer(shadow):
                spans.append((owner[m.start()], owner[m.end() - 1] + 1, kind))
        if not spans:
            return text
        out, last = [], 0
        for start, end, kind in sorted(spans):
            if start < last:
                continue
            out.append(text[last:start])
            out.append(_neutral(kind, text[start:end]))
            last = end
        out.append(text[last:])
        text = "".join(out)
    return text


def forged_markers(text: str) -> int:
    """How many turn or frame markers `text` holds in any spelling (0 after `neutralise`)."""
    shadow, _ = _shadow(text)
    return sum(len(p.findall(shadow)) for p in (_FRAME, _ROUND, _TURN))
