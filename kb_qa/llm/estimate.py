"""The one token estimate used when ChatGLM2's tokenizer.model is not available, and the tokenizer when it is.

`estimate_tokens(text)` is an upper bound of ChatGLM2's count, never below it, from how its tokenizer works
(sentencepiece BPE, identity normaliser, dummy prefix, byte fallback): the text starts as one symbol per character
('▁' for a space), merges only ever reduce the count, and a character that is not a piece of the vocabulary falls
back to its UTF-8 bytes, one token each. So

    tokens <= 2 ([gMASK] sop) + 1 (the dummy '▁') + sum over characters of cost(ch)
    cost(ch) = 1 for ASCII, for GB2312 level-1 hanzi (3,753 of 3,755 are pieces) and common CJK punctuation;
               the UTF-8 length otherwise (2-4: rare hanzi, emoji, other scripts)

It over-counts ordinary text (about 4x for English, 2x for Chinese), which only makes packed prompts shorter than
they could be; for exact counts configure a folder holding tokenizer.model (`llm.model_path`, weights not needed):
`configured_tokenizer(settings.llm)` returns ChatGLM2's tokenizer then. tests/test_estimate.py checks the bound
against the real tokenizer.model on emoji, CJK, code, mixed and adversarial text.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX_TOKENS = 2  # [gMASK] sop: every ChatGLM2 prompt starts with them
DUMMY_PREFIX = 1  # sentencepiece's add_dummy_prefix: '▁' before the text, at most one token of its own

# Full-width punctuation, letters and digits that are single pieces of ChatGLM2's vocabulary (checked by the test).
_CJK_PUNCTUATION = frozenset("，。？！：；、“”‘’《》（）【】「」『』…—·～％＃＠＆＊＋－＝／＜＞［］｛｝｜＼＾＿｀　￥"
                             "０１２３４５６７８９ＡＢＣａｂｃ")
_NOT_PIECES = frozenset("毖谰")  # the two GB2312 level-1 hanzi ChatGLM2's vocabulary lacks (byte fallback)


def _gb2312_level1() -> frozenset[str]:
    chars = set()
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.add(bytes((hi, lo)).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return frozenset(chars - _NOT_PIECES)


_ONE_TOKEN = _gb2312_level1() | _CJK_PUNCTUATION


def _cost(ch: str) -> int:
    if ch < "\x80" or ch in _ONE_TOKEN:
        return 1
    return len(ch.encode("utf-8", "surrogatepass"))


def estimate_tokens(text: str, *, add_prefix: bool = True) -> int:
    """An upper bound of ChatGLM2's token count for `text` (with the 2-token prefix unless add_prefix=False)."""
    total = PREFIX_TOKENS if add_prefix else 0
    if not text:
        return total
    body = len(text) if text.isascii() else sum(map(_cost, text))
    return total + DUMMY_PREFIX + body


class EstimatingTokenizer:
    """`count_tokens` by `estimate_tokens`, for a model whose tokenizer.model is not available locally."""

    approximate = True

    def count_tokens(self, text: str, *, add_prefix: bool = True) -> int:
        return estimate_tokens(text, add_prefix=add_prefix)

    def encode(self, text: str, *, add_prefix: bool = True) -> list[int]:
        raise NotImplementedError("no local tokenizer.model: set llm.model_path to a folder holding ChatGLM2's "
                                  "tokenizer.model for exact token ids")


def configured_tokenizer(llm_settings):
    """ChatGLM2's tokenizer from `llm.model_path`'s tokenizer.model (weights not needed), or None."""
    s = getattr(llm_settings, "llm", llm_settings)
    if not s.model_path:
        return None
    from kb_qa.llm.tokenizer import TOKENIZER_FILE, ChatGLM2Tokenizer

    folder = Path(str(s.model_path)).expanduser()
    if not folder.is_dir():
        from kb_qa.llm.loader import resolve_checkpoint_path  # a repo id in the local Hugging Face cache

        found = resolve_checkpoint_path(s.model_path)
        if found is None:
            return None
        folder = Path(found)
    if not (folder / TOKENIZER_FILE).is_file():
        return None
    try:
        return ChatGLM2Tokenizer.from_folder(folder)
    except Exception as exc:  # noqa: BLE001 - a damaged tokenizer.model: fall back to the safe estimate
        log.warning("cannot read %s (%s); token counts are estimates", folder / TOKENIZER_FILE, exc)
        return None
