"""Measure retrieval on a user's own knowledge base, as it is (nothing re-ingested or re-embedded).

    python -m kb_qa.eval --kb NAME --questions my.jsonl [--json]

my.jsonl, one question per line:
    {"question": "RTX 4090 的显存是多少？", "source": "specs/gpu.md", "answer": "24GB"}
    {"question": "今天天气怎么样？", "source": null}
  question   the text asked
  source     the document (path as `kb show` lists it; a file name alone matches it in any folder) that answers it,
             or a list of such paths; null or absent = the KB does not cover it and it should be refused
  answer     optional: a string that should appear in the retrieved passages (compared after NFKC and lower-casing)

Reported (the default settings, or those of --config / KB_QA_* variables):
  hit@1/5/10, MRR@10       over questions with a source
  answer_in_retrieved       share of questions with an answer whose answer string is in the top_k passages
  refused_answerable        share of questions with a source that got no passage (the no-answer reply)
  refused_off_topic         share of questions without a source that got no passage (higher is better)
  p50_ms / p95_ms           retrieval latency per question
  calibration               the KB's measured reliability of each retriever (kb_qa.retrieval.calibration)
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

KS = (1, 5, 10)


class QuestionsError(ValueError):
    pass


@dataclass
class Question:
    text: str
    sources: tuple[str, ...]  # () = off-topic: should be refused
    answer: str | None = None


def load_questions(path: str | Path) -> list[Question]:
    path = Path(path)
    if not path.is_file():
        raise QuestionsError(f"{path}: no such file")
    out: list[Question] = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QuestionsError(f"{path.name} line {line_no}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not obj["question"].strip():
                raise QuestionsError(f"{path.name} line {line_no}: needs a non-empty 'question' string")
            src = obj.get("source")
            if src is None:
                sources: tuple[str, ...] = ()
            elif isinstance(src, str):
                sources = (src,)
            elif isinstance(src, list) and all(isinstance(s, str) for s in src):
                sources = tuple(src)
            else:
                raise QuestionsError(f"{path.name} line {line_no}: 'source' must be a path, a list of paths or null")
            answer = obj.get("answer")
            if answer is not None and not isinstance(answer, str):
                raise QuestionsError(f"{path.name} line {line_no}: 'answer' must be a string")
            out.append(Question(obj["question"], sources, answer or None))
    if not out:
        raise QuestionsError(f"{path}: no questions")
    return out


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def source_matches(retrieved: str, expected: str) -> bool:
    """A retrieved document path matches an expected one: the same path, or the expected name alone (no '/')
    equal to the retrieved path's file name."""
    retrieved, expected = retrieved.strip("/"), expected.strip().strip("/")
    if retrieved == expected:
        return True
    return "/" not in expected and retrieved.rsplit("/", 1)[-1] == expected


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    rank = (len(s) - 1) * pct / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def evaluate_questions(app, kb_name: str, questions: list[Question]) -> dict:
    """Ask each question against the existing KB `kb_name` with the app's settings; the figures as one dict."""
    from kb_qa.retrieval.retriever import retriever_for

    settings = app.settings.retrieval
    retriever = retriever_for(app)
    kb = app.kb(kb_name)  # raises the usual error for an unknown KB
    depth = max(max(KS), settings.top_k)
    calibration = retriever.calibration(kb, settings.candidates)
    hits = {k: 0 for k in KS}
    rr = 0.0
    answerable = refused_answerable = off_topic = refused_off_topic = with_answer = answer_found = 0
    latencies: list[float] = []
    for q in questions:
        t = time.perf_counter()
        sources = retriever.search_detailed(q.text, kb_name, top_k=depth).sources
        latencies.append((time.perf_counter() - t) * 1000.0)
        if not q.sources:
            off_topic += 1
            refused_off_topic += not sources
            continue
        answerable += 1
        refused_answerable += not sources
        rank = next((i for i, s in enumerate(sources, start=1)
                     if any(source_matches(s.source, e) for e in q.sources)), None)
        if rank is not None:
            for k in KS:
                hits[k] += rank <= k
            rr += 1.0 / rank if rank <= 10 else 0.0
        if q.answer:
            with_answer += 1
            answer_found += _fold(q.answer) in _fold("\n".join(s.text for s in sources[:settings.top_k]))
    n = max(answerable, 1)
    report = {
        "kb": kb_name,
        "questions": len(questions),
        "answerable": answerable,
        "off_topic": off_topic,
        "embedding_model": app.settings.embedding.model,
        "score_threshold": settings.score_threshold,
        "top_k": settings.top_k,
        **{f"hit@{k}": round(hits[k] / n, 4) for k in KS},
        "mrr@10": round(rr / n, 4),
        "answer_in_retrieved": round(answer_found / with_answer, 4) if with_answer else None,
        "refused_answerable": round(refused_answerable / n, 4) if answerable else None,
        "refused_off_topic": round(refused_off_topic / off_topic, 4) if off_topic else None,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "calibration": calibration.summary(),
    }
    return report


def format_report(report: dict) -> str:
    def fig(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [f"{report['kb']}: {report['questions']} questions ({report['answerable']} with a source, "
             f"{report['off_topic']} off-topic); embedding {report['embedding_model']}, "
             f"threshold {report['score_threshold']}",
             f"hit@1 {fig(report['hit@1'])}  hit@5 {fig(report['hit@5'])}  hit@10 {fig(report['hit@10'])}  "
             f"MRR@10 {fig(report['mrr@10'])}  answer in retrieved {fig(report['answer_in_retrieved'])}",
             f"refused: answerable {fig(report['refused_answerable'])}  off-topic {fig(report['refused_off_topic'])}"
             f"  |  latency p50 {report['p50_ms']:.1f} ms, p95 {report['p95_ms']:.1f} ms",
             f"calibration: {report['calibration']}"]
    return "\n".join(lines)
