"""Conversations, answer feedback and page settings of the web page, kept on this machine as JSON files.

Layout under `root` (the page uses `<paths.vector_store_root>/.webui/`, which no knowledge base can be named):
  users/<owner>/conversations/<id>.json   one conversation: title, times, turns (question, answer, sources, ...)
  users/<owner>/settings.json             the sidebar's settings and interface language
  feedback.jsonl                          one line per 👍/👎: question, answer, sources, settings, rating
`owner` is a browser session's random key (kept in the page's URL) or a name the user types; it is reduced to a
safe folder name, so no owner can reach outside `root`.

A full disk or an I/O error never costs what was stored before: a JSON file is written to a temporary file,
fsynced and renamed over the old one (the old one stays whole until the rename), and a rating is appended in one
write, fsynced, and cut back off if anything fails (no half line is left for the next one to be glued to). Either
failure raises `SaveFailed` (a `StorageError`, an `OSError`): one line naming what could not be saved, why, and
that the earlier version is intact; the page shows it and goes on (the conversation stays in the page).

`eval_bench(feedback)` turns 👍 answers into a BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv) for
`python -m kb_qa.eval --bench DIR`: each liked question with the passages its answer cited as the gold passages.

Deliberately not here: Streamlit (kb_qa.webui), the question-answering chain (kb_qa.qa).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import re
import secrets
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from kb_qa.errors import StorageError
from kb_qa.paths import free_bytes
from kb_qa.schema import source_label

_OWNER = re.compile(r"[^\w.-]+", re.UNICODE)
_ID = re.compile(r"^[0-9a-f]{8,32}$")


def new_id() -> str:
    return secrets.token_hex(8)


def safe_owner(owner: str) -> str:
    """A folder name for `owner`: word characters, '.', '-'; never empty, '.', or '..'."""
    name = _OWNER.sub("_", (owner or "").strip())[:64].strip("._") or "anonymous"
    return name


@dataclass
class SourceRecord:
    kb: str
    source: str
    text: str
    score: float = 0.0
    page: int | None = None
    heading: str | None = None
    chunk_id: int = 0

    @classmethod
    def of(cls, source: Any) -> SourceRecord:
        values: dict[str, Any] = {f.name: getattr(source, f.name, None) if f.name not in ("score", "chunk_id")
                                  else (getattr(source, f.name, 0) or 0) for f in fields(cls)}
        return cls(**values)

    def label(self) -> str:
        return source_label(self.source, self.page, self.heading)


@dataclass
class Turn:
    """One question and its answer as the page keeps them."""

    question: str
    answer: str = ""
    sources: list[SourceRecord] = field(default_factory=list)
    mode: str = ""
    kbs: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float | None = None
    query: str = ""  # the standalone query retrieval used (the rewritten follow-up), when it differs
    stopped: bool = False  # the user pressed Stop: `answer` is what was generated until then
    rating: int = 0  # 1 = 👍, -1 = 👎, 0 = none
    settings: dict[str, Any] = field(default_factory=dict)  # the answer settings it was asked with
    id: str = field(default_factory=new_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["sources"] = [SourceRecord(**{k: v for k, v in s.items() if k in {f.name for f in fields(SourceRecord)}})
                           for s in data.get("sources") or []]
        return cls(**data)


@dataclass
class Conversation:
    id: str = field(default_factory=new_id)
    title: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    turns: list[Turn] = field(default_factory=list)

    def display_title(self) -> str:
        title = self.title or (self.turns[0].question if self.turns else "")
        title = " ".join(title.split())
        return (title[:48] + "…") if len(title) > 48 else title


class SaveFailed(StorageError):
    """Writing a conversation, a rating or the settings failed (disk full, I/O error); the version stored before
    is intact. `str()` is the one line to show."""


class ConversationStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._append_lock = threading.Lock()  # one rating appended at a time (sessions share the store)

    # -- conversations -----------------------------------------------------------------------------------
    def _folder(self, owner: str) -> Path:
        return self.root / "users" / safe_owner(owner) / "conversations"

    def save(self, owner: str, conversation: Conversation) -> None:
        if not _ID.match(conversation.id):
            raise ValueError(f"bad conversation id {conversation.id!r}")
        conversation.updated = time.time()
        _write_json(self._folder(owner) / f"{conversation.id}.json", asdict(conversation), what="the conversation")

    def load(self, owner: str, conversation_id: str) -> Conversation | None:
        if not _ID.match(conversation_id or ""):
            return None
        data = _read_json(self._folder(owner) / f"{conversation_id}.json")
        if not isinstance(data, dict):
            return None
        turns = [Turn.from_dict(t) for t in data.get("turns") or [] if isinstance(t, dict)]
        return Conversation(id=conversation_id, title=str(data.get("title") or ""),
                            created=float(data.get("created") or 0), updated=float(data.get("updated") or 0),
                            turns=turns)

    def list(self, owner: str) -> list[Conversation]:
        """The owner's conversations, newest first (turns loaded: the list shows titles from them)."""
        folder = self._folder(owner)
        if not folder.is_dir():
            return []
        found = [self.load(owner, p.stem) for p in folder.glob("*.json")]
        return sorted((c for c in found if c is not None), key=lambda c: c.updated, reverse=True)

    def delete(self, owner: str, conversation_id: str) -> None:
        if _ID.match(conversation_id or ""):
            (self._folder(owner) / f"{conversation_id}.json").unlink(missing_ok=True)

    # -- settings ----------------------------------------------------------------------------------------
    def load_settings(self, owner: str) -> dict[str, Any]:
        data = _read_json(self.root / "users" / safe_owner(owner) / "settings.json")
        return data if isinstance(data, dict) else {}

    def save_settings(self, owner: str, values: dict[str, Any]) -> None:
        _write_json(self.root / "users" / safe_owner(owner) / "settings.json", values, what="your settings")

    # -- feedback ----------------------------------------------------------------------------------------
    @property
    def feedback_path(self) -> Path:
        return self.root / "feedback.jsonl"

    def add_feedback(self, owner: str, conversation_id: str, turn: Turn, rating: int) -> dict[str, Any]:
        record = {"time": time.time(), "owner": safe_owner(owner), "conversation": conversation_id,
                  "turn": turn.id, "rating": int(rating), "question": turn.question, "query": turn.query,
                  "answer": turn.answer, "mode": turn.mode, "kbs": list(turn.kbs), "settings": dict(turn.settings),
                  "sources": [asdict(s) for s in turn.sources]}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._append_lock:
            try:
                _append_line(self.feedback_path, line)
            except OSError as exc:
                raise save_failed("your rating", self.feedback_path, exc) from exc
        return record

    def feedback(self) -> builtins.list[dict[str, Any]]:  # `list` here is the method above
        """Every rating, the latest per (conversation, turn) winning (a user may change their mind)."""
        try:
            text = self.feedback_path.read_text(encoding="utf-8", errors="replace")
        except OSError:  # none yet, or unreadable: nothing to offer for download
            return []
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: skip it, keep the rest
            if isinstance(record, dict):
                latest[(str(record.get("conversation")), str(record.get("turn")))] = record
        return [r for r in latest.values() if r.get("rating")]


def eval_bench(feedback: Iterable[dict[str, Any]]) -> dict[str, str]:
    """A BEIR folder's files {name: text} from 👍 feedback: the liked question as a query, each passage its answer
    cited as a gold passage (score 1). Passages are keyed by a hash of their text, so one cited twice is one."""
    corpus: dict[str, dict[str, str]] = {}
    queries: list[dict[str, str]] = []
    qrels: list[str] = ["query-id\tcorpus-id\tscore"]
    for n, record in enumerate(r for r in feedback if r.get("rating", 0) > 0):
        sources = [s for s in record.get("sources") or [] if s.get("text")]
        if not sources or not record.get("question"):
            continue
        qid = f"q{n + 1}"
        queries.append({"_id": qid, "text": str(record["question"])})
        for s in sources:
            cid = "p" + hashlib.sha256(s["text"].encode("utf-8")).hexdigest()[:16]
            corpus.setdefault(cid, {"_id": cid, "title": str(s.get("source") or ""), "text": s["text"]})
            qrels.append(f"{qid}\t{cid}\t1")
    lines = lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # noqa: E731
    return {"corpus.jsonl": lines(corpus.values()), "queries.jsonl": lines(queries),
            "qrels.tsv": "\n".join(qrels) + "\n"}


def eval_bench_zip(feedback: Iterable[dict[str, Any]], folder: str = "kb_qa-feedback-bench") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in eval_bench(feedback).items():
            archive.writestr(f"{folder}/{name}", text)
    return buffer.getvalue()


def save_failed(what: str, path: Path, exc: OSError) -> SaveFailed:
    """The one line for a failed save: what, why, that the earlier version is kept, and for a full disk how much
    space is left where."""
    reason = (exc.strerror or str(exc) or type(exc).__name__).rstrip(".")
    folder = path.parent
    hint = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free_now = free_bytes(folder)
        free = f" ({free_now / 2**20:.0f} MiB free now)" if free_now is not None else ""
        hint = f" Free some space on {folder}{free}."
    return SaveFailed(f"Saving {what} failed: {reason} (in {folder}). What was saved before is intact.{hint}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_json(path: Path, data: Any, *, what: str = "the file") -> None:
    """Write `data` as JSON to `path` atomically: a temporary file beside it, fsynced, renamed over it (so a full
    disk or a crash leaves the old file whole), then the folder fsynced (so the rename survives a power cut).
    Raises SaveFailed; the temporary file is removed."""
    payload = json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")  # a bug (unserialisable) raises here
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as exc:
        raise save_failed(what, path, exc) from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # best effort: a leftover .tmp- file is never read


def _append_line(path: Path, line: bytes) -> None:
    """Append one whole line to `path`, fsynced. On failure the file is cut back to where it was, so no half line
    is left; a half line an older crash left is ended first, so this one is not glued to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        try:
            _write_all(fd, line)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass  # the reader skips a line it cannot parse
            raise
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on this system: the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the file itself was fsynced
    finally:
        os.close(fd)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
