"""Prompt templates for grounded answers, loaded from `configs/prompts/<language>.yaml` (zh default, en).

A template file holds: `rag_template` ({context}, {question}), `source_format` ({n}, {label}, {text}),
`source_separator`, `material_open`/`material_close` (the markers fencing retrieved text), the fixed replies
`no_answer` and `retrieval_only_header`, the follow-up `rewrite_template` ({history}, {question}) with its
`rewrite_history_line` ({question}, {answer}), and `followup_markers` (pronouns for the fallback rewriter).

Only the named placeholders are substituted (never `str.format` on user text), and the fence markers are
defused inside retrieved text, so a document cannot end the material block and speak as the instructions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kb_qa.locations import packaged_configs

PROMPTS_DIR = packaged_configs() / "prompts"  # configs/prompts/ in a checkout, kb_qa/configs/prompts/ installed
_REQUIRED = ("rag_template", "source_format", "source_separator", "material_open", "material_close", "no_answer",
             "retrieval_only_header", "rewrite_template", "rewrite_history_line")


class PromptError(ValueError):
    pass


@dataclass(frozen=True)
class Prompts:
    language: str
    rag_template: str
    source_format: str
    source_separator: str
    material_open: str
    material_close: str
    no_answer: str
    retrieval_only_header: str
    rewrite_template: str
    rewrite_history_line: str
    followup_markers: tuple[str, ...] = ()

    def defuse(self, text: str) -> str:
        """Retrieved text (or a file name) that cannot open or close a turn or the material frame, in any
        spelling (kb_qa.qa.framing: NFKC + confusables before checking)."""
        from kb_qa.qa.framing import neutralise

        return neutralise(text)

    def passage(self, n: int, label: str, text: str) -> str:
        return fill(self.source_format, n=str(n), label=self.defuse(label), text=self.defuse(text))

    def context(self, passages: list[tuple[str, str]]) -> str:
        """Numbered passages [(label, text)] -> the {context} block ([1] .. [n])."""
        return self.source_separator.join(self.passage(i, label, text)
                                          for i, (label, text) in enumerate(passages, start=1))

    def rag(self, question: str, context: str) -> str:
        return fill(self.rag_template, context=context, question=question)

    def rewrite(self, question: str, history: list[tuple[str, str]]) -> str:
        lines = "\n".join(fill(self.rewrite_history_line, question=q, answer=a) for q, a in history)
        return fill(self.rewrite_template, history=lines, question=question)


_PLACEHOLDER = re.compile(r"\{(context|question|n|label|text|history|answer)\}")


def fill(template: str, **values: str) -> str:
    """Substitute the known {placeholders} present in `values`; everything else (other braces) stays as written."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


@lru_cache(maxsize=16)
def _load(path: str) -> Prompts:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise PromptError(f"prompt templates not found: {file}")
    with open(file, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    missing = [k for k in _REQUIRED if not isinstance(data.get(k), str)]
    if missing:
        raise PromptError(f"{file}: missing or not text: {', '.join(missing)}")
    if "{context}" not in data["rag_template"] or "{question}" not in data["rag_template"]:
        raise PromptError(f"{file}: rag_template must contain {{context}} and {{question}}")
    return Prompts(language=str(data.get("language", file.stem)), followup_markers=tuple(
        str(m) for m in data.get("followup_markers") or ()), **{k: data[k] for k in _REQUIRED})


def load_prompts(language: str = "zh", folder: str | Path | None = None) -> Prompts:
    """The templates for `language` ('zh' or 'en'), from `folder` (default configs/prompts/); cached."""
    return _load(str(Path(folder or PROMPTS_DIR) / f"{language}.yaml"))
