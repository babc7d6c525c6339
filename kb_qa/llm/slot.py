"""The process's one answering model: loaded once (lazily, thread-safe), one generation lock, and why it is absent.

    slot = LLMSlot(lambda: settings.llm)          # or LLMSlot(..., injected=fake_llm) in tests
    slot.get()        -> a handle (serialised on `slot.lock`) or None (retrieval-only); never raises
    slot.status()     -> LLMStatus(state, name, reason, configured); `.loaded`
    slot.reset()      forget a failed (or loaded) model so the next `get()` tries again

Every generation, whichever front end asks, goes through `slot.lock`: the local ChatGLM2 generator is built with
that lock as its own (factory.resolve_llm(generation_lock=...)); any other model (the OpenAI-compatible client, a
test double) is wrapped so its `stream`/`invoke`/`chat`/`stream_chat` take it. The lock is a plain `Lock`, not an
`RLock`: a streamed answer may be resumed from a different thread (HTTP streaming), and a plain lock may be
released there.

Deliberately not here: building the model (factory.py), queueing with limits (kb_qa.api.capacity).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

log = logging.getLogger(__name__)

LOADED, NOT_LOADED, LOADING, UNAVAILABLE = "loaded", "not-loaded", "loading", "unavailable"


@dataclass(frozen=True)
class LLMStatus:
    """Where the answering model stands, in words a user can act on."""

    state: str  # loaded | not-loaded (configured, loads on first use) | loading | unavailable
    name: str | None  # the model's id (checkpoint folder name, OpenAI model name); None when there is none
    reason: str | None  # unavailable: why (no weights, no GPU, backend missing, load failed); loaded: description
    configured: bool  # settings name a model; False = retrieval-only by choice (backend 'none' / no model_path)

    @property
    def loaded(self) -> bool:
        return self.state == LOADED

    def __str__(self) -> str:
        return f"{self.state}: {self.reason}" if self.reason else self.state


class LLMSlot:
    def __init__(self, llm_settings: Callable[[], Any], *, injected: Any = None):
        self._settings = llm_settings
        self.lock = threading.Lock()  # THE generation lock: one answer at a time per process
        self._load_lock = threading.Lock()
        self._handle: Any = None
        self._done = False
        self._loading = False
        self._failure: str | None = None
        if injected is not None:
            self._handle, self._done = self._serialised(injected), True

    # -- loading -------------------------------------------------------------------------------------------
    def get(self):
        """The handle (loading it on the first call), or None: retrieval-only. Failures go to `status()`."""
        if self._done:
            return self._handle
        with self._load_lock:
            if not self._done:
                self._loading = True
                try:
                    self._handle = self._load()
                finally:
                    self._loading, self._done = False, True
            return self._handle

    def _load(self):
        try:
            from kb_qa.llm.factory import resolve_llm
        except ImportError as exc:  # torch / transformers not installed
            self._failure = f"the LLM backend is not installed ({exc})"
            return None
        started = time.perf_counter()
        try:
            handle, detail = resolve_llm(self._settings(), generation_lock=self.lock)
        except Exception as exc:  # noqa: BLE001 - every load failure becomes the reason shown to the user
            log.warning("loading the LLM failed: %s", exc)
            self._failure = f"loading the model failed: {exc}"
            return None
        if handle is None:
            self._failure = detail
            return None
        log.info("LLM loaded in %.1f s: %s", time.perf_counter() - started, detail)
        return self._serialised(handle)

    def reset(self) -> None:
        with self._load_lock:
            self._handle, self._done, self._failure = None, False, None

    # -- status --------------------------------------------------------------------------------------------
    def configured_reason(self) -> str | None:
        """Why there will be no model, from the settings and the file system only (cheap); None = expected."""
        if self._handle is not None:
            return None
        try:
            from kb_qa.llm.factory import retrieval_only_reason
        except ImportError as exc:
            return f"the LLM backend is not installed ({exc})"
        return retrieval_only_reason(self._settings())

    def status(self) -> LLMStatus:
        if self._loading:
            return LLMStatus(LOADING, self._name(), "loading the model", True)
        if self._handle is not None:
            describe = getattr(self._handle, "describe", None)
            return LLMStatus(LOADED, self._name(), describe() if callable(describe) else None, True)
        reason = self.configured_reason()
        if reason is not None:
            return LLMStatus(UNAVAILABLE, None, reason, False)
        if self._done:
            return LLMStatus(UNAVAILABLE, None, self._failure, True)
        return LLMStatus(NOT_LOADED, self._name(), "loads on first use", True)

    def _name(self) -> str | None:
        name = getattr(self._handle, "name", None)
        if name:
            return str(name)
        s = self._settings()
        if s.backend == "openai":
            return s.openai_model
        return PurePath(str(s.model_path or "").rstrip("/\\")).name or s.backend

    # -- one lock ------------------------------------------------------------------------------------------
    def _serialised(self, handle):
        generator = getattr(handle, "generator", None)
        if generator is not None and getattr(generator, "lock", None) is self.lock:
            return handle  # the local generator already takes this lock itself
        return Serialised(handle, self.lock)


class Serialised:
    """A model handle (or bare LangChain LLM) whose generating calls take `lock`; everything else passes through."""

    def __init__(self, inner, lock: threading.Lock):
        self._inner, self._lock = inner, lock
        lc = getattr(inner, "langchain_llm", None)
        self.langchain_llm = _LockedCalls(lc if lc is not None else inner, lock)
        self.tokenizer = getattr(inner, "tokenizer", None)

    def stream_chat(self, *args, **kwargs) -> Iterator[str]:
        return _locked_iter(lambda: self._inner.stream_chat(*args, **kwargs), self._lock)

    def chat(self, *args, **kwargs):
        with self._lock:
            return self._inner.chat(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _LockedCalls:
    def __init__(self, llm, lock: threading.Lock):
        self._llm, self._lock = llm, lock

    def stream(self, *args, **kwargs):
        return _locked_iter(lambda: self._llm.stream(*args, **kwargs), self._lock)

    def invoke(self, *args, **kwargs):
        with self._lock:
            return self._llm.invoke(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._llm, name)


def _locked_iter(start: Callable[[], Iterator], lock: threading.Lock) -> Iterator:
    """Iterate `start()` holding `lock` from the first item to the end (or until the reader closes it)."""
    with lock:
        yield from start()
