"""PDF extraction side by side: kb_qa's pypdf loader against the opt-in PyMuPDF backend, on the same files.

    python bench/bench_pdf.py                      # every text PDF in ../shared/docs, best of 3
    python bench/bench_pdf.py a.pdf b.pdf --repeat 5

For each file and backend: ms per page (wall clock, best of --repeat runs of the whole loader: open, extract
every page, the per-page fixes (visible text, simple tables) and cleaning; OCR off, so scans are left out),
characters extracted, and the number of table rows ('cell | cell' lines) the backend recognised, a rough
measure of how much table structure survives. The pymupdf figures include `find_tables` on every page, which
is most of its cost; `--no-tables` times plain PyMuPDF text extraction for comparison.
PyMuPDF is AGPL-3.0 and opt-in (requirements-bench.txt); without it only pypdf is measured.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kb_qa.ingest.limits import ParseOptions  # noqa: E402
from kb_qa.ingest.loaders import LoadError, load_document  # noqa: E402


def _measure(path: Path, options: ParseOptions, repeat: int) -> tuple[float, int, int, int] | str:
    best, sections = float("inf"), []
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            sections = load_document(path, options=options)
        except LoadError as exc:
            return exc.reason
        best = min(best, time.perf_counter() - started)
    pages = max(s.page or 0 for s in sections) or 1
    text = "\n".join(s.text for s in sections)
    rows = sum(1 for line in text.split("\n") if " | " in line)
    return best, pages, len(text), rows


def _plain_pymupdf(path: Path, repeat: int) -> float:
    import pymupdf

    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        with pymupdf.open(path) as document:
            pages = document.page_count
            for page in document:
                page.get_text("blocks", sort=True)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / max(pages, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-tables", action="store_true", help="also time PyMuPDF text without find_tables")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    paths = args.paths or sorted((REPO / ".." / "shared" / "docs").resolve().glob("**/*.pdf"))
    try:
        import pymupdf  # noqa: F401
        backends = ["pypdf", "pymupdf"]
    except ImportError:
        backends = ["pypdf"]
        print("PyMuPDF is not installed: measuring pypdf only (pip install -r requirements-bench.txt)")
    print(f"{'file':44s} {'pages':>5s}  " + "  ".join(f"{b + ' ms/page':>16s} {'chars':>7s} {'rows':>5s}"
                                                  for b in backends))
    totals = {b: [0.0, 0] for b in backends}
    for path in paths:
        results = {b: _measure(path, ParseOptions(pdf_backend=b, ocr="off"), args.repeat) for b in backends}
        if any(isinstance(r, str) for r in results.values()):
            reason = next(r for r in results.values() if isinstance(r, str))
            print(f"{path.parent.name + '/' + path.name:44s} skipped: {reason}")
            continue
        pages = results["pypdf"][1]
        cells = []
        for b in backends:
            seconds, _, chars, rows = results[b]
            totals[b][0] += seconds
            totals[b][1] += pages
            cells.append(f"{1000 * seconds / pages:16.1f} {chars:7d} {rows:5d}")
        extra = f"  plain pymupdf {_plain_pymupdf(path, args.repeat):.1f} ms/page" if args.no_tables else ""
        print(f"{path.parent.name + '/' + path.name:44s} {pages:5d}  " + "  ".join(cells) + extra)
    print("overall: " + ", ".join(f"{b} {1000 * s / max(p, 1):.1f} ms/page over {p} pages"
                                  for b, (s, p) in totals.items()))


if __name__ == "__main__":
    main()
