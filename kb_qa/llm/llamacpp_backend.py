"""`llm.backend: llamacpp`: ChatGLM2 from a GGUF file (`python -m kb_qa.llm.convert SRC DST --gguf q8_0`) on
llama.cpp through `llama-cpp-python` (an optional extra: PyPI ships only its source, a ~17 minute CPU build).

Prompts are tokenized by kb_qa's own sentencepiece tokenizer (the tokenizer.model beside the GGUF, or
llm.tokenizer_path) and handed to llama.cpp as ids, so the model sees exactly the ids of the transformers path.
Same surface as ChatGLM2Generator (stream/generate/stream_chat/chat, stop strings, ChatGLM2's post-processing, the
8K window, one generation at a time), so the same LangChain wrapper (ChatGLM2LLM) drives it.
Does not convert (gguf_export.py) and does not choose the backend (factory.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from kb_qa.errors import NotFoundError, UnavailableError
from kb_qa.llm.text import IncrementalDecoder, ResponseAssembler, SamplingParams, apply_stop, process_response
from kb_qa.llm.tokenizer import TOKENIZER_FILE, ChatGLM2Tokenizer, History, build_chat_prompt

INSTALL_HINT = ("llm.backend=llamacpp needs llama-cpp-python (built from source, ~17 min on 2 cores): "
                "CMAKE_ARGS='-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF' "
                "pip install -r requirements-llamacpp.txt")


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def find_gguf(path: str | os.PathLike, gguf_file: str | None = None) -> Path:
    """A .gguf file, or the one .gguf in a folder (`gguf_file` picks among several)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise NotFoundError(f"llm.model_path {path}: no such GGUF file or folder")
    if gguf_file:
        chosen = path / gguf_file
        if not chosen.is_file():
            raise NotFoundError(f"{chosen}: no such file (llm.gguf_file)")
        return chosen
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
        what = "no .gguf file" if not found else f"{len(found)} .gguf files ({', '.join(p.name for p in found)})"
        raise NotFoundError(f"{path}: {what}; convert with `python -m kb_qa.llm.convert SRC DST --gguf q8_0` or "
                            "name one with llm.gguf_file")
    return found[0]


class LlamaCppGenerator:
    """Generation through llama.cpp with ChatGLM2's exact ids; `.llama` is the llama_cpp.Llama."""

    def __init__(self, gguf_path: str | os.PathLike, tokenizer: ChatGLM2Tokenizer, *,
                 params: SamplingParams | None = None, max_context_tokens: int = 8192, n_threads: int | None = None,
                 logits_all: bool = False, seed: int = 0):
        try:
            import llama_cpp
        except ImportError:
            raise UnavailableError(INSTALL_HINT) from None
        self.gguf_path = Path(gguf_path)
        self.tokenizer = tokenizer
        self.params = params or SamplingParams()
        self.max_context_tokens = max_context_tokens
        self.lock = threading.Lock()  # one llama context: one generation at a time
        self.llama = llama_cpp.Llama(str(self.gguf_path), n_ctx=max_context_tokens, n_threads=n_threads,
                                     logits_all=logits_all, seed=seed, verbose=False)
        if self.llama.n_vocab() < tokenizer.vocab_size:
            raise UnavailableError(f"{self.gguf_path}: {self.llama.n_vocab()} ids, fewer than the tokenizer's "
                                   f"{tokenizer.vocab_size}: not a ChatGLM2 GGUF for this tokenizer.model")

    @classmethod
    def from_settings(cls, s, **options) -> LlamaCppGenerator:
        gguf_path = find_gguf(s.model_path, getattr(s, "gguf_file", None))
        tokenizer_source = getattr(s, "tokenizer_path", None) or gguf_path.parent / TOKENIZER_FILE
        tokenizer = ChatGLM2Tokenizer.load(tokenizer_source)
        return cls(gguf_path, tokenizer, params=SamplingParams.from_settings(s),
                   max_context_tokens=s.max_context_tokens, n_threads=getattr(s, "n_threads", None), **options)

    def describe(self) -> str:
        return f"ChatGLM2 on llama.cpp ({self.gguf_path.name})"

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)

    def _budget(self, prompt_tokens: int, params: SamplingParams) -> int:
        from kb_qa.llm.generation import PromptTooLongError

        room = self.max_context_tokens - prompt_tokens
        if room < 1:
            raise PromptTooLongError(f"the prompt is {prompt_tokens} tokens; ChatGLM2's window is "
                                     f"{self.max_context_tokens} (prompt + answer): shorten the context or history")
        return min(params.max_new_tokens, room)

    def _ids(self, ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Generated ids until eos or the budget; greedy when temperature is 0."""
        budget = self._budget(len(ids), params)
        greedy = params.temperature <= 0
        self.llama.reset()
        produced = 0
        for token in self.llama.generate(ids, reset=True, temp=0.0 if greedy else params.temperature,
                                         top_k=1 if greedy else 50, top_p=1.0 if greedy else params.top_p,
                                         repeat_penalty=params.repetition_penalty):
            if token == self.tokenizer.eos_token_id:
                return
            yield int(token)
            produced += 1
            if produced >= budget:
                return

    def stream(self, prompt: str, **overrides) -> Iterator[str]:
        params = self.params.updated(**overrides)
        ids = self.encode_prompt(prompt)
        self._budget(len(ids), params)  # fail before taking the lock
        return self._stream_ids(ids, params)

    def _stream_ids(self, ids: list[int], params: SamplingParams) -> Iterator[str]:
        decoder = IncrementalDecoder(self.tokenizer)
        assembler = ResponseAssembler(params.stop)
        with self.lock:
            for token in self._ids(ids, params):
                piece = assembler.feed(decoder.push([token]))
                if piece:
                    yield piece
                if assembler.stopped:
                    break
            tail = assembler.feed(decoder.flush()) + assembler.finish()
            if tail:
                yield tail

    def generate_ids(self, ids: list[int], **overrides) -> list[int]:
        params = self.params.updated(**overrides)
        with self.lock:
            return list(self._ids(ids, params))

    def generate(self, prompt: str, **overrides) -> str:
        params = self.params.updated(**overrides)
        row = self.generate_ids(self.encode_prompt(prompt), **overrides)
        text, _ = apply_stop(process_response(self.tokenizer.decode(row)), params.stop)
        return text.rstrip() if params.stop else text

    def generate_batch(self, prompts: Sequence[str], **overrides) -> list[str]:
        return [self.generate(p, **overrides) for p in prompts]

    def stream_chat(self, question: str, history: History = (), **overrides) -> Iterator[str]:
        return self.stream(build_chat_prompt(question, history), **overrides)

    def chat(self, question: str, history: History = (), **overrides) -> str:
        return self.generate(build_chat_prompt(question, history), **overrides)

    def prompt_logits(self, ids: list[int]):
        """[len(ids), vocab] logits of every prompt position (needs logits_all=True); numpy float32."""
        import numpy as np

        with self.lock:
            self.llama.reset()
            self.llama.eval(ids)
            return np.array(self.llama.scores[: len(ids)], dtype=np.float32)
