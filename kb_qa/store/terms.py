"""Terms for keyword (BM25) search: jieba segmentation for Chinese, lower-cased word tokens for other scripts.

The store's FTS analyser: the same function cuts documents at ingest (`fts_document`, the text written to the FTS5
column) and questions at query time (`search_terms`, what retrieval hands to `KnowledgeBase.keyword_search`), so
both sides always agree. It lives in the store because what was indexed must be what is searched.
Uses jieba's search mode (a long word also yields its shorter words), so "知识库" matches "知识" too.
"""

from __future__ import annotations

import logging
import re
import threading

_WORD = re.compile(r"\w", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_lock = threading.Lock()
_ready = False


def _jieba():
    global _ready
    import jieba

    if not _ready:
        with _lock:
            if not _ready:
                jieba.setLogLevel(logging.WARNING)
                jieba.initialize()  # builds the prefix dictionary from the package (no network)
                _ready = True
    return jieba


def search_terms(text: str) -> list[str]:
    """Index/query terms of `text`, in order, with repeats (BM25 needs term frequency)."""
    text = text.lower()
    if _CJK.search(text):
        tokens = _jieba().lcut_for_search(text)
    else:
        tokens = re.findall(r"\w+", text, re.UNICODE)
    return [t for t in (tok.strip() for tok in tokens) if t and _WORD.search(t)]


def fts_document(text: str) -> str:
    """The text stored in the FTS5 column: terms joined by spaces (FTS5's unicode61 splits on them)."""
    return " ".join(search_terms(text))
