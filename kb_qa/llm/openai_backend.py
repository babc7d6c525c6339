"""The answering model behind any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM serving ChatGLM2, FastChat,
Xinference, ...), with the same contract as the in-process model: chat with history, streaming, sampling settings.

The history becomes alternating user/assistant messages; the server applies the model's chat template. Streaming
reads server-sent events (`data: {...}` lines up to `data: [DONE]`). Answers get the same post-processing as the local
model (strip, "[[训练时间]]", stop strings). Chosen by `llm.backend: openai`. Uses httpx only (no OpenAI SDK, no
torch); the LangChain wrapper is `OpenAICompatibleLLM` in langchain_llm.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from kb_qa.llm.text import ResponseAssembler, SamplingParams
from kb_qa.llm.tokenizer import History


class OpenAIBackendError(RuntimeError):
    pass


class OpenAICompatibleClient:
    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY", timeout_s: float = 120.0,
                 params: SamplingParams | None = None, transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.params = params or SamplingParams()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)))

    @classmethod
    def from_settings(cls, llm_settings) -> OpenAICompatibleClient:
        return cls(llm_settings.openai_base_url, llm_settings.openai_model, api_key=llm_settings.openai_api_key,
                   timeout_s=llm_settings.openai_timeout_s, params=SamplingParams.from_settings(llm_settings))

    def close(self) -> None:
        self._http.close()

    def describe(self) -> str:
        return f"{self.model} via OpenAI-compatible API at {self.base_url}"

    @staticmethod
    def messages(question: str, history: History = ()) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for asked, answered in history:
            out += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        out.append({"role": "user", "content": question})
        return out

    def _body(self, question: str, history: History, params: SamplingParams, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages(question, history),
            "temperature": params.temperature,
            "max_tokens": params.max_new_tokens,
            "stream": stream,
        }
        if params.temperature > 0:
            body["top_p"] = params.top_p
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty  # vLLM/FastChat extension
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        response.read()
        try:
            detail = response.json().get("error", response.text)
            if isinstance(detail, dict):
                detail = detail.get("message", detail)
        except (ValueError, AttributeError):
            detail = response.text
        raise OpenAIBackendError(f"{self.base_url}/chat/completions answered {response.status_code}: {detail}")

    def stream_chat(self, question: str, history: History = (), **overrides) -> Iterator[str]:
        """Answer pieces as the server streams them."""
        params = self.params.updated(**overrides)
        assembler = ResponseAssembler(params.stop)
        body = self._body(question, history, params, stream=True)
        try:
            with self._http.stream("POST", "/chat/completions", json=body) as response:
                self._raise_for(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, ": keep-alive" comments, "event:" lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise OpenAIBackendError(f"{self.base_url}: {event['error']}")
                    for choice in event.get("choices", [])[:1]:
                        piece = assembler.feed((choice.get("delta") or {}).get("content") or "")
                        if piece:
                            yield piece
                    if assembler.stopped:
                        break
        except httpx.HTTPError as error:
            raise OpenAIBackendError(f"cannot reach {self.base_url}: {error}") from error
        tail = assembler.finish()
        if tail:
            yield tail

    def chat(self, question: str, history: History = (), **overrides) -> str:
        """The whole answer from one non-streaming request."""
        params = self.params.updated(**overrides)
        try:
            response = self._http.post("/chat/completions", json=self._body(question, history, params, stream=False))
        except httpx.HTTPError as error:
            raise OpenAIBackendError(f"cannot reach {self.base_url}: {error}") from error
        self._raise_for(response)
        try:
            content = response.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise OpenAIBackendError(f"{self.base_url}: unexpected response {response.text[:200]!r}") from error
        assembler = ResponseAssembler(params.stop)
        return assembler.feed(content) + assembler.finish()

    def stream(self, prompt: str, **overrides) -> Iterator[str]:
        """A verbatim prompt, sent as one user message (the server still applies its chat template)."""
        return self.stream_chat(prompt, (), **overrides)
