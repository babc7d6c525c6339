"""Text generation with a loaded ChatGLM2: streaming, sampling settings, one generation at a time per model.

- `stream(prompt)` yields text pieces as tokens arrive (a token-id streamer; decoding happens in the caller's
  thread, holding back incomplete UTF-8 byte pieces); `generate(prompt)` is one `model.generate` call decoded once.
  Both post-process like ChatGLM2's `chat()` (strip, "[[训练时间]]" -> "2023年"): streamed text == generated text.
- temperature 0 = greedy; top_p, repetition_penalty, max_new_tokens honoured; stop at eos; the prompt plus the answer
  fit `max_context_tokens` (ChatGLM2's 8K dialogue window).
- NaN/inf scores are replaced as the original does (zeros, token 5 = 5e4) instead of crashing the sampler.
- A lock per model: concurrent callers wait their turn. CUDA out-of-memory -> `GenerationOOMError`, cache freed.
- GPU speed (opt-in, `static_cache=True`): a pre-allocated static KV cache of the whole window, so the decode step has
  fixed shapes and transformers compiles it (torch.compile, CUDA graphs) once instead of per prompt length.
Does not format chat prompts (tokenizer.py), post-process text (text.py) or know about LangChain (langchain_llm.py).
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, cast

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from kb_qa.llm.text import (  # noqa: F401 (re-exported)
    TRAINING_TIME_MARK,
    IncrementalDecoder,
    ResponseAssembler,
    SamplingParams,
    apply_stop,
    process_response,
)
from kb_qa.llm.tokenizer import ChatGLM2Tokenizer, History, build_chat_prompt

if TYPE_CHECKING:
    from transformers import StaticCache

log = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    pass


class PromptTooLongError(GenerationError):
    pass


class GenerationOOMError(GenerationError):
    pass


class InvalidScoreGuard(LogitsProcessor):
    """ChatGLM2's InvalidScoreLogitsProcessor, per row: a row with NaN or +inf scores (or nothing finite) becomes
    zeros with token 5 at 5e4, so sampling continues instead of raising. -inf alone is legitimate (top_p's filter)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # No `if bad.any()`: that would stall the GPU pipeline with a device->host sync every token.
        bad = torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1) | ~torch.isfinite(scores).any(-1)
        fallback = torch.zeros_like(scores)
        fallback[:, 5] = 5e4
        # (FloatTensor/BoolTensor: the legacy names transformers' interface declares; torch ops return Tensor)
        return cast(torch.FloatTensor, torch.where(bad[:, None], fallback, scores))


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return cast(torch.BoolTensor,
                    torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device))


class _TokenQueue(BaseStreamer):
    """Receives new token ids from `generate` (the prompt's first `put` skipped) and hands them to the reader."""

    _END = object()

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(self._END)

    def fail(self, error: BaseException) -> None:
        self.queue.put(error)


class ChatGLM2Generator:
    """Generation for one loaded model: `stream`/`generate` on a prompt string, `stream_chat`/`chat` on a question
    with history, `generate_batch` for several prompts (left-padded)."""

    def __init__(self, model, tokenizer: ChatGLM2Tokenizer, *, params: SamplingParams | None = None,
                 max_context_tokens: int = 8192, static_cache: bool = False, compile: bool | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.params = params or SamplingParams()
        self.max_context_tokens = max_context_tokens
        self.device = model.get_input_embeddings().weight.device
        self.lock = threading.Lock()  # one generation at a time per model
        # Every generate() runs on this one thread: compiled CUDA graphs are recorded per thread, so a fresh thread
        # per request would re-record them each time.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatglm2-generate")
        # static cache: fixed decode shapes; `compile` (default: on with CUDA) lets transformers torch.compile them.
        self.static_cache = static_cache
        self.compile = (self.device.type == "cuda") if compile is None else compile
        self._cache: StaticCache | None = None
        self._cache_batch = 0  # the batch size _cache was built for (read only once _cache is set)

    # -- prompts -----------------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)

    def _budget(self, prompt_tokens: int, params: SamplingParams) -> int:
        room = self.max_context_tokens - prompt_tokens
        if room < 1:
            raise PromptTooLongError(
                f"the prompt is {prompt_tokens} tokens; ChatGLM2's window is {self.max_context_tokens} "
                "(prompt + answer): shorten the context or the history"
            )
        return min(params.max_new_tokens, room)

    def _generation_kwargs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams,
                           cancel: threading.Event, streamer=None) -> dict:
        from transformers import GenerationConfig

        max_new = self._budget(input_ids.shape[1], params)
        sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=50 if sample else None,  # transformers' default, which the original chat() ran with
            repetition_penalty=params.repetition_penalty,
            eos_token_id=[self.tokenizer.eos_token_id],
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=None,
        )
        prefix = getattr(self.model, "kb_qa_prefix", None)  # P-tuning v2 (prefix.py)
        if prefix is not None:
            if self.static_cache:
                raise GenerationError("a P-tuning prefix needs the dynamic cache: set llm.static_cache=false")
            # generate takes the cache's P entries as already-seen tokens: P placeholder ids (never read), the mask
            # extended over the prefix, positions from P (the prefix keys are rotated to make that exact).
            p, b = prefix.length, input_ids.shape[0]
            input_ids = torch.cat([input_ids.new_full((b, p), self.tokenizer.pad_token_id), input_ids], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones((b, p)), attention_mask], dim=1)
        kwargs = dict(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
            logits_processor=LogitsProcessorList([InvalidScoreGuard()]),
            stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]), streamer=streamer,
        )
        if prefix is not None:
            kwargs["past_key_values"] = prefix.cache(input_ids.shape[0])
        elif self.static_cache:
            kwargs["past_key_values"] = self._static_cache(input_ids.shape[0])
            if not self.compile:
                config.disable_compile = True
        return kwargs

    def _static_cache(self, batch_size: int):
        """One pre-allocated cache of the whole window, reset and reused (same shapes = one compilation)."""
        from transformers import StaticCache

        if self._cache is None or self._cache_batch != batch_size:
            self._cache = StaticCache(config=self.model.config, max_cache_len=self.max_context_tokens)
            self._cache_batch = batch_size
        else:
            with torch.inference_mode():  # its tensors were created inside generate's inference mode
                self._cache.reset()
        return self._cache

    def _tensors(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(r) for r in rows)
        ids = [[self.tokenizer.pad_token_id] * (longest - len(r)) + r for r in rows]
        mask = [[0] * (longest - len(r)) + [1] * len(r) for r in rows]
        return (torch.tensor(ids, dtype=torch.long, device=self.device),
                torch.tensor(mask, dtype=torch.long, device=self.device))

    # -- running generate ---------------------------------------------------------------------------------------
    def _run_generate(self, kwargs: dict) -> torch.Tensor:
        try:
            with torch.inference_mode():
                return self.model.generate(**kwargs)
        except torch.OutOfMemoryError as error:
            prompt = kwargs["input_ids"].shape
            kwargs.clear()  # drop references to device tensors before freeing
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise GenerationOOMError(
                f"out of GPU memory while generating (batch {prompt[0]}, prompt {prompt[1]} tokens): shorten the "
                "context or llm.max_new_tokens, or load with llm.quantization=int8/int4; the cache was freed"
            ) from error

    def stream(self, prompt: str, *, seed: int | None = None, on_finish=None, **overrides) -> Iterator[str]:
        """Answer text pieces for `prompt` (a complete ChatGLM2 prompt string) as they are generated.

        `seed`: torch's RNG is seeded with it under the model's lock, right before sampling (reproducible answers).
        `on_finish(generated_tokens, finish_reason)`: called once the answer is complete, before its last piece;
        finish_reason is 'stop' (end token or stop string) or 'length' (max_new_tokens or the window)."""
        params = self.params.updated(**overrides)
        ids = self.encode_prompt(prompt)
        self._budget(len(ids), params)  # fail before taking the lock
        return self._stream_ids(ids, params, seed, on_finish)

    def _stream_ids(self, ids: list[int], params: SamplingParams, seed: int | None = None,
                    on_finish=None) -> Iterator[str]:
        cancel = threading.Event()
        streamer = _TokenQueue()
        decoder = IncrementalDecoder(self.tokenizer)
        assembler = ResponseAssembler(params.stop)
        with self.lock:
            input_ids, attention_mask = self._tensors([ids])
            kwargs = self._generation_kwargs(input_ids, attention_mask, params, cancel, streamer)

            def work() -> None:
                try:
                    if seed is not None:
                        torch.manual_seed(seed)
                    self._run_generate(kwargs)
                except BaseException as error:  # handed to the reader, which re-raises it
                    streamer.fail(error)
                else:
                    streamer.end()

            done = self._worker.submit(work)
            generated, ended = 0, False  # answer tokens (end token not counted); whether the end token came
            try:
                while True:
                    item = streamer.queue.get()
                    if item is _TokenQueue._END:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    ids_new = [i for i in item if i != self.tokenizer.eos_token_id]
                    generated += len(ids_new)
                    ended = ended or len(ids_new) < len(item)
                    piece = assembler.feed(decoder.push(ids_new))
                    if piece:
                        yield piece
                    if assembler.stopped:
                        cancel.set()
                        break
                tail = assembler.feed(decoder.flush()) + assembler.finish()
                if on_finish is not None:
                    on_finish(generated, "stop" if ended or assembler.stopped else "length")
                if tail:
                    yield tail
            finally:
                cancel.set()  # the reader stopped early (or a stop string): end generate at the next step
                done.result()  # work() never raises: its errors went to the reader

    def generate(self, prompt: str, **overrides) -> str:
        """The whole answer for `prompt`, from one `model.generate` call (no streamer)."""
        return self.generate_batch([prompt], **overrides)[0]

    def generate_batch(self, prompts: Sequence[str], **overrides) -> list[str]:
        """Answers for several prompts in one left-padded batch."""
        params = self.params.updated(**overrides)
        rows = [self.encode_prompt(p) for p in prompts]
        for row in rows:
            self._budget(len(row), params)
        with self.lock:
            input_ids, attention_mask = self._tensors(rows)
            kwargs = self._generation_kwargs(input_ids, attention_mask, params, threading.Event())
            output = self._worker.submit(self._run_generate, kwargs).result()
        answers = []
        prompt_width = kwargs["input_ids"].shape[1] if kwargs else input_ids.shape[1]  # + a P-tuning prefix
        for row in output[:, prompt_width:].tolist():
            if self.tokenizer.eos_token_id in row:
                row = row[: row.index(self.tokenizer.eos_token_id)]
            text, _ = apply_stop(process_response(self.tokenizer.decode(row)), params.stop)
            answers.append(text.rstrip() if params.stop else text)
        return answers

    # -- chat ------------------------------------------------------------------------------------------------
    def stream_chat(self, question: str, history: History = (), **overrides) -> Iterator[str]:
        return self.stream(build_chat_prompt(question, history), **overrides)

    def chat(self, question: str, history: History = (), **overrides) -> str:
        return self.generate(build_chat_prompt(question, history), **overrides)
