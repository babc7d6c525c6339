"""Background ingestion for the web page: uploads and rebuilds run in one worker thread owned by the process.

A Streamlit script run is stopped whenever the user clicks, reloads or a rerun is requested, so work done inside
it can be cut off before its commit. Here the work runs in a daemon thread that no script run owns: the page only
submits a job and reads its progress, so reruns, clicks, reloads and a second tab never cancel it. One
`JobRunner` per `App` (`runner_for(app)`); jobs run one at a time, in submission order.

Uploads are ingested file by file (each file is saved and committed on its own), so progress over files moves as
each one is done, a failure costs only that file, and everything finished before a crash is kept. A rebuild is
one `App.ingest(..., rebuild=True)` call; its progress follows the pipeline's per-commit `on_file` reports.

Deliberately not here: what ingestion does (kb_qa.app / kb_qa.ingest) and how progress is drawn (kb_qa.webui.progress).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


def user_errors() -> tuple[type[BaseException], ...]:
    """The error classes a user causes or fixes (shown as one line, no traceback). KbQaError is the family;
    the store's errors are listed until kb_qa.store derives them from it."""
    from kb_qa.errors import KbQaError
    from kb_qa.store import KnowledgeBaseError

    return KbQaError, KnowledgeBaseError


def is_expected(exc: BaseException) -> bool:
    return isinstance(exc, user_errors())


def error_text(exc: BaseException) -> str:
    """One line for a user: the message of a user error, else the class and message."""
    text = str(exc).strip()
    return text if is_expected(exc) and text else f"{type(exc).__name__}: {text or 'no details'}"

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
KEEP_FINISHED = 20  # finished jobs remembered per runner (their reports stay on the page until replaced)
LOCK_TIMEOUT_S = 120.0  # a background job can afford to wait for the CLI or another writer


@dataclass
class Outcome:
    """One file's result, as the page lists it (mirrors kb_qa.ingest.pipeline.FileOutcome)."""

    source: str
    status: str
    chunks: int = 0
    reason: str | None = None


@dataclass
class Job:
    id: int
    kind: str  # "upload" | "rebuild"
    kb: str
    files_total: int
    state: str = QUEUED
    files_done: int = 0
    chunks_done: int = 0  # chunks stored by this job so far
    current: str = ""  # the file being worked on
    outcomes: list[Outcome] = field(default_factory=list)
    error: str | None = None  # why the whole job failed (e.g. the KB's embedding model differs)
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    @property
    def active(self) -> bool:
        return self.state in (QUEUED, RUNNING)

    @property
    def fraction(self) -> float:
        if not self.files_total:
            return 0.0 if self.active else 1.0
        return min(self.files_done / self.files_total, 1.0)

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]


class JobRunner:
    """A FIFO of ingestion jobs and the one daemon thread that works through it."""

    def __init__(self, app) -> None:
        self.app = app
        self._jobs: list[Job] = []
        self._queue: queue.Queue[tuple[Job, Callable[[Job], None]]] = queue.Queue()
        self._lock = threading.Lock()  # guards _jobs and every Job's fields while the page reads them
        self._changed = threading.Condition(self._lock)  # notified on every change (the page redraws on it)
        self._version = 0  # how many changes so far (see wait_for_change)
        self._ids = itertools.count(1)
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._work, name="kb_qa-ingest-jobs", daemon=True)
        self._thread.start()

    # -- submitting --------------------------------------------------------------------------------------
    def submit_upload(self, kb: str, files: list[tuple[str, bytes]]) -> Job:
        """Save and ingest (file name, bytes) pairs into `kb`, one file at a time."""
        files = list(files)
        job = self._new("upload", kb, len(files))
        self._enqueue(job, lambda j: self._run_upload(j, files))
        return job

    def submit_rebuild(self, kb: str) -> Job:
        """Re-read and re-embed every document in knowledge_base/<kb>/ from scratch."""
        from kb_qa.ingest.pipeline import collect_files

        folder = self.app.docs_root / kb
        candidates, _ = collect_files([folder], self.app.settings.ingest.extensions) if folder.is_dir() else ([], [])
        job = self._new("rebuild", kb, len(candidates))
        self._enqueue(job, lambda j: self._run_rebuild(j, folder))
        return job

    # -- reading -----------------------------------------------------------------------------------------
    def jobs(self, kb: str | None = None) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs if kb is None or j.kb == kb]

    def latest(self, kb: str) -> Job | None:
        found = self.jobs(kb)
        return found[-1] if found else None

    def active(self, kb: str | None = None) -> list[Job]:
        return [j for j in self.jobs(kb) if j.active]

    def snapshot(self, job: Job) -> Job:
        """A consistent copy of `job` to draw from (the worker keeps changing the original)."""
        with self._lock:
            return Job(**{**vars(job), "outcomes": list(job.outcomes)})

    def version(self) -> int:
        with self._lock:
            return self._version

    def wait_for_change(self, since: int, timeout: float) -> int:
        """Block until something changed after version `since` (a job queued, started, a file done, a job
        finished) or `timeout` seconds passed; returns the current version. The page redraws on each change
        instead of polling on a timer, so every step of the progress is shown however fast the steps come."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != since, timeout)
            return self._version

    def _bump(self) -> None:
        """Count one change and wake the waiting pages (call with self._lock held)."""
        self._version += 1
        self._changed.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted job has finished (tests, shutdown); False on timeout."""
        return self._idle.wait(timeout)

    # -- the worker --------------------------------------------------------------------------------------
    def _new(self, kind: str, kb: str, total: int) -> Job:
        with self._lock:
            job = Job(next(self._ids), kind, kb, total)
            self._jobs.append(job)
            finished = [j for j in self._jobs if not j.active]
            for old in finished[:-KEEP_FINISHED]:
                self._jobs.remove(old)
            self._bump()
            return job

    def _enqueue(self, job: Job, work: Callable[[Job], None]) -> None:
        self._idle.clear()
        self._queue.put((job, work))

    def _work(self) -> None:
        while True:
            job, work = self._queue.get()
            with self._lock:
                job.state, job.started = RUNNING, time.time()
                self._bump()
            try:
                work(job)
                state, error = DONE, None
            except Exception as exc:  # noqa: BLE001 - e.g. a model mismatch; a bug must not kill the worker either
                log.warning("ingestion job %d (%s %s) failed: %r", job.id, job.kind, job.kb, exc,
                            exc_info=not is_expected(exc))
                state, error = FAILED, error_text(exc)
            with self._lock:
                job.state, job.error, job.finished, job.current = state, error, time.time(), ""
                self._bump()
            self._queue.task_done()
            if self._queue.unfinished_tasks == 0:
                self._idle.set()

    def _record(self, job: Job, outcome: Any, *, counts_as_file: bool = True) -> None:
        with self._lock:
            job.outcomes.append(Outcome(str(outcome.source), str(outcome.status), int(outcome.chunks or 0),
                                        outcome.reason))
            job.chunks_done += int(outcome.chunks or 0) if outcome.status in ("added", "updated") else 0
            if counts_as_file:
                job.files_done += 1
            self._bump()

    def _run_upload(self, job: Job, files: list[tuple[str, bytes]]) -> None:
        for i in range(len(files)):
            name, data = files[i]
            files[i] = (name, b"")  # free the bytes once handed on (uploads can be large)
            with self._lock:
                job.current = name
                self._bump()
            before = len(job.outcomes)
            try:
                report = self.app.add_uploads(job.kb, [(name, data)], lock_timeout_s=LOCK_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - busy, model mismatch, disk full: this file fails, not the rest
                log.warning("upload of %s into %s failed: %r", name, job.kb, exc, exc_info=not is_expected(exc))
                self._record(job, Outcome(name, "failed", reason=error_text(exc)))
                continue
            for outcome in report.outcomes:
                self._record(job, outcome, counts_as_file=False)
            with self._lock:
                job.files_done += 1 if len(job.outcomes) > before else 0
                self._bump()

    def _run_rebuild(self, job: Job, folder) -> None:
        with self._lock:
            job.current = str(folder)
            self._bump()
        self.app.ingest(job.kb, [folder], rebuild=True, lock_timeout_s=LOCK_TIMEOUT_S,
                        on_file=lambda outcome: self._record(job, outcome))


_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_RUNNERS_LOCK = threading.Lock()


def runner_for(app) -> JobRunner:
    """The one JobRunner of `app` (created on first use): every page, tab and session of the process shares it."""
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(app)
        if runner is None:
            runner = _RUNNERS[app] = JobRunner(app)
        return runner
