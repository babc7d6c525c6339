"""Terms for keyword (BM25) search: jieba segmentation for Chinese, lower-cased word tokens for other scripts.

The store's FTS analyser: the same function cuts documents at ingest (`fts_document`, the text written to the FTS5
column) and questions at query time (`search_terms`, what retrieval hands to `KnowledgeBase.keyword_search`), so
both sides always agree. It lives in the store because what was indexed must be what is searched.
Uses jieba's search mode (a long word also yields its shorter words), so "知识库" matches "知识" too.

Before cutting, text is folded (terms only; the stored passage keeps its script): NFKC (full-width "ＲＴＸ　４０９０"
-> "RTX 4090"), lower case, Traditional -> Simplified through OpenCC's `t2s` table, so either script finds the other.
Markdown image links, bare URLs and empty list markers are dropped first (they would make a chunk look relevant).
Exact identifiers (model numbers, codes, versions, dates, amounts) are kept as one extra whole term each, besides
their parts, so "RTX 4090" ranks the passage that has exactly that above ones with only "4090" or only "RTX".
Question words, particles and polite filler are not terms (they match everything; IDF alone lets them add noise).
A name jieba does not know is cut by its context, one way in the passage and another in the question: the pairs of
adjacent characters around such words are extra terms (character bigrams, `ngram_terms`), so the two still meet.

Bump ANALYSER_VERSION whenever the terms of a text change: the writer records it in the KB's meta and a KB indexed
with another version must be rebuilt (`--rebuild`), or its index and the questions' terms disagree.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata

ANALYSER_VERSION = "4"  # 1: jieba search mode / \w+ words; 2: + folding, identifiers, stop words, hygiene;
#                          3: + how-much/how-long words (多少, 多长, 几...) and 有 as stop words;
#                          4: + character bigrams around the characters jieba does not know as words
ANALYSER_META_KEY = "analyser_version"

_WORD = re.compile(r"\w", re.UNICODE)
CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # one CJK ideograph (analyser, coverage)
_lock = threading.Lock()
_ready = False
_t2s = None

# Chunk hygiene: markup that carries no content. Image links whole (alt text included: usually a file name),
# bare URLs, and list markers alone on a line ("-", "*", "1.").
_NOISE = re.compile(
    r"!\[[^\]\n]*\]\([^)\n]*\)"
    r"|(?:https?|ftp)://[^\s<>()\[\]\"'，。；、）]+|www\.[^\s<>()\[\]\"'，。；、）]+"
    r"|^[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]*$",
    re.MULTILINE | re.IGNORECASE)

# Exact identifiers, matched on folded (NFKC, lower-case) text. ASCII-only look-arounds: a CJK character next to
# an identifier ("型号rtx 4090的") is a boundary. Joined by one private-use character (U+E000), which FTS5's
# unicode61 keeps inside a token, so the whole identifier is one indexed term.
_JOIN = "\ue000"
_PERCENT = "\ue001"
_ID = re.compile(
    r"(?<![a-z0-9.])(?:"
    r"(?P<date>\d{4})(?:[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})|年(?P<m2>\d{1,2})月(?:(?P<d2>\d{1,2})[日号])?)"
    r"|(?P<code>[a-z]{1,8}(?:/[a-z]{1,4})?[ \-]?\d+[a-z]*(?:[.\-:/_]\d+[a-z]*)*)"   # gb/t 7714-2015, rtx 4090
    r"|(?P<num>v?\d+(?:[.\-:/_]\d+)+[a-z]*%?|\d+(?:\.\d+)?%)"                     # v2.3.1, 3.5%, 1.2.3
    r")(?![a-z0-9])")
# A code's letter prefix joined by a space only counts when short (model series are: RTX, GB/T, ISO) and not an
# ordinary word ("in 1990", "page 5", "founded 1990").
_SPACE_PREFIX_WORDS = frozenset(
    "a an and are as at be by for from in into is it no of on or page than the to was were with chapter section "
    "about after before since until between over under per vs".split())

# Not terms: interrogatives, sentence-final and structural particles, polite filler (Chinese, as jieba cuts
# them), and the usual English function words. Short on purpose: content words stay even when frequent.
STOP_WORDS = frozenset(
    "什么 什么样 怎么 怎么样 怎样 如何 哪些 哪个 哪里 哪儿 哪 吗 呢 吧 啊 呀 嘛 么 请问 请 麻烦 一下 的 地 得 了 着 过 "
    "呢 是否 能否 可以 是 和 与 及 或 在 对 把 被 "
    # how much / how long / how many ("长城有多长", "长度是多少"): the question's form, rarely the passage's words
    "有 多少 多长 多久 多大 多高 多远 多重 多深 多宽 多厚 多快 几 几个 几种 几次 几年 为什么 为何 何时 谁 "
    "an the of to in on at by for from with as and or but if is are was were be been being am do does did "
    "what which who whom whose how why when where that this these those it its there their they he she his her "
    "me my we our you your can could would should will shall may might please tell".split())

# Question forms jieba keeps as one word and STOP_WORDS cannot list: a question head and a measure word ("哪一位",
# "哪国", "几名", "第几"), "哪些" + a noun ("哪些地方"), a lone "第" ("第几位" is cut "第 / 几位") and the
# instructions "(请)说出 / 列出 ...". They say what kind of answer is wanted, not what it is about: answerable
# questions read as if they held words their passage lacks. Questions only (`question_form_rest`): documents keep
# their terms (the analyser is unchanged, so no KB needs `kb repair`). Names that begin alike ("哪吒", "几内亚",
# "几何") are not head + measure word.
_MEASURE_WORDS = "位名个国年天种类部座所条支家次人岁样届场件项首本张只月日号点批"
_QUESTION_FORM = re.compile(rf"^(?:第?几|哪一?|哪几)[{_MEASURE_WORDS}]$|^哪些\w+$|^第几?$"
                            r"|^请?(?:说出|列出|列举|写出|指出)$")


def question_form_rest(term: str) -> str | None:
    """None: `term` is no question form (_QUESTION_FORM); else the content it holds: the noun of "哪些 + noun"
    ("哪些地方" -> "地方"), "" for the others. What a question's search terms and coverage units keep of it."""
    if not _QUESTION_FORM.match(term):
        return None
    return term[2:] if term.startswith("哪些") else ""


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


def precise_cut(text: str) -> list[str]:
    """jieba's precise (non-overlapping) cut of `text`, as the analyser's bigram rule reads it."""
    return _jieba().lcut(text)


def _to_simplified(text: str) -> str:
    global _t2s
    if _t2s is None:
        import opencc  # the wheel ships its dictionaries: no network

        with _lock:
            if _t2s is None:
                _t2s = opencc.OpenCC("t2s")
    return _t2s.convert(text)


def fold(text: str) -> str:
    """The text terms are cut from: NFKC, lower case, Simplified script. Only for terms, never for display."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _to_simplified(text) if CJK_CHAR.search(text) else text


def strip_noise(text: str) -> str:
    """`text` without Markdown image links, bare URLs and empty list markers."""
    return _NOISE.sub(" ", text)


def _identifier_term(m: re.Match) -> str | None:
    if m.group("date"):
        month, day = m.group("m") or m.group("m2"), m.group("d") or m.group("d2")
        parts = [m.group("date"), str(int(month))] + ([str(int(day))] if day else [])
        return _JOIN.join(parts)  # "2023-05-01" and "2023年5月1日" are the same term
    raw = m.group("code") or m.group("num")
    if m.group("code"):
        lead = re.match(r"[a-z/]+", raw)
        prefix = lead.group(0) if lead else ""
        if raw[len(prefix):len(prefix) + 1] == " " and (len(prefix) > 5 or prefix in _SPACE_PREFIX_WORDS):
            return None
    parts = re.findall(r"[a-z0-9]+", raw)
    if len(parts) < 2 and not raw.endswith("%"):
        return None  # one plain word or number: its ordinary term already is the whole identifier
    return _JOIN.join(parts) + (_PERCENT if raw.endswith("%") else "")


def identifier_terms(folded: str) -> list[str]:
    """Whole-identifier terms of folded text, in order ("gb/t 7714-2015" -> one term, besides gb, t, 7714, 2015)."""
    return [t for t in (_identifier_term(m) for m in _ID.finditer(folded)) if t]


# Character bigrams: jieba cuts a name it does not know by its context, differently in a question and in its
# passage ("锦地罗发源于" -> 锦地罗, "锦地罗的全长" -> 锦地 / 罗), so no word term matches. The two characters next to
# each other match whatever the cut: every pair of adjacent CJK characters of which one lies in a word jieba's
# dictionary lacks (its HMM's guess, where names end up) is one extra term, prefixed by a private-use
# character (U+E002, kept inside an FTS5 token) so a bigram never equals the word it spells. Pairs with a
# character of a stop word cut as such ("罗 / 的", "垫 / 什么") are left out: they say which particle followed.
NGRAM_PREFIX = "\ue002"
# Measured (bench/README.md): "oov" ranks best; "oov1" (also pairs touching a one-character word) and "all" (every
# pair) add noise pairs ("菜很", "很好") and cost hit@1 on xquad_zh.
# "oov": pairs touching an unknown word; "oov1": or a one-character word; "all": every pair; "": none
NGRAM_MODE = "oov"
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def is_ngram(term: str) -> bool:
    """True for a character-bigram term (not a word: a term count or share over words leaves these out)."""
    return term.startswith(NGRAM_PREFIX)


_PLAIN, _WEAK, _PARTICLE = 0, 1, 2


def _char_kinds(text: str, mode: str) -> list[int]:
    """Per character of `text`, from jieba's precise cut: _PARTICLE in a stop word ("的", "是", "什么"),
    _WEAK in a CJK word of two or more characters jieba's dictionary lacks (or, `mode` "oov1", of one
    character), else _PLAIN."""
    jieba = _jieba()
    freq = jieba.dt.FREQ  # word -> count; prefixes of words are there with 0
    kinds: list[int] = []
    for word in precise_cut(text):
        if word in STOP_WORDS:
            kind = _PARTICLE
        elif CJK_CHAR.match(word) and (not freq.get(word) if len(word) > 1 else mode == "oov1"):
            kind = _WEAK
        else:
            kind = _PLAIN
        kinds.extend([kind] * len(word))
    return kinds


def ngram_terms(folded: str, mode: str | None = None) -> list[str]:
    """Character-bigram terms of folded text, in order (see NGRAM_MODE)."""
    mode = NGRAM_MODE if mode is None else mode
    if not mode or not CJK_CHAR.search(folded):
        return []
    kinds = _char_kinds(folded, mode)
    out = []
    for run in _CJK_RUN.finditer(folded):
        start, chars = run.start(), run.group(0)
        for i in range(start, start + len(chars) - 1):
            a, b = kinds[i], kinds[i + 1]
            if _PARTICLE in (a, b):
                continue
            if mode == "all" or _WEAK in (a, b):
                out.append(NGRAM_PREFIX + folded[i:i + 2])
    return out


def search_terms(text: str) -> list[str]:
    """Index/query terms of `text`, in order, with repeats (BM25 needs term frequency): the word terms first,
    then the whole identifiers, then the character bigrams."""
    text = fold(strip_noise(text))
    if CJK_CHAR.search(text):
        tokens = _jieba().lcut_for_search(text)
    else:
        tokens = re.findall(r"\w+", text, re.UNICODE)
    words = [t for t in (tok.strip() for tok in tokens) if t and _WORD.search(t) and t not in STOP_WORDS]
    return words + identifier_terms(text) + ngram_terms(text)


def fts_document(text: str) -> str:
    """The text stored in the FTS5 column: terms joined by spaces (FTS5's unicode61 splits on them)."""
    return " ".join(search_terms(text))


def check_analyser(kb_name: str, recorded: str | None, chunk_count: int) -> None:
    """Refuse a KB whose keyword index was cut by another analyser version (`recorded` None with chunks: indexed
    before versions were recorded, i.e. version 1): its terms and today's question terms would not match."""
    from kb_qa.store.errors import AnalyserMismatch

    if chunk_count and (recorded or "1") != ANALYSER_VERSION:
        raise AnalyserMismatch(
            f"knowledge base {kb_name!r} was keyword-indexed with term analyser version {recorded or '1'}, this "
            f"version of kb_qa uses {ANALYSER_VERSION}: run `kb-qa kb repair {kb_name}` (re-cuts the terms from the "
            f"stored texts, nothing re-embedded) or re-ingest it with --rebuild")
