"""Follow-up question -> standalone retrieval query ("那它的作者是谁？" -> "《三体》的作者是谁？").

Only the retrieval query is rewritten; the model still answers the user's own words with the history in its prompt.

- With a language model loaded: the model is asked (template `rewrite_template`, greedy, at most 64 new tokens)
  to rewrite the latest question using the recent history, or return it unchanged if it is already standalone.
  Its output is cleaned (first line, no quotes or "改写后的问题：" label); if it is empty, much longer than the
  question and history warrant, or the call fails, the fallback below is used.
- Fallback (no model, or the model's rewrite was unusable): if the question looks like a follow-up (it contains
  a pronoun or demonstrative from the template's `followup_markers`, or it is very short: at most 6 CJK
  characters / 3 words), the previous user question is put in front of it ("《三体》是谁写的？ 那它的作者是谁？"),
  which gives both the embedding and the keyword search the missing subject. Otherwise the question is used as is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from kb_qa.qa.prompts import Prompts
from kb_qa.schema import History

log = logging.getLogger(__name__)

REWRITE_MAX_NEW_TOKENS = 64
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9]+")
_LABEL = re.compile(r"^\s*(?:改写后的问题|独立问题|问题|rewritten question|question)\s*[:：]\s*", re.IGNORECASE)


def looks_like_followup(question: str, markers: Sequence[str]) -> bool:
    """A pronoun/demonstrative from `markers`, or a very short question."""
    q = question.strip()
    cjk = len(_CJK.findall(q))
    words = _WORD.findall(q.lower())
    if cjk:
        if cjk <= 6:
            return True
        return any(m for m in markers if _CJK.search(m) and m in q)
    if len(words) <= 3:
        return True
    word_set = set(words)
    return any(m.lower() in word_set for m in markers if not _CJK.search(m))


def fallback_query(question: str, history: History, prompts: Prompts) -> str:
    """The documented rule without a model: previous question + this one, when this one looks like a follow-up."""
    if not history or not looks_like_followup(question, prompts.followup_markers):
        return question
    previous = str(history[-1][0]).strip()
    return f"{previous} {question.strip()}" if previous else question


def clean_rewrite(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = _LABEL.sub("", lines[0]).strip()
    return line.strip("\"'“”‘’「」").strip()


def standalone_query(question: str, history: History, prompts: Prompts, llm=None, *, rounds: int = 3) -> str:
    """The query to retrieve with. `llm`: a LangChain LLM (invoke) or a handle with `.langchain_llm`;
    None = fallback."""
    history = [(str(q), str(a)) for q, a in history][-rounds:] if rounds > 0 else []
    if not history:
        return question
    lc = getattr(llm, "langchain_llm", llm)
    if lc is not None:
        try:
            raw = lc.invoke(prompts.rewrite(question, history), temperature=0.0,
                            max_new_tokens=REWRITE_MAX_NEW_TOKENS)
        except Exception as exc:  # noqa: BLE001 - rewriting is an aid to retrieval, never a reason to fail
            log.warning("rewriting the follow-up with the model failed (%s); using the fallback rule", exc)
            raw = ""
        text = clean_rewrite(raw if isinstance(raw, str) else getattr(raw, "content", str(raw)))
        limit = 2 * len(question) + max(len(str(q)) for q, _ in history) + 20
        if text and len(text) <= limit:
            return text
    return fallback_query(question, history, prompts)
