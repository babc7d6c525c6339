"""Generation capacity: one generation at a time per loaded model, at most `max_queue` requests waiting for it.

A request that finds the model busy waits (parked in a worker thread outside the shared pool, so waiting never
starves the threads that serve everything else) up to `wait_timeout_s`; a request that finds `max_queue` others
already waiting is refused at once (`Overloaded`, HTTP 429); one whose wait times out gets 503. Both carry
Retry-After, which OpenAI clients honour when they retry.

Thread-based on purpose: the slot is held from the event loop (non-streaming requests) and released from worker
threads (streams end there), and the test client runs each request on a fresh event loop, so loop-bound asyncio
primitives would not fit.
"""

from __future__ import annotations

import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread

from kb_qa.errors import BusyError


class Overloaded(BusyError):
    """No generation slot: the queue is full (`queue_full`) or the wait timed out. `retry_after_s` is a hint for
    the client."""

    def __init__(self, message: str, retry_after_s: int = 1, *, queue_full: bool = True):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.queue_full = queue_full


@dataclass(frozen=True)
class GateStatus:
    model: str
    busy: bool
    waiting: int
    max_queue: int


class GenerationGate:
    """One slot (the model) and a bounded waiting room. `acquire()` then exactly one `release()`."""

    def __init__(self, model: str, max_queue: int, wait_timeout_s: float = 300.0):
        self.model = model
        self.max_queue = max_queue
        self.wait_timeout_s = wait_timeout_s
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = 0

    def status(self) -> GateStatus:
        with self._cond:
            return GateStatus(self.model, self._busy, self._waiting, self.max_queue)

    def try_acquire(self) -> bool:
        with self._cond:
            if self._busy:
                return False
            self._busy = True
            return True

    async def acquire(self) -> None:
        with self._cond:
            if not self._busy:
                self._busy = True
                return
            if self._waiting >= self.max_queue:
                raise Overloaded(
                    f"server busy: model {self.model!r} is generating and {self._waiting} requests are waiting "
                    f"(api.max_queue = {self.max_queue}); retry later"
                )
            self._waiting += 1
        got = [False]
        try:
            # A limiter of its own per waiter: parked threads (at most max_queue) take no tokens from the shared pool.
            await anyio.to_thread.run_sync(self._wait, got, limiter=anyio.CapacityLimiter(1))
        except BaseException:
            if got[0]:  # cancelled after the slot was ours: give it back
                self.release()
            raise
        if not got[0]:
            raise Overloaded(
                f"server busy: waited {self.wait_timeout_s:g} s for model {self.model!r}; retry later", 5,
                queue_full=False)

    def _wait(self, got: list[bool]) -> None:
        deadline = time.monotonic() + self.wait_timeout_s
        with self._cond:
            try:
                while self._busy:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._cond.wait(left)
                self._busy = True
                got[0] = True
            finally:
                self._waiting -= 1

    def release(self) -> None:
        with self._cond:
            if not self._busy:
                raise RuntimeError("GenerationGate.release() without acquire()")
            self._busy = False
            self._cond.notify()

    @asynccontextmanager
    async def slot(self):
        await self.acquire()
        try:
            yield
        finally:
            self.release()
