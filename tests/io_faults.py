"""Fault injection for the store's I/O: make the k-th call of one write primitive fail with an I/O error.

`inject(site, nth, err)` patches one of SITES so that its `nth` call (1-based) raises `err`
(OSError(ENOSPC) / OSError(EIO), or for the "sqlite" site the sqlite3.OperationalError SQLite gives for them);
`count(site)` counts calls without failing. Sites: os-level writes (os.open for writing, os.write, os.fsync,
os.replace, os.rename, os.unlink, os.mkdir), faiss.write_index, and every statement on a connection the store
opens ("sqlite": a proxy around `records.connect`/`connect_plain` connections; with `auto_rollback`, the proxy
first rolls the transaction back, as SQLite itself does after SQLITE_FULL / SQLITE_IOERR).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from contextlib import contextmanager

SITES = ("os.open", "os.write", "os.fsync", "os.replace", "os.rename", "os.unlink", "os.mkdir",
         "faiss.write_index", "sqlite", "sqlite-auto-rollback")
ERRORS = {"ENOSPC": (errno.ENOSPC, "No space left on device", "database or disk is full"),
          "EIO": (errno.EIO, "Input/output error", "disk I/O error")}

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Counter:
    def __init__(self, nth: int | None, err: str):
        self.calls, self.nth, self.err = 0, nth, err
        self.fired = False

    def hit(self) -> bool:
        self.calls += 1
        if self.nth is not None and self.calls == self.nth:
            self.fired = True
            return True
        return False

    def os_error(self, what: str = "") -> OSError:
        code, text, _ = ERRORS[self.err]
        return OSError(code, text, what or None)

    def sqlite_error(self) -> sqlite3.OperationalError:
        return sqlite3.OperationalError(ERRORS[self.err][2])


class _FaultyConnection:
    """A sqlite3.Connection whose statements count towards the fault; everything else is the real one."""

    def __init__(self, conn, counter: _Counter, auto_rollback: bool):
        self._conn, self._counter, self._auto = conn, counter, auto_rollback

    def _maybe_fail(self) -> None:
        if self._counter.hit():
            if self._auto and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise self._counter.sqlite_error()

    def execute(self, *args, **kwargs):
        self._maybe_fail()
        return self._conn.execute(*args, **kwargs)

    def executemany(self, *args, **kwargs):
        self._maybe_fail()
        return self._conn.executemany(*args, **kwargs)

    def executescript(self, *args, **kwargs):
        self._maybe_fail()
        return self._conn.executescript(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._conn, name)


@contextmanager
def inject(monkeypatch, site: str, nth: int | None, err: str = "ENOSPC"):
    """Within the block, the `nth` call of `site` fails (None: only count). Yields the counter."""
    counter = _Counter(nth, err)
    with monkeypatch.context() as patch:
        if site.startswith("sqlite"):
            from kb_qa.store import records

            auto = site == "sqlite-auto-rollback"
            for name in ("connect", "connect_plain"):
                real = getattr(records, name)

                def faulty(*args, _real=real, **kwargs):
                    return _FaultyConnection(_real(*args, **kwargs), counter, auto)

                patch.setattr(records, name, faulty)
        elif site == "faiss.write_index":
            import faiss

            real_write = faiss.write_index

            def write_index(index, path, *args):
                if counter.hit():
                    with open(path, "wb") as handle:  # what a full disk leaves: part of the file
                        handle.write(b"partial")
                    raise RuntimeError(f"Error in faiss::FileIOWriter: write error on {path}: "
                                       f"{ERRORS[err][1]}")
                return real_write(index, path, *args)

            patch.setattr(faiss, "write_index", write_index)
        else:
            name = site.split(".", 1)[1]
            real_fn = getattr(os, name)

            def failing(*args, _real=real_fn, _name=name, **kwargs):
                if _name == "open" and not (args[1] if len(args) > 1 else kwargs.get("flags", 0)) & _WRITE_FLAGS:
                    return _real(*args, **kwargs)  # reading is not a write
                if _name == "mkdir" and os.path.isdir(args[0]):
                    return _real(*args, **kwargs)  # EEXIST comes first: a full disk does not change that
                if counter.hit():
                    raise counter.os_error(str(args[0]) if args and _name != "write" else "")
                return _real(*args, **kwargs)

            patch.setattr(os, name, failing)
        yield counter
