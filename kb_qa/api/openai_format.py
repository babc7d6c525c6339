"""Pure translations between OpenAI's chat-completions request and kb_qa's question + history + system text, the
parameter checks that make an unsupported request a 400 naming its parameter, and the reply's extras (Markdown
sources block, system fingerprint). No I/O, no models."""

from __future__ import annotations

import hashlib

from kb_qa.api.engine import GenParams
from kb_qa.api.errors import ApiError
from kb_qa.api.models import ChatCompletionRequest
from kb_qa.schema import Source

KB_MODEL_PREFIX = "kb:"
TEXT_PART = "text"


def _unsupported(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code="unsupported_parameter")


def check_supported(body: ChatCompletionRequest) -> None:
    """400 for every parameter whose meaning this server cannot deliver (never a 200 that ignores it)."""
    if body.n is not None and body.n != 1:
        raise _unsupported("n", "only one choice per request (n=1) is supported; send n requests instead")
    if body.tools or body.functions:
        raise _unsupported("tools" if body.tools else "functions", "tool / function calling is not supported "
                           "by this server (ChatGLM2-6B has no tool-call format)")
    if body.tool_choice not in (None, "none", "auto"):
        raise _unsupported("tool_choice", "tool calling is not supported; leave tool_choice out or 'none'")
    if body.response_format is not None and body.response_format.get("type", "text") != "text":
        raise _unsupported("response_format", f"only {{'type': 'text'}} is supported (got "
                           f"{body.response_format.get('type')!r}): structured output is not enforced here")
    if body.logprobs:
        raise _unsupported("logprobs", "log probabilities are not returned by this server")
    if body.top_logprobs:
        raise _unsupported("top_logprobs", "log probabilities are not returned by this server")
    for i, message in enumerate(body.messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if part.type != TEXT_PART:
                    raise _unsupported(f"messages[{i}].content[{j}]", f"content parts of type {part.type!r} "
                                       "(images, audio, files) are not supported: ChatGLM2 reads text only")


def requested_kb(body: ChatCompletionRequest) -> str | None:
    if body.knowledge_base is not None:
        return body.knowledge_base
    if body.model.startswith(KB_MODEL_PREFIX):
        return body.model[len(KB_MODEL_PREFIX):]
    return None


def dialogue(body: ChatCompletionRequest) -> tuple[str, list[tuple[str, str]], str | None]:
    """(question, history, system) from OpenAI messages. System/developer messages are joined into `system`
    (ChatGLM2 has no system role: the caller puts it in front of the user's turn); user/assistant pairs become
    history; consecutive user messages fold into one turn; tool messages are ignored."""
    *prior, last = body.messages
    question = last.text()
    system = [m.text() for m in body.messages if m.role in ("system", "developer") and m.text().strip()]
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for m in prior:
        if m.role == "user":
            pending = m.text() if pending is None else pending + "\n" + m.text()
        elif m.role == "assistant" and pending is not None:
            history.append((pending, m.text()))
            pending = None
    if pending is not None:  # consecutive user messages: fold into the question
        question = pending + "\n" + question
    return question, history, "\n\n".join(system) or None


def params_of(body: ChatCompletionRequest) -> GenParams:
    temperature, top_p = body.temperature, body.top_p
    if top_p == 0:  # OpenAI allows 0, nucleus sampling does not: the closest meaning is greedy decoding
        temperature, top_p = 0.0, None
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return GenParams(temperature=temperature, top_p=top_p, seed=body.seed,
                     max_new_tokens=body.max_completion_tokens or body.max_tokens, stop=stop)


def sources_block(sources: list[Source]) -> str:
    """The sources as a Markdown block appended to the answer: numbered as the answer cites them ([1], [2])."""
    if not sources:
        return ""
    lines = [f"{i}. {s.kb + ': ' if s.kb else ''}{s.label()}" for i, s in enumerate(sources, start=1)]
    return "\n\n**Sources**\n\n" + "\n".join(lines)


def fingerprint(description: str | None) -> str:
    """OpenAI's `system_fingerprint`: changes when the serving configuration (model, device, dtype) changes."""
    return "fp_" + hashlib.sha256((description or "retrieval-only").encode("utf-8")).hexdigest()[:12]
