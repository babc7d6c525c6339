"""Disk full and I/O errors in every command that writes (issue 17 item 3): an injected OSError(ENOSPC / EIO) or
SQLite "database or disk is full" / "disk I/O error" (with and without SQLite rolling the transaction back
itself) at the first, a middle and the last call of each write primitive (tests/io_faults.py), in ingest (into
a new KB, into an existing one, --rebuild, --prune), kb remove, kb delete and kb repair, and in the commands that
only read. Each must give: no traceback, one `error:` line naming the KB and what failed (exit 1), the previous
version intact (a plain ingest may keep the batches it committed before the failure), no temporary files, a
store the doctor passes, and a re-run without the fault that finishes the job."""

from __future__ import annotations

import contextlib
import io
import shutil
import traceback
from pathlib import Path

import pytest

from tests.conftest import FakeEmbeddings, make_app
from tests.io_faults import SITES, inject

KB_DIR = "knowledge_base/kb"


def _settings(root: Path):
    from kb_qa.settings import load_settings

    return load_settings(overrides={
        "paths": {"knowledge_base_root": str(root / "knowledge_base"), "vector_store_root": str(root / "vector_store")},
        "llm": {"model_path": None},
        "ingest": {"isolate_parsing": False, "commit_every_chunks": 8},  # several commits per ingest
    })


def _run(root: Path, argv: list[str]) -> tuple[int | str, str]:
    """(exit code or the traceback's last line, stderr) of one CLI command on the store under `root`."""
    from kb_qa.cli import ingest as ingest_cli
    from kb_qa.cli import kb as kb_cli

    argv = [a.format(root=root) for a in argv]
    app = make_app(_settings(root), embeddings=FakeEmbeddings())
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc: int | str = (ingest_cli if argv[0] == "ingest" else kb_cli).main(argv[1:], app=app)
    except Exception as exc:  # noqa: BLE001 - what the user would see as a traceback
        rc = "traceback: " + traceback.format_exception_only(type(exc), exc)[-1].strip()
    finally:
        for kb in app._kbs.values():
            kb.close()
    return rc, err.getvalue()


def _state(root: Path, name: str):
    from kb_qa.store import KnowledgeBase

    kb = KnowledgeBase(root / "vector_store", name)
    folder = sorted(p.name for p in (root / KB_DIR).glob("*"))
    if kb._state() == "missing":
        return "missing", (), folder
    kb = KnowledgeBase.open(root / "vector_store", name)
    try:
        return tuple(sorted((d.source, d.sha256) for d in kb.documents())), kb.chunk_count(), folder
    finally:
        kb.close()


def _problems(root: Path, name: str) -> list[str]:
    """Temporary files anywhere, and what the doctor finds (other generations' index files aside: leftovers the
    next writer removes)."""
    from kb_qa.store import KnowledgeBase, doctor

    found = [f"temporary file {p}" for p in root.rglob("*")
             if p.name.endswith(".tmp") or ".creating" in p.name or ".deleting" in p.name]
    kb = KnowledgeBase(root / "vector_store", name)
    if kb._state() is None:
        found += [p for p in doctor.check(kb).problems if not p.startswith("orphan file index-")]
        kb.close()
    return found


def _prepare_add(root: Path) -> None:
    (root / KB_DIR / "new.txt").write_text("a new document about cranes " * 30, encoding="utf-8")
    (root / KB_DIR / "d1.txt").write_text("a changed document about pallets " * 40, encoding="utf-8")


def _prepare_prune(root: Path) -> None:
    (root / KB_DIR / "d2.txt").unlink()


def _prepare_repair(root: Path) -> None:
    from kb_qa.store import records

    conn = records.connect(root / "vector_store" / "kb" / "kb.sqlite")
    # lose 3 keyword rows (the index is contentless: FTS5's 'delete' with the stored terms, as a writer would)
    records.delete_keyword_rows(conn, [r[0] for r in conn.execute("SELECT id FROM chunks ORDER BY id LIMIT 3")])
    conn.close()


DOCS = "{root}/" + KB_DIR
COMMANDS = {  # name: (KB, argv, preparation, may keep the batches committed before the failure)
    "ingest-new-kb": ("new", ["ingest", DOCS, "--kb", "new", "-q"], None, True),
    "ingest": ("kb", ["ingest", DOCS, "--kb", "kb", "-q"], _prepare_add, True),
    "rebuild": ("kb", ["ingest", DOCS, "--kb", "kb", "-q", "--rebuild"], _prepare_add, False),
    "prune": ("kb", ["ingest", DOCS, "--kb", "kb", "-q", "--prune"], _prepare_prune, True),
    "remove": ("kb", ["kb", "remove", "kb", "d3.txt"], None, False),
    "delete": ("kb", ["kb", "delete", "kb"], None, False),
    "repair": ("kb", ["kb", "repair", "kb"], _prepare_repair, False),
    "show": ("kb", ["kb", "show", "kb"], None, False),
}


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    """A store with KB 'kb' holding six documents of its own folder, knowledge_base/kb/."""
    root = tmp_path_factory.mktemp("io-base")
    folder = root / KB_DIR
    folder.mkdir(parents=True)
    for i in range(6):
        words = " ".join(f"word{j} 知识{j % 7}" for j in range(40 + 10 * i))
        (folder / f"d{i}.txt").write_text(f"document {i} {words}", encoding="utf-8")
    rc, err = _run(root, ["ingest", DOCS, "--kb", "kb", "-q"])
    assert rc == 0, err
    return root


def _fresh(base: Path, tmp_path: Path, prepare) -> Path:
    root = tmp_path / "store"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base, root)
    if prepare is not None:
        prepare(root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_io_errors_are_one_line_and_lose_nothing(command, base_store, tmp_path, monkeypatch, caplog):
    name, argv, prepare, keeps_batches = COMMANDS[command]
    root = _fresh(base_store, tmp_path, prepare)
    before, baseline = _state(root, name), set(_problems(root, name))  # repair's input has problems to fix
    rc, err = _run(root, argv)
    assert rc == 0, err
    after = _state(root, name)
    failures = []
    for site in SITES:
        root = _fresh(base_store, tmp_path, prepare)
        with inject(monkeypatch, site, None) as counter:
            _run(root, argv)
        calls = counter.calls
        points = {(1, "ENOSPC"), (calls, "EIO")}  # the first and the last call; a middle one where there are many
        if site.startswith("sqlite") and calls > 4:
            points.add(((calls + 1) // 2, "ENOSPC" if site == "sqlite" else "EIO"))
        for nth, kind in sorted(points) if calls else ():
            caplog.clear()
            root = _fresh(base_store, tmp_path, prepare)
            with inject(monkeypatch, site, nth, kind) as counter:
                rc, err = _run(root, argv)
            where = f"{site} call {nth}/{calls} {kind}: rc {rc}: {err.strip()[:300]}"
            state = _state(root, name)
            lines = err.strip().splitlines()
            if isinstance(rc, str):
                failures.append(where)
                continue
            if rc != 0:
                ok_line = (len(lines) == 1 and lines[0].startswith(f"error: knowledge base {name!r}: ")
                           and ("failed" in lines[0] or "lost" in lines[0]) and "Traceback" not in err)
                full_hint = kind != "ENOSPC" or "Free " in lines[0] or "lost" in lines[0]
                kept = state == before or (keeps_batches and state[0] != "missing" and before[0] != "missing"
                                           and set(state[0]) <= set(before[0]) | set(after[0])) \
                    or (keeps_batches and (before[0] == "missing") and (state[0] == "missing" or
                                                                       set(state[0]) <= set(after[0])))
                if not (ok_line and full_hint and kept):
                    failures.append(f"{where} (one line {ok_line}, space hint {full_hint}, previous kept {kept})")
            elif state != after:
                failures.append(f"{where}: exit 0 but the KB is not the finished version")
            problems = [p for p in _problems(root, name) if p not in baseline  # a delete that stands warns:
                        and not (".deleting" in p and rc == 0 and "could not be removed" in caplog.text)]
            if problems:
                failures.append(f"{where}: left {problems[:3]}")
            if state != after:
                rc2, err2 = _run(root, argv)
                if rc2 != 0 or _state(root, name) != after:
                    failures.append(f"{where}: the re-run gave {rc2}: {err2.strip()[:200]}")
    assert not failures, "\n".join(failures)


def _mount_tmpfs(mount: Path, size: str) -> None:
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); the injected faults above cover the same paths")
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                      capture_output=True, check=False).returncode:
        pytest.skip("mount -t tmpfs is not permitted here (container without CAP_SYS_ADMIN)")


def _fill(folder: Path) -> Path:
    """Fill the file system holding `folder` to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:  # unbuffered: nothing left to flush (and fail) at close
        for size in (1 << 16, 4096, 512, 1):
            try:
                while handle.write(b"\0" * size):
                    pass
            except OSError:
                pass
    return filler


def _one_line_or_ok(rc, err: str, name: str) -> str | None:
    """None when the outcome is acceptable: exit 0, or exit 1 with one `error:` line naming the KB."""
    lines = err.strip().splitlines()
    if isinstance(rc, str):
        return rc
    if rc == 0:
        return None
    if rc == 1 and len(lines) == 1 and lines[0].startswith(f"error: knowledge base {name!r}: "):
        return None
    return f"exit {rc}: {err.strip()[:300]}"


@pytest.mark.slow
def test_a_real_full_disk_then_a_read_only_one(base_store, tmp_path):
    """The same on a real file system: a 2 MiB tmpfs filled to the last byte, then remounted read-only."""
    import subprocess

    mount = tmp_path / "disk"
    _mount_tmpfs(mount, "2m")
    try:
        root = mount / "store"
        shutil.copytree(base_store, root)
        _prepare_add(root)
        before = _state(root, "kb")
        filler = _fill(mount)
        failures = []
        for command in ("ingest", "ingest-new-kb", "rebuild", "remove", "repair", "show"):
            name, argv, _prepare, _keeps = COMMANDS[command]
            rc, err = _run(root, argv)
            if (problem := _one_line_or_ok(rc, err, name)) is not None:
                failures.append(f"full disk, {command}: {problem}")
            if rc == 1 and "Free " not in err:
                failures.append(f"full disk, {command}: no free-space hint in {err.strip()[:200]}")
        rc, err = _run(root, ["kb", "list"])
        if rc != 0 or err.strip():
            failures.append(f"full disk, list: exit {rc}: {err.strip()[:200]}")
        assert not [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".creating" in p.name]
        filler.unlink()
        documents = set(_state(root, "kb")[0])  # a plain ingest may have committed batches before the disk filled
        assert set(before[0]) - {d for d in before[0] if d[0] == "d1.txt"} <= documents  # nothing else went
        assert _problems(root, "kb") == [] and _problems(root, "new") == []
        rc, err = _run(root, COMMANDS["ingest"][1])
        assert rc == 0, err
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
        for command in ("show", "ingest", "remove", "repair"):
            name, argv, _prepare, _keeps = COMMANDS[command]
            rc, err = _run(root, argv)
            if (problem := _one_line_or_ok(rc, err, name)) is not None:
                failures.append(f"read-only, {command}: {problem}")
        rc, err = _run(root, ["kb", "list"])
        if rc != 0 or err.strip():
            failures.append(f"read-only, list: exit {rc}: {err.strip()[:200]}")
        assert not failures, "\n".join(failures)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # lazy: never leave a mount behind
