"""The store's errors, each one of `kb_qa.errors`' families (so every front end shows it as one line with its exit
code). I/O failures (disk full, unreadable file) are `kb_qa.errors.StorageError` itself: an `OSError`, which cannot
share a base with these `RuntimeError`s. `storage_error(...)` builds that one line; `is_io_error(exc)` says
whether an exception is the disk's fault (OSError, SQLite's I/O and disk-full errors, faiss' write/read errors)
rather than damage or a bug."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from kb_qa.errors import BusyError, KbQaError, NotFoundError, StorageError, UsageError
from kb_qa.paths import free_bytes


class KnowledgeBaseError(KbQaError, RuntimeError):
    """Something about one knowledge base is wrong; the message names it and, where there is one, the fix."""


class KnowledgeBaseNotFound(KnowledgeBaseError, NotFoundError):
    pass


class KnowledgeBaseBusy(KnowledgeBaseError, BusyError):
    pass


class EmbeddingMismatch(KnowledgeBaseError, UsageError):
    pass


class AnalyserMismatch(KnowledgeBaseError, UsageError):
    """The KB's keyword index was cut by another version of `kb_qa.store.terms`: re-ingest with --rebuild."""


class KnowledgeBaseDamaged(KnowledgeBaseError):
    """The KB's files are not a usable knowledge base (no schema, not a database, a symlink, failed integrity
    check). Others in the same store are unaffected; `kb-qa kb check/repair NAME` or `kb delete NAME` is the fix."""


# SQLite's messages for failures of the disk rather than of the file's contents (sqlite3 gives them all as
# OperationalError; "file is not a database" and "database disk image is malformed" are damage, not these).
_SQLITE_IO = ("disk i/o error", "database or disk is full", "unable to open database file", "readonly database",
              "no space left", "read-only file system")


def is_disk_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return getattr(exc, "errno", None) == errno.ENOSPC or "no space left" in text or "disk is full" in text


def is_io_error(exc: BaseException) -> bool:
    """The disk's fault: an OSError, SQLite's I/O / disk-full / cannot-open errors, faiss' read/write errors."""
    if isinstance(exc, StorageError):
        return False  # already the one line
    if isinstance(exc, OSError):
        return True
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError):
        return any(marker in text for marker in _SQLITE_IO)
    if isinstance(exc, RuntimeError) and not isinstance(exc, KbQaError):  # faiss reports I/O as RuntimeError
        return is_disk_full(exc) or "write error" in text or "i/o error" in text or "read error" in text
    return False


def reason_of(exc: BaseException) -> str:
    """The failure in a few words: the OS's text for an OSError, the last line of anything else."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def free_space_hint(folder: Path, need_bytes: int | None = None) -> str:
    """' Free at least N MiB on FOLDER (M MiB free now) and run it again.' (the parts that can be known)."""
    free_now = free_bytes(folder)
    free = f" ({free_now / 2**20:.0f} MiB free now)" if free_now is not None else ""
    amount = f"at least {max(need_bytes, 1 << 20) / 2**20:.0f} MiB " if need_bytes is not None else "space "
    return f" Free {amount}on {folder}{free} and run it again."


def _nearly_full(folder: Path) -> bool:
    """Less than 1 MiB free: on a full disk SQLite reports "disk I/O error" even for reading (it cannot create
    the WAL's shared-memory file), so the free space says what the message cannot."""
    free_now = free_bytes(folder)
    return free_now is not None and free_now < 1 << 20


def storage_error(kb_name: str, what: str, exc: BaseException, folder: Path, *,
                  outcome: str = "nothing was changed", need_bytes: int | None = None) -> StorageError:
    """The one line for an I/O failure: which KB, what failed and why, what it means for the data, the fix."""
    hint = free_space_hint(folder, need_bytes) if is_disk_full(exc) or _nearly_full(folder) else ""
    if not hint and isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc).lower():
        hint = f" Check that {folder} is writable."
    return StorageError(f"knowledge base {kb_name!r}: {what} failed: {reason_of(exc).rstrip('.')}. "
                        f"{outcome[:1].upper()}{outcome[1:]}.{hint}")


__all__ = ["AnalyserMismatch", "EmbeddingMismatch", "KnowledgeBaseBusy", "KnowledgeBaseDamaged", "KnowledgeBaseError",
           "KnowledgeBaseNotFound", "StorageError", "free_space_hint", "is_disk_full", "is_io_error", "reason_of",
           "storage_error"]
