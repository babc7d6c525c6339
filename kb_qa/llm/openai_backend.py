"""The answering model behind any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM serving ChatGLM2, FastChat,
Xinference, kb_qa's own API, ...), with the same contract as the in-process model: chat with history, streaming,
sampling settings. Chosen by `llm.backend: openai`; the LangChain wrapper is `OpenAICompatibleLLM`.

Requests go through the official `openai` SDK (its wire format, SSE parsing and error classes). Retries are ours,
not the SDK's: a 429/503/502/504 or a connection failure is retried up to `max_retries` times, each wait being the
server's `Retry-After` (seconds, or `retry-after-ms`) or an exponential back-off, and all waits together bounded by
`retry_budget_s`, so a busy server (e.g. kb_qa's API at `api.max_queue: 1`) delays callers instead of failing
them, and a dead one fails in bounded time. A stream is retried only before its first piece arrives. Answers get the
same post-processing as the local model (strip, "[[训练时间]]", stop strings).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import openai

from kb_qa.errors import UnavailableError
from kb_qa.llm.text import ResponseAssembler, SamplingParams
from kb_qa.llm.tokenizer import History

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_S = 8.0  # longest wait without a Retry-After hint


class OpenAIBackendError(UnavailableError):
    """The endpoint refused, failed or could not be reached (after the retries the budget allowed)."""


def retry_after_s(response: httpx.Response | None) -> float | None:
    """The server's hint, in seconds: `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    if response is None:
        return None
    headers = response.headers
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        if "retry-after" in headers:
            value = headers["retry-after"]
            try:
                return max(0.0, float(value))
            except ValueError:
                from email.utils import parsedate_to_datetime

                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None
    return None


class OpenAICompatibleClient:
    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY", timeout_s: float = 120.0,
                 params: SamplingParams | None = None, max_retries: int = 4, retry_budget_s: float = 120.0,
                 http_client: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.params = params or SamplingParams()
        self.max_retries = max_retries
        self.retry_budget_s = retry_budget_s
        self._sleep = sleep
        # openai's annotations name only httpx2's types; at run time it takes httpx's too (is_legacy_httpx_sync_client,
        # normalize_httpx_timeout), which the tests' MockTransport clients are
        self._sdk = openai.OpenAI(base_url=self.base_url, api_key=api_key or "EMPTY", max_retries=0,
                                  timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),  # type: ignore[arg-type]
                                  http_client=http_client)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, llm_settings) -> OpenAICompatibleClient:
        return cls(llm_settings.openai_base_url, llm_settings.openai_model, api_key=llm_settings.openai_api_key,
                   timeout_s=llm_settings.openai_timeout_s, params=SamplingParams.from_settings(llm_settings),
                   max_retries=getattr(llm_settings, "openai_max_retries", 4),
                   retry_budget_s=getattr(llm_settings, "openai_retry_budget_s", 120.0))

    def close(self) -> None:
        self._sdk.close()

    def describe(self) -> str:
        return f"{self.model} via OpenAI-compatible API at {self.base_url}"

    @staticmethod
    def messages(question: str, history: History = ()) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for asked, answered in history:
            out += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        out.append({"role": "user", "content": question})
        return out

    def _body(self, question: str, history: History, params: SamplingParams, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages(question, history),
            "temperature": params.temperature,
            "max_tokens": params.max_new_tokens,
        }
        if params.temperature > 0:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop"] = list(params.stop)
        if seed is not None:
            body["seed"] = seed
        if params.repetition_penalty != 1.0:
            body["extra_body"] = {"repetition_penalty": params.repetition_penalty}  # vLLM/FastChat extension
        return body

    # -- retries -------------------------------------------------------------------------------------------
    def _with_retries(self, call: Callable[[], T]) -> T:
        """`call()`, retried on capacity errors and connection failures within the attempt and time budgets."""
        waited, attempt = 0.0, 0
        while True:
            try:
                return call()
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                status = getattr(error, "status_code", None)
                retryable = isinstance(error, openai.APIConnectionError) or status in RETRY_STATUSES
                if not retryable:
                    raise self._error(error) from error
                hint = retry_after_s(getattr(error, "response", None))
                wait = hint if hint is not None else min(MAX_BACKOFF_S, 0.5 * 2 ** attempt) * random.uniform(0.8, 1.2)
                if attempt >= self.max_retries or waited + wait > self.retry_budget_s:
                    raise self._error(error, attempts=attempt + 1) from error
                log.info("%s answered %s; retry %d/%d in %.1f s", self.base_url, status or "no connection",
                         attempt + 1, self.max_retries, wait)
                self._sleep(wait)
                waited += wait
                attempt += 1

    def _error(self, error: Exception, attempts: int = 1) -> OpenAIBackendError:
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        if isinstance(error, openai.APIConnectionError):
            return OpenAIBackendError(f"cannot reach {self.base_url}: {error}{tries}")
        message = error.message if isinstance(error, openai.APIError) else str(error)
        body = getattr(error, "body", None)
        if isinstance(body, dict):
            message = (body.get("error") or {}).get("message", message) if isinstance(body.get("error"), dict) \
                else body.get("message", message)
        status = getattr(error, "status_code", "?")
        return OpenAIBackendError(f"{self.base_url}/chat/completions answered {status}: {message}{tries}")

    # -- answering -----------------------------------------------------------------------------------------
    def stream_chat(self, question: str, history: History = (), *, seed: int | None = None,
                    **overrides) -> Iterator[str]:
        """Answer pieces as the server streams them."""
        params = self.params.updated(**overrides)
        body = self._body(question, history, params, seed)
        assembler = ResponseAssembler(params.stop)
        stream = self._with_retries(lambda: self._sdk.chat.completions.create(stream=True, **body))
        try:
            for event in stream:
                for choice in event.choices[:1]:
                    piece = assembler.feed((choice.delta.content or "") if choice.delta else "")
                    if piece:
                        yield piece
                if assembler.stopped:
                    break
        except openai.APIError as error:  # an error event mid-stream, or the connection dropped
            raise OpenAIBackendError(f"{self.base_url}: the stream failed: {error}") from error
        except httpx.HTTPError as error:
            raise OpenAIBackendError(f"{self.base_url}: the stream failed: {error}") from error
        finally:
            stream.close()
        tail = assembler.finish()
        if tail:
            yield tail

    def chat(self, question: str, history: History = (), *, seed: int | None = None, **overrides) -> str:
        """The whole answer from one non-streaming request."""
        params = self.params.updated(**overrides)
        body = self._body(question, history, params, seed)
        completion = self._with_retries(lambda: self._sdk.chat.completions.create(**body))
        try:
            content = completion.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError) as error:
            raise OpenAIBackendError(f"{self.base_url}: unexpected response {completion!r:.200}") from error
        assembler = ResponseAssembler(params.stop)
        return assembler.feed(content) + assembler.finish()

    def stream(self, prompt: str, **overrides) -> Iterator[str]:
        """A verbatim prompt, sent as one user message (the server still applies its chat template)."""
        return self.stream_chat(prompt, (), **overrides)
