"""`ChatGLM2ChatModel`: ChatGLM2 as a LangChain chat model (`BaseChatModel`), for LCEL chains and agents.

    chat = ChatGLM2ChatModel(generator=handle.generator)        # or ChatGLM2ChatModel.from_app(app)
    chat.invoke([SystemMessage("..."), HumanMessage("q1"), AIMessage("a1"), HumanMessage("q2")], max_tokens=64)
    for chunk in chat.stream(messages, stop=["\\n\\n"]): ...

Messages become ChatGLM2's dialogue rounds (`[Round i] 问：... 答：...`, tokenizer.build_chat_prompt): each
Human message opens a round, the AI message after it is that round's answer, the last Human message is the new
question. ChatGLM2 has no system role, so the system text goes in front of the first question, where the model
reads it before anything else. Consecutive messages of one role are joined (a blank line between them).

Per call: `max_tokens` (answer tokens; `max_new_tokens` also accepted), `temperature`, `top_p`, `stop`, `seed`.
The answer's message carries `usage_metadata` (ChatGLM2 tokens of the prompt and of the answer) and
`response_metadata["finish_reason"]` ('stop' or 'length'), as langchain-openai's messages do.

Built on the generator (kb_qa.llm.generation.ChatGLM2Generator or any object with its `stream(prompt, seed=,
on_finish=, **sampling)` and `tokenizer`): its lock serialises generation, and from `App` that lock is the App's
one generation lock. Does not load models (factory.py / App.llm) or know the knowledge base (kb_qa.qa).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from kb_qa.errors import UnavailableError, UsageError
from kb_qa.llm.tokenizer import build_chat_prompt

_SAMPLING = ("temperature", "top_p", "seed", "repetition_penalty")


class UnsupportedMessages(UsageError):
    """The messages cannot be put in ChatGLM2's rounds (no final question, a tool message, an image part...)."""


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise UnsupportedMessages(f"ChatGLM2 reads text only; a {kind!r} content part cannot be sent")
    return "".join(parts)


def messages_to_rounds(messages: Sequence[BaseMessage]) -> tuple[str, list[tuple[str, str]]]:
    """(question, history) for ChatGLM2: the system text before the first question, Human/AI pairs as rounds."""
    system, question, history = split_dialogue(messages)
    if system is None:
        return question, history
    if not history:
        return system + ("\n\n" + question if question else ""), history
    first, answer = history[0]
    return question, [(system + ("\n\n" + first if first else ""), answer), *history[1:]]


def split_dialogue(messages: Sequence[BaseMessage]) -> tuple[str | None, str, list[tuple[str, str]]]:
    """(system text or None, question, history) of a dialogue: system messages joined, Human/AI pairs as rounds
    (an opening AI message answers an empty question), the last Human message the question."""
    system: list[str] = []
    turns: list[list[str]] = []  # [role, text] with consecutive same-role messages merged
    for message in messages:
        if isinstance(message, SystemMessage):
            system.append(_text(message))
            continue
        if isinstance(message, HumanMessage):
            role = "human"
        elif isinstance(message, AIMessage):
            role = "ai"
        else:
            raise UnsupportedMessages(f"ChatGLM2 has no {message.type!r} role (system, human and ai messages only)")
        text = _text(message)
        if turns and turns[-1][0] == role:
            turns[-1][1] += "\n\n" + text
        else:
            turns.append([role, text])
    if not turns or turns[-1][0] != "human":
        raise UnsupportedMessages("the last message must be a human message: the question ChatGLM2 answers")
    if turns[0][0] == "ai":  # an opening assistant greeting answers no question: its round's question is empty
        turns.insert(0, ["human", ""])
    history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    return "\n\n".join(s for s in system if s) or None, turns[-1][1], history


def _holding(lock, pieces: Iterator[str]) -> Iterator[str]:
    with lock:
        try:
            yield from pieces
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()


class ChatGLM2ChatModel(BaseChatModel):
    """ChatGLM2 (local generator) as a LangChain chat model; see the module docstring."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    generator: Any  # kb_qa.llm.generation.ChatGLM2Generator (or the same stream()/tokenizer contract)
    model_name: str = "chatglm2-6b"
    max_tokens: int | None = None  # default answer tokens; None = the generator's own default
    temperature: float | None = None
    top_p: float | None = None
    lock: Any = None  # an outer lock held while generating (App's generation lock when not the generator's own)

    @classmethod
    def from_app(cls, app, **fields: Any) -> ChatGLM2ChatModel:
        """The chat model over `app.llm` (generation under the App's one lock). Local ChatGLM2 only."""
        handle = app.llm
        generator = getattr(handle, "generator", None) if handle is not None else None
        if generator is None:
            raise UnavailableError(f"no local ChatGLM2 to chat with ({app.llm_status()})")
        fields.setdefault("model_name", app.llm_status().name or "chatglm2-6b")
        if getattr(generator, "lock", None) is not app.generation_lock:  # an injected model: serialise it too
            fields.setdefault("lock", app.generation_lock)
        return cls(generator=generator, **fields)

    @property
    def _llm_type(self) -> str:
        return "chatglm2-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "top_p": self.top_p}

    def _sampling(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        max_tokens = kwargs.pop("max_tokens", kwargs.pop("max_new_tokens", self.max_tokens))
        sampling = {"max_new_tokens": max_tokens, "temperature": kwargs.pop("temperature", self.temperature),
                    "top_p": kwargs.pop("top_p", self.top_p), "stop": tuple(stop) if stop else None}
        sampling.update({k: kwargs.pop(k) for k in _SAMPLING if k in kwargs})
        if kwargs:
            raise TypeError(f"unexpected keyword(s) for {type(self).__name__}: {', '.join(sorted(kwargs))}")
        return {k: v for k, v in sampling.items() if v is not None}

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        question, history = messages_to_rounds(messages)
        sampling = self._sampling(stop, kwargs)
        prompt = build_chat_prompt(question, history)
        finished: dict[str, Any] = {}
        seed = sampling.pop("seed", None)
        pieces = self.generator.stream(prompt, seed=seed, on_finish=lambda n, why: finished.update(n=n, why=why),
                                       **sampling)
        if self.lock is not None:
            pieces = _holding(self.lock, pieces)
        try:
            for piece in pieces:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # the caller stopped reading: the generator ends the model's run at its next token
        prompt_tokens = self.generator.tokenizer.count_tokens(prompt)
        completion = finished.get("n", 0)
        reason = finished.get("why", "stop")
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", response_metadata={"finish_reason": reason,
                                                                  "model_name": self.model_name},
                                   usage_metadata={"input_tokens": prompt_tokens, "output_tokens": completion,
                                                   "total_tokens": prompt_tokens + completion}),
            generation_info={"finish_reason": reason})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        total: ChatGenerationChunk | None = None
        for chunk in self._stream(messages, stop=stop, run_manager=run_manager, **kwargs):
            total = chunk if total is None else total + chunk
        assert total is not None  # _stream always ends with the usage chunk
        message = total.message
        ai = AIMessage(content=message.content, response_metadata=message.response_metadata,
                       usage_metadata=getattr(message, "usage_metadata", None))  # set on AIMessageChunk
        return ChatResult(generations=[ChatGeneration(message=ai, generation_info=total.generation_info)])
