"""Every name that reaches the file system: knowledge-base names, document paths, safe joins (kb_qa.paths).

A knowledge-base name becomes one folder under `knowledge_base/` and one under `vector_store/`; a document path
is relative to its knowledge base. Both must never reach outside their root, whatever the caller sends.
"""

from __future__ import annotations

import re
import shutil
import unicodedata
from pathlib import Path, PurePosixPath

from kb_qa.errors import UsageError

# Letters (any script, so Chinese names work), digits, '_', '-', '.', not starting with '.'; 1..64 characters.
_KB_NAME = re.compile(r"^[^\W][\w.\-]{0,63}$", re.UNICODE)
MAX_NAME_BYTES = 255  # a single path component, as most file systems allow


class InvalidName(UsageError):
    """A name that could escape its folder or is otherwise unusable."""


def validate_kb_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidName("knowledge base name is empty")
    if name != name.strip() or "\x00" in name or ".." in name or not _KB_NAME.match(name):
        raise InvalidName(
            f"invalid knowledge base name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "not starting with '.', no '..', no path separators"
        )
    return name


def sanitize_filename(name: str) -> str:
    """A safe single file name from an uploaded name: directory parts, NUL, control characters dropped."""
    if not isinstance(name, str):
        raise InvalidName("file name is not text")
    name = unicodedata.normalize("NFC", name).replace("\x00", "")
    name = name.replace("\\", "/").split("/")[-1]  # keep only the last component, whatever the separator
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    if not name:
        raise InvalidName("file name is empty after removing path parts and control characters")
    while len(name.encode("utf-8")) > MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:-1] + dot + ext) if stem and len(ext) < 16 else name[:-1]
    return name


def validate_doc_path(path: str) -> str:
    """A document path relative to its knowledge base, normalised to '/' separators; no way out of the root."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidName(f"invalid document path {path!r}")
    posix = path.replace("\\", "/")
    pure = PurePosixPath(posix)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", posix) or any(p in ("..", "") for p in posix.split("/")):
        raise InvalidName(f"invalid document path {path!r}: must be relative, without '..' or empty parts")
    return str(pure)


def safe_join(root: Path, relative: str) -> Path:
    """`root / relative`, refusing anything (symlinks included) that resolves outside `root`."""
    relative = validate_doc_path(relative)
    root_resolved = Path(root).resolve()
    target = (root_resolved / relative).resolve()
    if target != root_resolved and root_resolved not in target.parents:
        raise InvalidName(f"document path {relative!r} resolves outside its knowledge base")
    return target


def free_bytes(folder: Path) -> int | None:
    """Free space (bytes) on the file system that holds `folder`, or would hold it once created (the nearest
    existing parent is asked); None when even that cannot be read."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None
