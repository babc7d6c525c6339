"""Which files an ingest reads: walk the given folders without ever leaving them, and say why a file is skipped.

Rules (each refusal is a `Refused(path, reason)`, reported per file; nothing refused is ever opened):
  - a symbolic link is followed only when its target is a regular file inside the folder being ingested (for a
    file given directly: inside the folder holding it); a link to a folder is never followed (no loops, no
    escapes); a link to outside (e.g. /etc/passwd) is refused and said so;
  - only regular files are read: FIFOs, devices (/dev/zero), sockets are refused;
  - names with control characters (newlines included) or bidirectional overrides are refused: they spoof
    listings; the reason shows the name escaped;
  - hidden entries (a leading '.') are skipped silently, as are files whose extension is not wanted.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
NAME_MAX_BYTES = 255  # longest file name most file systems hold (ext4, APFS, NTFS in UTF-16 units)


@dataclass(frozen=True)
class Found:
    path: Path  # absolute, the path to open (a link's target when it was an allowed link)
    source: str  # name relative to the ingested folder, '/'-separated


@dataclass(frozen=True)
class Refused:
    path: str  # as found (escaped for printing)
    reason: str


def escape_name(name: str) -> str:
    """A name safe to print on one line: control and bidi characters as \\uXXXX escapes."""
    return "".join(f"\\u{ord(ch):04x}" if _is_unsafe(ch) else ch for ch in name)


def _is_unsafe(ch: str) -> bool:
    return ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def name_problem(name: str) -> str | None:
    """Why a file name cannot be ingested, or None."""
    if any(_is_unsafe(ch) for ch in name):
        return "file name contains control or bidirectional-override characters: refused (rename it)"
    if len(os.fsencode(name)) > NAME_MAX_BYTES:
        return f"file name is over {NAME_MAX_BYTES} bytes: refused (rename it)"
    return None


def discover(paths: Iterable[str | os.PathLike], extensions: Iterable[str]) -> tuple[list[Found], list[Refused]]:
    """Files to ingest under `paths` (folders recursively, sorted) and the entries refused with their reason.
    A folder's files are named relative to it; a file given directly is named by its file name."""
    wanted = {e.lower() for e in extensions}
    found: dict[str, Found] = {}
    refused: list[Refused] = []
    for raw in paths:
        path = Path(raw).expanduser()
        try:
            info = path.lstat()
        except OSError as exc:
            refused.append(Refused(escape_name(str(raw)), _os_reason(exc)))
            continue
        if stat.S_ISDIR(info.st_mode):
            _walk(path.absolute(), wanted, found, refused)
        elif stat.S_ISLNK(info.st_mode) and path.is_dir():
            refused.append(Refused(escape_name(str(raw)), "a symbolic link to a folder: not followed "
                                                          "(give the folder itself)"))
        else:
            item = _check_file(path.absolute(), path.absolute().parent, path.name, info, refused)
            if item is not None:
                found.setdefault(item.source, item)
    return list(found.values()), refused


def _walk(root: Path, wanted: set[str], found: dict[str, Found], refused: list[Refused]) -> None:
    real_root = root.resolve()
    # os.walk never descends into symlinked folders (followlinks=False): a loop or an escape cannot start
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda exc: refused.append(
            Refused(escape_name(str(exc.filename)), _os_reason(exc)))):
        here = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            full = here / d
            if full.is_symlink():
                refused.append(Refused(escape_name(full.relative_to(root).as_posix()),
                                       "a symbolic link to a folder: not followed"))
            elif (problem := name_problem(d)) is not None:
                refused.append(Refused(escape_name(full.relative_to(root).as_posix()), "folder " + problem))
            else:
                kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in wanted:
                continue
            full = here / name
            source = full.relative_to(root).as_posix()
            try:
                info = full.lstat()
            except OSError as exc:
                refused.append(Refused(escape_name(source), _os_reason(exc)))
                continue
            item = _check_file(full, real_root, source, info, refused)
            if item is not None:
                found.setdefault(item.source, item)


def _check_file(full: Path, real_root: Path, source: str, info: os.stat_result,
                refused: list[Refused]) -> Found | None:
    shown = escape_name(source)
    problem = name_problem(full.name)
    if problem is not None:
        refused.append(Refused(shown, problem))
        return None
    target = full
    if stat.S_ISLNK(info.st_mode):
        try:
            target = full.resolve(strict=True)
            info = target.stat()
        except (OSError, RuntimeError):  # dangling, or a loop of links
            refused.append(Refused(shown, "a broken or looping symbolic link: not read"))
            return None
        if not target.is_relative_to(real_root.resolve()):
            refused.append(Refused(shown, "a symbolic link to outside the folder being ingested: not read"))
            return None
    if not stat.S_ISREG(info.st_mode):
        refused.append(Refused(shown, f"not a regular file ({_kind(info.st_mode)}): not read"))
        return None
    return Found(target, source)


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "path does not exist"
    return f"cannot read: {exc.strerror or exc}"
