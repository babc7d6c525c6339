"""Hostile input, bounded: each case gives one clear per-file reason, in bounded time and memory."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from kb_qa.ingest.discover import discover
from kb_qa.ingest.limits import ParseLimits, ParseOptions
from kb_qa.ingest.loaders import SUPPORTED_EXTENSIONS, LoadError
from kb_qa.ingest.worker import ParseWorker

MiB = 1 << 20
OPTIONS = ParseOptions(limits=ParseLimits(max_seconds=30, memory_mb=1536))


@pytest.fixture(scope="module")
def worker():
    with ParseWorker(OPTIONS) as w:
        yield w


def zip_bomb(path: Path, main_member: str, mib: int = 100) -> Path:
    """A tiny ZIP whose members declare `mib` MiB of (highly compressible) XML. (Tests refuse it at a 64 MiB
    limit; the default limit is 256 MiB, and a 1 GiB bomb only takes longer to make, not to refuse.)"""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        with z.open(main_member, "w", force_zip64=True) as f:
            block = b"<a>" + b"x" * (MiB - 3)
            for _ in range(mib):
                f.write(block)
    return path


@pytest.mark.parametrize("ext,member", [(".docx", "word/document.xml"), (".xlsx", "xl/workbook.xml"),
                                        (".pptx", "ppt/presentation.xml"), (".odt", "content.xml"),
                                        (".epub", "OEBPS/chapter.xhtml")])
def test_zip_bombs_are_refused_from_the_central_directory(tmp_path, ext, member):
    path = zip_bomb(tmp_path / f"bomb{ext}", member, mib=100)
    if ext == ".epub":  # the required member must exist for the check to reach the sizes
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("META-INF/container.xml", "<container/>")
    assert path.stat().st_size < 2 * MiB
    with ParseWorker(ParseOptions(limits=ParseLimits(max_expanded_bytes=64 * MiB))) as w:
        started = time.perf_counter()
        with pytest.raises(LoadError) as err:
            w.parse(path, name=path.name)
        assert time.perf_counter() - started < 10
    assert "would expand to 100.0 MiB, over the limit of 64.0 MiB" in err.value.reason, err.value.reason


def test_a_huge_single_line_text_file_is_refused_before_reading(tmp_path, worker):
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:  # 200 MB, sparse: made in no time
        f.write(b"a")
        f.seek(200 * 10**6 - 1)
        f.write(b"b")
    with pytest.raises(LoadError, match="over the limit of 50.0 MiB"):
        worker.parse(path, name=path.name)


def test_json_nested_100000_levels(tmp_path, worker):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LoadError, match="nested too deeply"):
        worker.parse(path, name=path.name)


def test_csv_row_with_a_million_columns_is_bounded(tmp_path, worker):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(10**6)) + "\n" + ",".join("1" for _ in range(10**6)) + "\n")
    started = time.perf_counter()
    try:
        sections = worker.parse(path, name=path.name)
        assert sum(len(s.text) for s in sections) <= OPTIONS.limits.max_chars
    except LoadError as exc:
        assert "wide.csv" not in exc.reason and exc.reason  # one line, a reason
    assert time.perf_counter() - started < 30


def test_pdf_with_10000_empty_pages_is_refused_by_the_page_limit(tmp_path):
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(10_000):
        writer.add_blank_page(100, 100)
    path = tmp_path / "empty.pdf"
    with open(path, "wb") as f:
        writer.write(f)
    with ParseWorker(ParseOptions(limits=ParseLimits(max_pages=2_000, max_seconds=30))) as w:
        started = time.perf_counter()
        with pytest.raises(LoadError, match="10,000 pages, over the limit of 2,000"):
            w.parse(path, name=path.name)
        assert time.perf_counter() - started < 20


def test_a_parse_past_its_time_limit_is_killed_and_the_worker_replaced(tmp_path):
    path = tmp_path / "slow.json"
    path.write_text(json.dumps({"k": "v"}))
    with ParseWorker(ParseOptions(limits=ParseLimits(max_seconds=0.01))) as w:
        with pytest.raises(LoadError, match="longer than 0.01 s"):
            w.parse(path, name="slow.json")
    with ParseWorker(OPTIONS) as w:  # and a normal parse afterwards works
        assert w.parse(path, name="slow.json")[0].text == "k: v"


def test_worker_memory_is_capped(tmp_path):
    """A parse needing more than memory_mb fails with a reason; the parent's RSS stays where it was.
    Run from a fresh interpreter: RUSAGE_CHILDREN is the peak over every child a process ever waited for, so in
    the test process it would also count the suite's other subprocesses."""
    import subprocess
    import sys

    path = tmp_path / "big.json"
    path.write_text("[" + "1," * (10 * MiB) + "1]")  # 20 MiB: ~10M list items, then ~10M '- 1' lines
    script = f"""
import json, resource
from kb_qa.ingest.limits import ParseLimits, ParseOptions
from kb_qa.ingest.loaders import LoadError
from kb_qa.ingest.worker import ParseWorker
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
reason = None
with ParseWorker(ParseOptions(limits=ParseLimits(memory_mb=256, max_seconds=60, max_chars=10**9))) as w:
    try:
        w.parse({str(path)!r}, name="big.json")
    except LoadError as err:
        reason = err.reason
print(json.dumps({{"reason": reason,
                   "children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                   "self_growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    reason = result["reason"]
    assert reason is not None and ("memory" in reason or "crashed" in reason), reason
    assert result["children_mib"] < 1024, result  # Linux reports KiB
    assert result["self_growth_kib"] < 200 * 1024, result


def test_discovery_never_reads_fifos_devices_or_links_out(tmp_path):
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    (root / "ok.txt").write_text("fine")
    os.mkfifo(root / "pipe.txt")
    (root / "passwd.txt").symlink_to("/etc/passwd")
    (root / "zero.txt").symlink_to("/dev/zero")
    (root / "inside.txt").symlink_to(root / "ok.txt")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "new\nline.txt").write_text("spoof")
    (root / "rtl\u202etxt.md").write_text("spoof")
    found, refused = discover([root, "/dev/zero", root / "passwd.txt"], SUPPORTED_EXTENSIONS)
    assert sorted(f.source for f in found) == ["inside.txt", "ok.txt"]
    reasons = {r.path: r.reason for r in refused}
    assert "FIFO" in reasons["pipe.txt"]
    assert "outside the folder" in reasons["passwd.txt"]
    assert "outside the folder" in reasons["zero.txt"]
    assert "not followed" in reasons["sub/loop"]
    assert any("character device" in r.reason for r in refused)  # /dev/zero given directly
    assert "control" in reasons["new\\u000aline.txt"] and "control" in reasons["rtl\\u202etxt.md"]
    assert all("\n" not in r.path and "\u202e" not in r.path for r in refused)


def test_a_name_over_255_bytes_is_refused_clearly(tmp_path):
    found, refused = discover([tmp_path / ("名" * 100 + ".txt")], SUPPORTED_EXTENSIONS)
    assert not found and refused and refused[0].reason  # the OS refuses the name: one line, no traceback
