"""Parse untrusted files in a separate process that is killed at its time limit and capped in memory.

`parse_file(path, options) -> list[Section]` is the call for ingest: it reuses a worker process (started with
`spawn`, so it shares no state with the parent) for file after file, and replaces it when a parse is killed,
crashes or runs out of memory; concurrent callers get a worker each. The ingest pipeline calls it without the
KB's write lock.

Why a process: a parser can loop for minutes (xlsx bombs), grow to gigabytes (docx bombs) or crash in C code on
a hostile file; in a process the parent can stop it at `max_seconds`, cap its address space (`RLIMIT_AS` =
`memory_mb`) and report one line for that file while the rest of the batch goes on.

Nothing crosses back as a pickle: the worker writes JSON bytes (`send_bytes`), the parent reads at most a bounded
number of bytes (`recv_bytes(maxlength)`) and builds `Section`s itself. Progress messages (`on_progress(done,
total, unit)`, e.g. OCR pages) come the same way.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kb_qa.ingest.limits import ParseOptions
from kb_qa.ingest.loaders.base import LoadError
from kb_qa.ingest.ocr import OcrCost, collect_cost, progress_callback
from kb_qa.ingest.ocr import record as record_ocr
from kb_qa.schema import Section

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (done, total, unit)

_MESSAGE_OVERHEAD = 4 * 1024 * 1024  # bytes of JSON beyond the text itself (keys, headings, escapes)


class ParseWorker:
    """One worker process, reused file after file; restarted after a kill, a crash or a MemoryError."""

    def __init__(self, options: ParseOptions | None = None):
        self.options = options or ParseOptions()
        self._process = None
        self._conn = None
        self._lock = threading.Lock()  # one parse at a time per worker

    def parse(self, path: str | os.PathLike, *, name: str | None = None,
              on_progress: Progress | None = None) -> list[Section]:
        """Load `path` in the worker; raises LoadError (naming `name or path`) for any failure, limits included."""
        label = name or str(path)
        limits = self.options.limits
        with self._lock:
            conn = self._ensure_started()
            request = {"path": os.fspath(Path(path).absolute()), "name": label}
            try:
                conn.send_bytes(json.dumps(request).encode("utf-8"))
            except OSError:  # the worker died between two files: start a fresh one
                self._stop()
                conn = self._ensure_started()
                conn.send_bytes(json.dumps(request).encode("utf-8"))
            deadline = time.monotonic() + limits.max_seconds
            max_message = 4 * limits.max_chars + _MESSAGE_OVERHEAD  # JSON escapes may grow text ~x6 at worst
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not conn.poll(remaining):
                    self._stop()
                    raise LoadError(label, f"refused: parsing took longer than {limits.max_seconds:g} s "
                                           f"(ingest.max_parse_seconds); the parser was stopped")
                try:
                    raw = conn.recv_bytes(max_message)
                except EOFError:
                    code = self._stop()
                    raise LoadError(label, _crash_reason(code, limits.memory_mb)) from None
                except OSError:  # message over max_message bytes
                    self._stop()
                    raise LoadError(label, "refused: the parser's output is over the character limit "
                                           "(ingest.max_chars_per_file)") from None
                message = json.loads(raw)
                if "progress" in message:
                    if on_progress is not None:
                        done, total, unit = message["progress"]
                        on_progress(int(done), int(total), str(unit))
                    continue
                if message.get("ocr_cost"):
                    record_ocr(OcrCost.from_dict(message["ocr_cost"]))  # into the caller's ingest summary
                if message.get("restart"):
                    self._stop()  # a MemoryError leaves the interpreter in doubt: start clean next time
                if "error" in message:
                    raise LoadError(label, str(message["error"]))
                return [Section(str(s["text"]), page=s.get("page"), heading=s.get("heading"),
                                ocr=bool(s.get("ocr")))
                        for s in message["sections"]]

    def _ensure_started(self):
        if self._process is not None and self._process.is_alive():
            return self._conn
        self._stop()
        context = multiprocessing.get_context("spawn")
        parent_conn, child_conn = context.Pipe(duplex=True)
        process = context.Process(target=_serve, args=(child_conn, self.options.to_json()),
                                  name="kb_qa-parser", daemon=True)
        process.start()
        child_conn.close()
        self._process, self._conn = process, parent_conn
        return parent_conn

    def _stop(self) -> int | None:
        """Stop the worker (kill if needed); its exit code, or None if none was running."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is None:
            return None
        if process.is_alive():
            process.kill()
        process.join(5)
        return process.exitcode

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __enter__(self) -> ParseWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _crash_reason(exitcode: int | None, memory_mb: int) -> str:
    if exitcode is not None and exitcode < 0:
        return (f"the parser crashed (signal {-exitcode}) on this file; it may need more than "
                f"{memory_mb} MiB (ingest.parse_memory_mb) or be damaged")
    return f"the parser stopped unexpectedly (exit code {exitcode}) on this file"


# Idle workers, by options: a parse takes one (or starts one) and gives it back, so two ingests (API threads) parse
# side by side instead of the second waiting up to max_seconds behind a hostile file.
_idle: dict[str, list[ParseWorker]] = {}
_idle_lock = threading.Lock()
MAX_IDLE_WORKERS = 2  # processes kept warm between parses (each ~50-100 MB once its loaders are imported)


def parse_file(path: str | os.PathLike, options: ParseOptions | None = None, *, name: str | None = None,
               on_progress: Progress | None = None) -> list[Section]:
    """Load one file within `options.limits`: in a worker process when `limits.isolate` (the default), else in
    this process (no time or memory bound). Raises LoadError naming the file and the reason. Safe to call from
    several threads at once: each call has a worker of its own.

    Progress (OCR pages) goes to `on_progress`, else to the caller's `ocr.progress_callback`; the OCR cost to the
    caller's `ocr.collect_cost()`."""
    options = options or ParseOptions()
    on_progress = on_progress or progress_callback.get()
    if not options.limits.isolate:
        from kb_qa.ingest.loaders import load_document

        token = progress_callback.set(on_progress)  # OCR progress, as the worker forwards it
        try:
            return load_document(Path(path), options=options)
        except LoadError as exc:
            raise LoadError(name or path, exc.reason) from exc
        finally:
            progress_callback.reset(token)
    key = options.to_json()
    worker = _take_worker(key, options)
    try:
        return worker.parse(path, name=name, on_progress=on_progress)
    finally:
        _give_back(key, worker)


def _take_worker(key: str, options: ParseOptions) -> ParseWorker:
    with _idle_lock:
        for other in [k for k in _idle if k != key]:  # options changed: the old ones will not be asked again
            for old in _idle.pop(other):
                old.close()
        pool = _idle.setdefault(key, [])
        return pool.pop() if pool else ParseWorker(options)


def _give_back(key: str, worker: ParseWorker) -> None:
    with _idle_lock:
        pool = _idle.setdefault(key, [])
        if len(pool) < MAX_IDLE_WORKERS:
            pool.append(worker)
            return
    worker.close()


@atexit.register
def close_shared_workers() -> None:
    with _idle_lock:
        for pool in _idle.values():
            for worker in pool:
                worker.close()
        _idle.clear()


# ---------------------------------------------------------------------------------------------------------------
# The worker's side

def _serve(conn, options_json: str) -> None:
    """Worker main loop: one JSON request in, progress messages and one JSON answer out, until the pipe closes."""
    options = ParseOptions.from_json(options_json)
    _cap_memory(options.limits.memory_mb)
    from kb_qa.ingest.loaders import load_document

    def report(done: int, total: int, unit: str) -> None:
        conn.send_bytes(json.dumps({"progress": [done, total, unit]}).encode("utf-8"))

    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        token = progress_callback.set(report)
        cost = OcrCost()
        try:
            with collect_cost() as cost:
                sections = load_document(Path(request["path"]), options=options)
            answer: dict[str, Any] = {"sections": [{"text": s.text, "page": s.page, "heading": s.heading, "ocr": s.ocr}
                                    for s in sections]}
        except LoadError as exc:
            answer = {"error": exc.reason}
        except MemoryError:
            answer = {"error": f"refused: parsing it needs more memory than allowed ({options.limits.memory_mb} "
                               f"MiB, ingest.parse_memory_mb)", "restart": True}
        except Exception as exc:  # noqa: BLE001 - a parser bug: one line for this file, the worker goes on
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            progress_callback.reset(token)
        if cost.pages or cost.images or cost.skipped_pages or cost.skipped_images:
            answer["ocr_cost"] = cost.to_dict()
        try:
            conn.send_bytes(json.dumps(answer, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        except MemoryError:
            conn.send_bytes(b'{"error": "refused: the text is too large to return", "restart": true}')
        if answer.get("restart"):
            return


def _cap_memory(memory_mb: int) -> None:
    try:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not on this platform: time limit and killing still apply
        log.debug("cannot cap the parser's memory", exc_info=True)
