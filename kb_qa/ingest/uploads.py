"""Saving uploaded files (web page, HTTP API) into a knowledge base's document folder, safely.

The stored name is sanitised (no directories, '..', absolute paths, NUL or control characters), the target must
resolve inside `knowledge_base/<kb>/` (a symlink planted there cannot redirect the write), the size limit is
enforced before anything touches the disk, and the write is atomic (temporary file + rename), so a failed upload
never leaves half a file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kb_qa.errors import UsageError
from kb_qa.paths import InvalidName, safe_join, sanitize_filename, validate_kb_name
from kb_qa.store.vector_index import file_sha256


class UploadRejected(UsageError):
    """An upload refused before it was stored; the message names the file and the reason."""


@dataclass(frozen=True)
class SavedUpload:
    name: str  # the stored (sanitised) file name = the document's path in the knowledge base
    path: Path
    unchanged: bool  # the same bytes were already stored under this name


def save_upload(docs_root: Path, kb: str, filename: str, data: bytes, *, max_bytes: int,
                extensions: set[str] | frozenset[str]) -> SavedUpload:
    validate_kb_name(kb)
    try:
        name = sanitize_filename(filename)
    except InvalidName as exc:
        raise UploadRejected(f"{filename!r}: {exc}") from exc
    if Path(name).suffix.lower() not in extensions:
        raise UploadRejected(f"{name}: unsupported file type {Path(name).suffix or '(none)'!r}")
    if len(data) > max_bytes:
        raise UploadRejected(f"{name}: {len(data) / 2**20:.1f} MiB is over the upload limit of "
                             f"{max_bytes / 2**20:.1f} MiB (ingest.max_file_mb)")
    folder = Path(docs_root) / kb
    if folder.is_symlink():
        raise UploadRejected(f"{name}: the knowledge base folder {folder} is a symbolic link; refusing to write")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        target = safe_join(folder, name)
    except InvalidName as exc:
        raise UploadRejected(f"{name}: {exc}") from exc
    if target.parent != folder.resolve():
        raise UploadRejected(f"{name}: would be written outside the knowledge base folder")
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise UploadRejected(f"{name}: a non-regular file of that name is in the way")
    if target.is_file() and file_sha256(target) == hashlib.sha256(data).hexdigest():
        return SavedUpload(name, target, unchanged=True)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return SavedUpload(name, target, unchanged=False)

