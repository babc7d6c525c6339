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


def _parse_in_fresh_worker(path: Path, limits: str = "") -> dict:
    """Parse `path` in a ParseWorker started by a fresh interpreter; the refusal, the seconds and the peak RSS of
    the worker (RUSAGE_CHILDREN: the peak over every child that interpreter waited for, i.e. only that worker)."""
    import subprocess
    import sys

    script = f"""
import json, resource, time
from kb_qa.ingest.limits import ParseLimits, ParseOptions
from kb_qa.ingest.loaders import LoadError
from kb_qa.ingest.worker import ParseWorker
reason, started = None, time.perf_counter()
with ParseWorker(ParseOptions(limits=ParseLimits(max_seconds=60, {limits}))) as w:
    try:
        w.parse({str(path)!r}, name={path.name!r})
    except LoadError as err:
        reason = err.reason
print(json.dumps({{"reason": reason, "seconds": time.perf_counter() - started,
                   "children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_csv_row_with_a_million_columns_is_refused_at_that_row(tmp_path):
    """One row of 10^6 columns (2 MB) used to become 16,000 chunks of 'c | c | c' (minutes of embedding): it is
    refused by ingest.max_table_columns while the rows are read, in bounded time and memory."""
    path = tmp_path / "wide.csv"
    path.write_bytes(b",".join([b"c"] * 10**6))
    result = _parse_in_fresh_worker(path)
    assert result["reason"] == ("refused: row 1 has 1,000,000 columns, over the limit of 2,048 per table row "
                                "(ingest.max_table_columns)"), result
    assert result["seconds"] < 20, result
    assert result["children_mib"] < 1024, result  # Linux reports KiB


def test_a_wide_row_further_down_is_named_and_trailing_empty_cells_do_not_count(tmp_path):
    from kb_qa.ingest.loaders import load_bytes

    options = ParseOptions(limits=ParseLimits(max_table_columns=10))
    narrow = b"a,b,c" + b"," * 50 + b"\n1,2,3" + b"," * 50 + b"\n"  # spreadsheet exports pad rows with commas
    assert load_bytes(narrow, "padded.csv", options=options)[0].text == "a: 1\nb: 2\nc: 3"
    wide = b"a,b\n1,2\n" + b",".join([b"x"] * 11) + b"\n"
    with pytest.raises(LoadError, match=r"row 3 has 11 columns, over the limit of 10 per table row"):
        load_bytes(wide, "wide.csv", options=options)


def _xlsx(path: Path, width: int) -> Path:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Wide"
    sheet.append(["id", "name"])
    sheet.append([1, "forklift"] + [None] * (width - 3) + ["far"])
    book.save(path)
    return path


def _docx(path: Path, width: int) -> Path:
    import docx

    document = docx.Document()
    document.add_paragraph("Before the table.")
    table = document.add_table(rows=2, cols=width)
    table.cell(0, 0).text, table.cell(1, 0).text = "id", "1"
    document.save(path)
    return path


def _odt(path: Path, width: int) -> Path:
    ns = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:text="urn:oasis:names:tc:'
          'opendocument:xmlns:text:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"')
    row = "".join(f"<table:table-cell><text:p>c{j}</text:p></table:table-cell>" for j in range(width))
    content = (f"<office:document-content {ns}><office:body><office:text><text:p>Before.</text:p><table:table>"
               f"<table:table-row>{row}</table:table-row></table:table></office:text></office:body>"
               "</office:document-content>")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        z.writestr("content.xml", content)
    return path


def _html(path: Path, width: int) -> Path:
    cells = "".join(f"<td>c{j}</td>" for j in range(width))
    path.write_text(f"<html><body><p>Before.</p><table><tr><th>a</th><th>b</th></tr><tr>{cells}</tr></table>"
                    "</body></html>", encoding="utf-8")
    return path


@pytest.mark.parametrize("make,ext,message", [
    (_xlsx, ".xlsx", "sheet 'Wide', row 2 has 40 columns"),
    (_docx, ".docx", "table 1, row 1 spans 40 columns"),
    (_odt, ".odt", "a table, row 1 has 40 columns"),
    (_html, ".html", "table row 2 has 40 cells"),
])
def test_other_table_formats_refuse_a_row_over_the_column_limit(tmp_path, make, ext, message):
    from kb_qa.ingest.loaders import load_bytes

    limit = ParseOptions(limits=ParseLimits(max_table_columns=39))
    data = make(tmp_path / f"wide{ext}", 40).read_bytes()
    with pytest.raises(LoadError) as err:
        load_bytes(data, f"wide{ext}", options=limit)
    assert err.value.reason == f"refused: {message}, over the limit of 39 per table row (ingest.max_table_columns)"
    assert load_bytes(data, f"wide{ext}", options=ParseOptions(limits=ParseLimits(max_table_columns=40)))


def test_html_row_of_a_million_cells_is_refused_before_the_page_is_parsed(tmp_path):
    """BeautifulSoup would take ~45 s and 1.1 GB to build 10^6 cells; the markup is counted first."""
    path = tmp_path / "wide.html"
    path.write_bytes(b"<html><body><table><tr>" + b"<td>c</td>" * 10**6 + b"</tr></table></body></html>")
    result = _parse_in_fresh_worker(path)
    assert result["reason"] == ("refused: table row 1 has 1,000,000 cells, over the limit of 2,048 per table row "
                                "(ingest.max_table_columns)"), result
    assert result["seconds"] < 20, result
    assert result["children_mib"] < 1024, result


def test_xlsx_claiming_16384_columns_is_refused_at_its_first_row_not_parsed_for_minutes(tmp_path):
    from test_ingest_lock import sparse_xlsx  # one cell at A and one at XFD in every row

    path = sparse_xlsx(tmp_path / "sparse.xlsx", 20_000)
    result = _parse_in_fresh_worker(path)
    assert result["reason"] == ("refused: sheet 'S', row 1 has 16,384 columns, over the limit of 2,048 per table "
                                "row (ingest.max_table_columns)"), result
    assert result["seconds"] < 20, result


def _ingest(tmp_path, files: dict[str, bytes], embedder, **ingest_settings):
    from conftest import make_app

    from kb_qa.ingest.pipeline import ingest
    from kb_qa.settings import load_settings

    settings = load_settings(overrides={
        "paths": {"knowledge_base_root": str(tmp_path / "kb"), "vector_store_root": str(tmp_path / "vs")},
        "llm": {"model_path": None}, "ingest": ingest_settings})
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    app = make_app(settings, embeddings=embedder)
    kb = app.kb("kb", create=True)
    report = ingest(kb, [folder], settings.ingest, lambda: embedder, embedding_model=settings.embedding.model)
    return report, kb


def test_wide_csv_fails_alone_in_an_ingest_and_the_rest_is_committed(tmp_path, fake_embedder):
    report, kb = _ingest(tmp_path, {"wide.csv": b",".join([b"c"] * 10**6),
                                    "ok.txt": b"The dock opens at seven."}, fake_embedder)
    outcomes = {o.source: o for o in report.outcomes}
    assert outcomes["wide.csv"].status == "failed"
    assert "row 1 has 1,000,000 columns" in outcomes["wide.csv"].reason
    assert outcomes["ok.txt"].status == "added"
    assert [d.source for d in kb.documents()] == ["ok.txt"]
    assert sum(len(c) for c in fake_embedder.calls) == 1  # only ok.txt's chunk was embedded


def test_the_chunk_limit_refuses_a_file_before_any_of_it_is_embedded(tmp_path, fake_embedder):
    """The long-line family: a text that passes the size and character bounds but splits into more chunks than
    ingest.max_chunks_per_file (minutes of embedding) is refused after splitting, before the embedder runs."""
    long_line = b"pallet " * 20_000  # 140,000 characters on one line: ~560 chunks of 300
    report, kb = _ingest(tmp_path, {"line.txt": long_line, "ok.txt": b"The dock opens at seven."},
                         fake_embedder, max_chunks_per_file=100)
    outcomes = {o.source: o for o in report.outcomes}
    assert outcomes["line.txt"].status == "failed"
    assert "chunks, over the limit of 100 per file (ingest.max_chunks_per_file)" in outcomes["line.txt"].reason
    assert outcomes["ok.txt"].status == "added"
    assert sum(len(c) for c in fake_embedder.calls) == 1


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
