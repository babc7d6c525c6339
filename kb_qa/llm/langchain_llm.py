"""LangChain `LLM`s over the answering model: `invoke`, `stream`, callbacks receiving each token.

The prompt handed to `invoke`/`stream` is the user's turn (for RAG: the packed context and question); with
`chat_format=True` (default) it is wrapped as ChatGLM2's next `[Round i]` after the `history=[(q, a), ...]` passed as
a keyword, exactly as ChatGLM2's own `chat()` does. With `chat_format=False` the prompt is sent verbatim.
Per call keywords: history, temperature, top_p, max_new_tokens, repetition_penalty.
`ChatGLM2LLM` runs the model in this process; `OpenAICompatibleLLM` is the same contract over an OpenAI-compatible
endpoint (openai_backend.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import GenerationChunk
from pydantic import ConfigDict

from kb_qa.llm.tokenizer import build_chat_prompt

_OVERRIDES = ("temperature", "top_p", "max_new_tokens", "repetition_penalty")


class StreamingLLM(LLM):
    """`_call` and `_stream` built on one `_pieces` iterator; every piece goes to `on_llm_new_token`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    chat_format: bool = True

    def _pieces(self, prompt: str, history: list[tuple[str, str]], stop: list[str] | None,
                overrides: dict[str, Any]) -> Iterator[str]:
        raise NotImplementedError

    def _split_kwargs(self, kwargs: dict[str, Any]) -> tuple[list[tuple[str, str]], dict[str, Any]]:
        history = [tuple(turn) for turn in (kwargs.pop("history", None) or [])]
        overrides = {k: kwargs.pop(k) for k in _OVERRIDES if k in kwargs}
        if kwargs:
            raise TypeError(f"unexpected keyword(s) for {type(self).__name__}: {', '.join(sorted(kwargs))}")
        return history, overrides

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        history, overrides = self._split_kwargs(dict(kwargs))
        yielded = False
        for piece in self._pieces(prompt, history, stop, overrides):
            chunk = GenerationChunk(text=piece)
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yielded = True
            yield chunk
        if not yielded:  # an empty answer is still an answer (LangChain refuses a stream of no chunks)
            yield GenerationChunk(text="")

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return "".join(chunk.text for chunk in self._stream(prompt, stop=stop, run_manager=run_manager, **kwargs))


class ChatGLM2LLM(StreamingLLM):
    """ChatGLM2 running in this process (a `ChatGLM2Generator`)."""

    generator: Any  # kb_qa.llm.generation.ChatGLM2Generator
    model_name: str = "chatglm2-6b"

    @property
    def _llm_type(self) -> str:
        return "chatglm2-native"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        p = self.generator.params
        return {"model_name": self.model_name, "temperature": p.temperature, "top_p": p.top_p,
                "max_new_tokens": p.max_new_tokens, "repetition_penalty": p.repetition_penalty}

    def _pieces(self, prompt, history, stop, overrides):
        text = build_chat_prompt(prompt, history) if self.chat_format else prompt
        return self.generator.stream(text, stop=tuple(stop or ()), **overrides)


class OpenAICompatibleLLM(StreamingLLM):
    """LangChain LLM over `OpenAICompatibleClient`; same keywords as ChatGLM2LLM (history, temperature, ...)."""

    client: Any  # kb_qa.llm.openai_backend.OpenAICompatibleClient

    @property
    def _llm_type(self) -> str:
        return "openai-compatible"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        p = self.client.params
        return {"model_name": self.client.model, "base_url": self.client.base_url, "temperature": p.temperature,
                "top_p": p.top_p, "max_new_tokens": p.max_new_tokens}

    def _pieces(self, prompt: str, history: Sequence[tuple[str, str]], stop, overrides) -> Iterator[str]:
        # The server formats the dialogue itself: chat_format only decides whether history is sent.
        return self.client.stream_chat(prompt, history if self.chat_format else (), stop=tuple(stop or ()),
                                       **overrides)
