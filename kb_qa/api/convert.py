"""Small conversions between kb_qa's objects and the API's bodies, and the plumbing that runs a blocking
generation (or a stream of it) off the event loop while it holds the model's generation slot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from kb_qa.api.capacity import GenerationGate
from kb_qa.api.models import SourceOut
from kb_qa.schema import Source

_END = object()


def sources_out(sources: list[Source]) -> list[SourceOut]:
    return [SourceOut(index=i, kb=s.kb, source=s.source, page=s.page, heading=s.heading,
                      score=round(float(s.score), 6), text=s.text)
            for i, s in enumerate(sources, start=1)]


async def run_blocking(gate: GenerationGate | None, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on a worker thread, holding `gate`'s slot (if any) until the thread is done, even when the
    client goes away meanwhile (the thread cannot be interrupted; the slot is not given back before it ends)."""
    if gate is None:
        return await anyio.to_thread.run_sync(fn, *args)
    async with gate.slot():
        return await anyio.to_thread.run_sync(fn, *args)


async def iterate_blocking(iterator: Iterator[Any]) -> AsyncIterator[Any]:
    """Items of a blocking iterator, each `next()` on a worker thread (a model producing tokens)."""
    while True:
        item = await anyio.to_thread.run_sync(next, iterator, _END)
        if item is _END:
            return
        yield item


class GuardedStream(StreamingResponse):
    """A streaming response that, however it ends (finished, client gone, error), closes the blocking producer
    (so a generation stops at its next token) and then gives the generation slot back: exactly once."""

    def __init__(self, content: AsyncIterator[bytes], *, producer: Iterator[Any] | None,
                 gate: GenerationGate | None, **kwargs: Any):
        super().__init__(content, **kwargs)
        self._producer = producer
        self._gate = gate
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                close = getattr(self._producer, "close", None)
                if close is not None:
                    await anyio.to_thread.run_sync(close)
            finally:
                if self._gate is not None:
                    self._gate.release()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.close()
