"""Pack retrieved passages, the dialogue history and the question into ChatGLM2's dialogue window.

Budget, in tokens of the answering model's own tokenizer (counted on the exact text the model will see):

    prefix ([gMASK] sop = 2) + template + history rounds + passages + question  <=  max_context_tokens - max_new_tokens
    (8192 = prompt + the tokens reserved for the answer, by default 8192 - 1024 = 7168 for the prompt)

Order of sacrifice when it does not all fit:
  1. the oldest history rounds are dropped, one at a time (the passages are what the answer must rest on);
  2. passages are kept in rank order; the first one that does not fit is cut at the last sentence boundary that
     fits (。！？；… . ! ? ; or a line break), or dropped if no sentence of it fits; later passages are dropped;
  3. if the question with the bare template (no history, no passages) does not fit, `ContextTooLong`.
Text is only ever cut between characters (Python string slicing), never inside one, and every count is of the
complete prompt string, so tokens merging across boundaries are counted as the model will see them.

Without a tokenizer (no tokenizer.model configured) `kb_qa.llm.estimate.estimate_tokens` stands in: an upper bound
of ChatGLM2's count, never below it.

Pure functions: the caller passes the prompt pieces and a `count_tokens(text) -> int` that includes the prefix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kb_qa.llm.estimate import PREFIX_TOKENS, estimate_tokens
from kb_qa.schema import History

_SENTENCE_END = re.compile(r"(?:[。！？；…!?;]+|\.(?=\s))[”’」』）》】)\"']*|\n")


class ContextTooLong(ValueError):
    """The question alone (with the template) does not fit the window with room for the answer."""


def chat_prompt(user_turn: str, history: History = ()) -> str:
    """ChatGLM2's dialogue prompt (`[Round i]\\n\\n问：…\\n\\n答：…`), the new turn ending in "答："."""
    from kb_qa.llm.tokenizer import build_chat_prompt

    return build_chat_prompt(user_turn, history)


def token_counter(tokenizer) -> tuple[Callable[[str], int], bool]:
    """(count_tokens(text) including the prefix, is_estimate) for a tokenizer, or the estimate for None.

    Accepts ChatGLM2Tokenizer (count_tokens / encode with the prefix), anything with `count_tokens(text)`, or
    anything with `encode(text) -> ids` (taken as-is, plus the prefix unless it already starts with [gMASK] sop).
    """
    if tokenizer is None:
        return estimate_tokens, True
    approximate = bool(getattr(tokenizer, "approximate", False))
    if hasattr(tokenizer, "count_tokens"):
        return (lambda text: int(tokenizer.count_tokens(text))), approximate
    prefix = list(getattr(tokenizer, "prefix_ids", []) or [])

    def count(text: str) -> int:
        ids = list(tokenizer.encode(text))
        return len(ids) if prefix and ids[:len(prefix)] == prefix else len(ids) + PREFIX_TOKENS

    return count, approximate


@dataclass
class Packed:
    user_turn: str  # this turn's text (template + passages + question): what the LLM wrapper receives
    history: list[tuple[str, str]]  # the rounds kept, oldest first
    prompt: str  # the full dialogue prompt the model sees (without the 2 prefix tokens, which are ids)
    tokens: int  # tokens of `prompt` including the prefix
    budget: int  # max_context_tokens - max_new_tokens
    passages: list[tuple[str, str]]  # (label, text) included, in order; the last may be cut
    included: int  # how many of the given passages are in the prompt (numbered [1]..[included])
    truncated: bool = False  # the last included passage was cut at a sentence boundary
    dropped_history: int = 0  # rounds dropped to make room
    estimated: bool = False  # counts are estimates (no tokenizer)
    notes: list[str] = field(default_factory=list)


def pack(question: str, passages: Sequence[tuple[str, str]], history: History, *,
         render: Callable[[str, list[tuple[str, str]]], str], count_tokens: Callable[[str], int],
         max_context_tokens: int, max_new_tokens: int, estimated: bool = False,
         build_prompt: Callable[[str, History], str] = chat_prompt) -> Packed:
    """Fit `passages` [(label, text)] in rank order, the `history` (oldest first) and `question` into the budget.

    `render(question, passages) -> user turn` applies the template (numbering the passages [1]..[n]);
    `count_tokens(full prompt) -> int` counts with the prefix; `build_prompt(user_turn, history)` wraps the turn
    in the model's dialogue format.
    """
    budget = max_context_tokens - max_new_tokens
    history = [(str(q), str(a)) for q, a in history]
    passages = [(str(label), str(text)) for label, text in passages]

    def cost(n_history: int, chosen: list[tuple[str, str]]) -> tuple[int, str, str]:
        turn = render(question, chosen)
        hist = history[len(history) - n_history:] if n_history else []
        prompt = build_prompt(turn, hist)
        return count_tokens(prompt), turn, prompt

    bare, _, _ = cost(0, [])
    if budget <= 0 or bare > budget:
        raise ContextTooLong(
            f"the question is too long: with the prompt template it takes {bare} tokens, but the window holds "
            f"{max_context_tokens} tokens of which {max_new_tokens} are reserved for the answer "
            f"(at most {max(budget, 0)} for the prompt). Shorten the question or lower llm.max_new_tokens.")

    # 1. Oldest history first: keep as many recent rounds as fit together with every passage.
    n_hist = len(history)
    while n_hist and cost(n_hist, passages)[0] > budget:
        n_hist -= 1
    # 2. Passages in rank order; the first that does not fit is cut at a sentence boundary or dropped.
    chosen: list[tuple[str, str]] = []
    truncated = False
    for label, text in passages:
        if cost(n_hist, chosen + [(label, text)])[0] <= budget:
            chosen.append((label, text))
            continue
        def fits(t: str, label: str = label) -> bool:
            return cost(n_hist, chosen + [(label, t)])[0] <= budget

        cut = _longest_fitting_prefix(text, fits)
        if cut:
            chosen.append((label, cut))
            truncated = True
        break
    tokens, turn, prompt = cost(n_hist, chosen)
    notes = []
    if n_hist < len(history):
        notes.append(f"dropped the {len(history) - n_hist} oldest history round(s) to fit the window")
    if len(chosen) < len(passages) or truncated:
        notes.append(f"{len(chosen)} of {len(passages)} passages fit" + (" (the last one cut)" if truncated else ""))
    return Packed(turn, history[len(history) - n_hist:] if n_hist else [], prompt, tokens, budget, chosen,
                  len(chosen), truncated, len(history) - n_hist, estimated, notes)


def sentence_cuts(text: str) -> list[int]:
    """Positions just after each sentence end in `text` (ascending, excluding 0 and len(text))."""
    cuts = sorted({m.end() for m in _SENTENCE_END.finditer(text)})
    return [c for c in cuts if 0 < c < len(text)]


def _longest_fitting_prefix(text: str, fits: Callable[[str], bool]) -> str:
    """The longest text[:c] (c a sentence boundary) for which fits() holds, stripped; '' if none.
    Binary search: a longer prefix never takes fewer tokens."""
    cuts = sentence_cuts(text)
    lo, hi, best = 0, len(cuts) - 1, ""
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = text[:cuts[mid]].rstrip()
        if candidate and fits(candidate):
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best
