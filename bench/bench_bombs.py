"""Hostile files through `python -m kb_qa.ingest`, before and after the per-file limits: peak RSS, time, outcome.

The attacks of issue 18 item 5 and issue 17 "Bad input, bounded" are generated here (sizes printed), then each is
ingested into a fresh knowledge base by the CLI of a source tree (`--tree`, default: this checkout), and the
bench prints one row per file: peak RSS of the CLI's whole process tree (the parse worker included; sampled every
0.1 s with psutil and summed over the tree), wall time, and the outcome (the per-file status and reason from
`--json`, or what stopped it). A run that passes `--timeout` seconds or `--rss-cap-mb` is killed (tree and all)
and reported as such: a bound of the bench, not of the product.

    # after (this checkout), then before (the commit before the limits landed, in a worktree):
    git worktree add --detach /tmp/kbqa-before 7e5d667^
    python bench/bench_bombs.py --out /tmp/bombs-after.json
    python bench/bench_bombs.py --tree /tmp/kbqa-before --out /tmp/bombs-before.json
    python bench/bench_bombs.py --table /tmp/bombs-before.json /tmp/bombs-after.json

Each tree gets its own model cache (`--work`/cache-<tree>); one warm-up ingest of a small file converts the
embedding model first, so the rows time the attack, not the conversion. `--cases a,b` runs some only;
`--set KEY=VALUE` passes settings through the environment (e.g. ingest.max_parse_seconds=60 to keep the run
short: the xlsx bombs run until the parse limit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20

# -- the files -------------------------------------------------------------------------------------------------

_CT = ('<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
       'content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
       'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>{overrides}</Types>')
_RELS = ('<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/'
         '2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
         'relationships/officeDocument" Target="{target}"/></Relationships>')
_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def _streamed(z: zipfile.ZipFile, member: str, head: bytes, unit: bytes, total: int, tail: bytes) -> None:
    with z.open(member, "w", force_zip64=True) as f:
        f.write(head)
        block = unit * max(1, MiB // len(unit))
        written = 0
        while written < total:
            f.write(block)
            written += len(block)
        f.write(tail)


def docx_paragraphs(path: Path, xml_mib: int) -> Path:
    """A valid .docx whose document.xml is `xml_mib` MiB of short paragraphs (compresses ~1000:1)."""
    override = ('<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
                'officedocument.wordprocessingml.document.main+xml"/>')
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", _CT.format(overrides=override))
        z.writestr("_rels/.rels", _RELS.format(target="word/document.xml"))
        _streamed(z, "word/document.xml", f'<w:document xmlns:w="{_W}"><w:body>'.encode(),
                  b"<w:p><w:r><w:t>pallet forklift dock</w:t></w:r></w:p>", xml_mib * MiB,
                  b"</w:body></w:document>")
    return path


def sparse_xlsx(path: Path, rows: int) -> Path:
    """An .xlsx claiming 16,384 columns, one cell at each end of every row (openpyxl pads each row)."""
    ns = "http://schemas.openxmlformats.org"
    overrides = ('<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-'
                 'officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" '
                 'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>')
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", _CT.format(overrides=overrides))
        z.writestr("_rels/.rels", _RELS.format(target="xl/workbook.xml"))
        z.writestr("xl/workbook.xml", f'<workbook xmlns="{ns}/spreadsheetml/2006/main" xmlns:r="{ns}/'
                   'officeDocument/2006/relationships"><sheets><sheet name="S" sheetId="1" r:id="rId1"/></sheets>'
                   '</workbook>')
        z.writestr("xl/_rels/workbook.xml.rels", f'<Relationships xmlns="{ns}/package/2006/relationships">'
                   f'<Relationship Id="rId1" Type="{ns}/officeDocument/2006/relationships/worksheet" '
                   'Target="worksheets/sheet1.xml"/></Relationships>')
        with z.open("xl/worksheets/sheet1.xml", "w") as f:
            f.write(f'<worksheet xmlns="{ns}/spreadsheetml/2006/main"><dimension ref="A1:XFD{rows}"/>'
                    '<sheetData>'.encode())
            for r in range(1, rows + 1):
                f.write(f'<row r="{r}"><c r="A{r}" t="inlineStr"><is><t>x{r}</t></is></c><c r="XFD{r}" '
                        f't="inlineStr"><is><t>y</t></is></c></row>'.encode())
            f.write(b"</sheetData></worksheet>")
    return path


def zip_bomb(path: Path, member: str, mib: int) -> Path:
    """A tiny package whose main member declares `mib` MiB (one highly compressible XML text)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        _streamed(z, member, b"<a>", b"x" * MiB, mib * MiB, b"</a>")
    return path


def json_records(path: Path, target_bytes: int) -> Path:
    """~1 MB of small nested records: every leaf becomes a line of text."""
    items, size, i = [], 2, 0
    while size < target_bytes:
        item = {"id": i, "a": {"b": [i, {"c": f"v{i}", "d": [1, 2, {"e": "x"}]}]}}
        items.append(item)
        size += len(json.dumps(item)) + 1
        i += 1
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


def csv_rows(path: Path, target_bytes: int) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        f.write("id,name,city,amount,note\n")
        i = 0
        while f.tell() < target_bytes:
            f.write(f"{i},name {i},city {i % 97},{i * 3.5:.2f},note number {i} about pallets\n")
            i += 1
    return path


def pdf_empty_pages(path: Path, pages: int) -> Path:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    with open(path, "wb") as f:
        writer.write(f)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _single_line(path: Path, mib: int, unit: bytes = b"a") -> Path:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write((unit * (MiB // len(unit) + 1))[:MiB])
    return path


CASES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    # issue 18 item 5
    "docx-1000mib-xml": ("docx expanding to 1,000 MiB of XML", lambda d: docx_paragraphs(d / "big.docx", 1000)),
    "docx-200mib-xml": ("docx expanding to 200 MiB of XML", lambda d: docx_paragraphs(d / "mid.docx", 200)),
    "json-1mb-records": ("1 MB JSON of nested records", lambda d: json_records(d / "records.json", 1_000_000)),
    "xlsx-sparse-50k": ("xlsx, 50k rows x 16,384 cols claimed", lambda d: sparse_xlsx(d / "s50k.xlsx", 50_000)),
    "xlsx-sparse-300k": ("xlsx, 300k rows x 16,384 cols claimed", lambda d: sparse_xlsx(d / "s300k.xlsx", 300_000)),
    "csv-17mb": ("17 MB CSV of ordinary rows", lambda d: csv_rows(d / "rows.csv", 17_000_000)),
    # issue 17, Bad input, bounded
    "zip-docx-2gib": ("zip bomb .docx (2 GiB declared)", lambda d: zip_bomb(d / "z.docx", "word/document.xml", 2048)),
    "zip-xlsx-2gib": ("zip bomb .xlsx (2 GiB declared)", lambda d: zip_bomb(d / "z.xlsx", "xl/workbook.xml", 2048)),
    "zip-pptx-2gib": ("zip bomb .pptx (2 GiB declared)",
                      lambda d: zip_bomb(d / "z.pptx", "ppt/presentation.xml", 2048)),
    "zip-odt-2gib": ("zip bomb .odt (2 GiB declared)", lambda d: zip_bomb(d / "z.odt", "content.xml", 2048)),
    "zip-epub-2gib": ("zip bomb .epub (2 GiB declared)", lambda d: zip_bomb(d / "z.epub", "OEBPS/c.xhtml", 2048)),
    "txt-200mb-one-line": ("200 MB single-line .txt", lambda d: _single_line(d / "line.txt", 200)),
    # under max_file_mb and max_chars_per_file: only the chunk limit (before embedding) stops it
    # (words, not one letter: a 300-letter 'word' is one [UNK] token and embeds 10x faster than text does)
    "txt-3mib-one-line": ("3 MiB single line of words (~12,600 chunks)",
                          lambda d: _single_line(d / "line3.txt", 3, b"pallet forklift dock ")),
    "json-nested-100k": ("JSON nested 100,000 levels",
                         lambda d: _write(d / "deep.json", b"[" * 100_000 + b"]" * 100_000)),
    "csv-1e6-columns": ("CSV row of 10^6 columns", lambda d: _write(d / "wide.csv", b",".join([b"c"] * 1_000_000))),
    "pdf-10k-empty-pages": ("PDF with 10,000 empty pages", lambda d: pdf_empty_pages(d / "empty.pdf", 10_000)),
}

# -- running one ingest ----------------------------------------------------------------------------------------


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in family:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_ingest(tree: Path, file: Path, work: Path, env_extra: dict[str, str], timeout_s: float,
               rss_cap_mb: int) -> dict:
    import psutil

    store = Path(tempfile.mkdtemp(prefix="store-", dir=work))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_QA_")}
    env.update({"PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "KB_QA_HOME": str(store), "KB_QA_PATHS__KNOWLEDGE_BASE_ROOT": str(store / "kb"),
                "KB_QA_PATHS__VECTOR_STORE_ROOT": str(store / "vs"),
                "KB_QA_MODEL_CACHE": str(work / f"cache-{tree.name}"), **env_extra})
    out, err = store / "stdout", store / "stderr"
    started = time.monotonic()
    with open(out, "wb") as so, open(err, "wb") as se:
        child = subprocess.Popen([sys.executable, "-m", "kb_qa.ingest", str(file), "--kb", "bomb", "--json"],
                                 cwd=tree, env=env, stdout=so, stderr=se, start_new_session=True)
        proc = psutil.Process(child.pid)
        peak, stopped = 0, None
        while child.poll() is None:
            peak = max(peak, _tree_rss(proc))
            elapsed = time.monotonic() - started
            if elapsed > timeout_s or peak > rss_cap_mb * MiB:
                stopped = (f"killed by the bench after {elapsed:.0f} s" if elapsed > timeout_s
                           else f"killed by the bench at {peak / MiB:,.0f} MiB RSS")
                os.killpg(child.pid, 9)
                child.wait()
                break
            time.sleep(0.1)
    seconds = time.monotonic() - started
    row = {"seconds": round(seconds, 1), "peak_rss_mib": round(peak / MiB), "exit": child.returncode}
    if stopped:
        row["outcome"] = stopped
        return row
    try:
        report = json.loads(out.read_text(encoding="utf-8"))
        files = report["files"]
        row["outcome"] = "; ".join(f"{f['status']} ({f['chunks']} chunks)" if f["status"] != "failed"
                                   else f"failed: {f['reason']}" for f in files)
        row["chunks"] = report["chunks_embedded"]
    except (ValueError, KeyError):
        tail = err.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        row["outcome"] = f"exit {child.returncode}: {tail[0][:160]}"
    return row


def _file_for(work: Path, name: str) -> Path:
    """The case's file, made once per --work folder (a folder per case holding only it)."""
    folder = work / "files" / name
    folder.mkdir(parents=True, exist_ok=True)
    files = list(folder.iterdir())
    return files[0] if files else CASES[name][1](folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, default=REPO, help="source tree whose kb_qa runs (default: this one)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "kbqa-bombs",
                    help="generated files, stores and model caches")
    ap.add_argument("--cases", help="comma-separated case names (default: all): " + ", ".join(CASES))
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per ingest before the bench kills it")
    ap.add_argument("--rss-cap-mb", type=int, default=6144, help="tree RSS at which the bench kills it")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for the ingest, e.g. ingest.max_parse_seconds=60 (KB_QA_ environment)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    ap.add_argument("--generate", action="store_true", help="only make the files (in --work/files) and exit")
    ap.add_argument("--table", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="print the table of two runs")
    args = ap.parse_args(argv)
    if args.table:
        print_table(*(json.loads(p.read_text()) for p in args.table))
        return 0
    tree = args.tree.resolve()
    work = args.work.resolve()
    (work / "files").mkdir(parents=True, exist_ok=True)
    env_extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        env_extra["KB_QA_" + key.upper().replace(".", "__")] = value
    names = args.cases.split(",") if args.cases else list(CASES)
    if args.generate:
        for name in names:
            print(name, _file_for(work, name), flush=True)
        return 0
    warm = work / "files" / "warm.txt"
    warm.write_text("A small file that makes the embedding model load (and convert) once.", encoding="utf-8")
    warmup = run_ingest(tree, warm, work, env_extra, 900, args.rss_cap_mb)
    rows = {"tree": str(tree), "settings": args.set, "warmup": warmup, "cases": {}}
    print(f"tree {tree}: warm-up {warmup}", flush=True)
    for name in names:
        what = CASES[name][0]
        file = _file_for(work, name)
        row = run_ingest(tree, file, work, env_extra, args.timeout, args.rss_cap_mb)
        row.update(what=what, file_mb=round(file.stat().st_size / 1e6, 2))
        rows["cases"][name] = row
        print(name, json.dumps(row, ensure_ascii=False), flush=True)
        if args.out:
            args.out.write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    return 0


def print_table(before: dict, after: dict) -> None:
    print(f"before: {before['tree']} {before.get('settings') or ''}\nafter:  {after['tree']} "
          f"{after.get('settings') or ''}\n")
    print("| attack | file MB | before: peak RSS MiB, s | before: outcome | after: peak RSS MiB, s | after: outcome |")
    print("|---|---:|---:|---|---:|---|")
    for name, a in after["cases"].items():
        b = before["cases"].get(name)
        cell_b = f"{b['peak_rss_mib']:,}, {b['seconds']:.0f}" if b else "-"
        print(f"| {a['what']} | {a['file_mb']} | {cell_b} | {(b or {}).get('outcome', 'not run')[:90]} | "
              f"{a['peak_rss_mib']:,}, {a['seconds']:.0f} | {a['outcome'][:90]} |")


if __name__ == "__main__":
    sys.exit(main())
