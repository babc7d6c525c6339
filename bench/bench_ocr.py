"""OCR speed and accuracy on this CPU: pages/s on the 8-page scan, character error rate on scans made here.

    python bench/bench_ocr.py                         # both parts, kb_qa's defaults
    python bench/bench_ocr.py --pages 2 --det-sides 960,1600 --threads 1,2
    python bench/bench_ocr.py --no-scan               # only the made scans (CER)
    python bench/bench_ocr.py --strips                # also page 1 the old way: each image strip OCR'd alone

Part 1, `../shared/docs/mineru/small_ocr.pdf` (8 pages, no text layer, each page drawn as 62 image strips of
1634x39 px): the whole pypdf loader (`ingest.ocr: auto`) per detector size and thread count, timed end to end
(model loading excluded: one warm-up call first). Printed: pages, wall seconds, pages/s, CPU seconds of this
process (all onnxruntime threads) and the load average before and after (the machine is shared: compare CPU-s).
`--strips` times page 1 recognised strip by strip (what kb_qa did before it composed pages), for comparison.

Part 2, made scans: known English and Chinese lines rendered with Pillow in every font found (DejaVu and
Liberation for English; a CJK font such as WenQuanYi Micro Hei for Chinese, else that row is skipped), at two
text sizes, read back by kb_qa's image loader. CER = edit distance / reference length, with runs of whitespace
made one space, and again with all whitespace removed (the recogniser sometimes drops word spaces).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kb_qa.ingest import ocr  # noqa: E402
from kb_qa.ingest.limits import ParseOptions  # noqa: E402
from kb_qa.ingest.loaders import load_bytes, load_document  # noqa: E402

DEFAULT_DET_SIDE = ocr._DET_SIDE
SCAN = REPO / ".." / "shared" / "docs" / "mineru" / "small_ocr.pdf"
EN_LINES = ["Quarterly revenue rose to 1,234 million yuan in 2023.",
            "The invoice is due on 2024-03-31; late fees apply.",
            "Forklift drivers must renew their licence every two years.",
            "Contact: support@example.com, phone 010-8888 6666."]
ZH_LINES = ["知识库问答系统把文档切分成段落，再用向量检索。",
            "第三季度的营业收入为一亿二千万元，同比增长百分之八。",
            "本公司债券的票面利率为百分之三点五，期限五年。",
            "检索到的段落和问题一起交给大模型生成答案。"]
EN_FONTS = ["DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono", "Liberation Sans", "Liberation Serif",
            "Liberation Mono"]


def font_file(family: str, lang: str | None = None) -> str | None:
    """The file fontconfig matches for `family` (None when fontconfig has no font of that family/language)."""
    pattern = f"{family}:lang={lang}" if lang else family
    try:
        out = subprocess.run(["fc-match", "-f", "%{family}|%{file}", pattern], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    matched, _, path = out.partition("|")
    return path if path and family.lower() in matched.lower() else None


def cjk_font() -> tuple[str, str] | None:
    try:
        out = subprocess.run(["fc-list", ":lang=zh", "family", "file"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in sorted(out.splitlines(), key=lambda ln: ("Mono" in ln, ln)):  # a proportional face first
        path, _, family = line.partition(": ")
        if path:
            return family.split(",")[0], path.strip()
    return None


def render(lines: list[str], font_path: str, size: int) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path, size)
    width = max(int(font.getlength(line)) for line in lines) + 60
    step = int(size * 1.8)
    image = Image.new("RGB", (width, 40 + step * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.text((30, 20 + step * n), line, fill="black", font=font)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def cer_pair(got: str, want: str) -> tuple[float, float]:
    spaced = ocr.edit_distance(" ".join(got.split()), " ".join(want.split())) / len(" ".join(want.split()))
    bare_want = "".join(want.split())
    bare = ocr.edit_distance("".join(got.split()), bare_want) / len(bare_want)
    return spaced, bare


def configure(det_side: int) -> None:
    ocr._DET_SIDE = det_side  # the engines are cached per thread count: drop them so the new size applies
    ocr._engines.clear()


def bench_scan(pages: int, det_sides: list[int], threads: list[int], strips: bool) -> None:
    if not SCAN.exists():
        print(f"part 1 skipped: {SCAN} not present")
        return
    print(f"## {SCAN.name}: {pages} pages, pypdf loader, ingest.ocr auto\n")
    print("| det side px | threads | pages | wall s | pages/s | CPU s | CPU s/page | load avg before/after |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for side in det_sides:
        for n in threads:
            configure(side)
            options = ParseOptions(ocr="auto", ocr_max_pages=pages, ocr_threads=n)
            ocr.recognise(_blank(), n)  # load the models outside the timing
            load_before = os.getloadavg()[0]
            wall, cpu = time.perf_counter(), time.process_time()
            with ocr.collect_cost() as cost:
                sections = load_document(SCAN, options=options)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            chars = sum(len(s.text) for s in sections)
            print(f"| {side} | {n} | {cost.pages} | {wall:.1f} | {cost.pages / wall:.3f} | {cpu:.1f} | "
                  f"{cpu / max(cost.pages, 1):.1f} | {load_before:.1f} / {os.getloadavg()[0]:.1f} |", flush=True)
            if side == det_sides[0] and n == threads[0]:
                print(f"<!-- {len(sections)} sections, {chars} characters; page 1 starts: "
                      f"{sections[0].text[:60]!r} -->" if sections else "<!-- no text -->", flush=True)
    if strips:
        from pypdf import PdfReader

        from kb_qa.ingest.loaders.pdf import _page_images

        configure(det_sides[0])
        images = _page_images(PdfReader(SCAN).pages[0], SCAN.name, 1)
        ocr.recognise(_blank(), threads[0])
        wall, cpu = time.perf_counter(), time.process_time()
        text = "\n".join(t for t in (ocr.recognise(im, threads[0]) for im in images) if t)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"\npage 1 strip by strip ({len(images)} images, det side {det_sides[0]}, {threads[0]} threads): "
              f"{wall:.1f} s wall, {cpu:.1f} CPU s, {len(text)} characters; starts {text[:60]!r}")


def _blank():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (200, 60), "white")
    ImageDraw.Draw(image).text((10, 20), "warm up", fill="black")
    return image


def bench_cer(sizes: list[int]) -> None:
    print("\n## Made scans: CER (image loader, kb_qa defaults)\n")
    print("| text | font | px | CER | CER without spaces | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    configure(DEFAULT_DET_SIDE)
    rows: list[tuple[str, str, list[str]]] = []
    for family in EN_FONTS:
        path = font_file(family)
        if path:
            rows.append(("English", family, [path] + EN_LINES))
    cjk = cjk_font()
    if cjk:
        rows.append(("Chinese", cjk[0], [cjk[1]] + ZH_LINES))
    else:
        print("| Chinese | (no CJK font: apt-get install fonts-wqy-microhei) | | | | |")
    options = ParseOptions(ocr="auto")
    ocr.recognise(_blank(), options.ocr_threads)
    for kind, family, (path, *lines) in rows:
        for size in sizes:
            started = time.perf_counter()
            sections = load_bytes(render(lines, path, size), "made.png", options=options)
            seconds = time.perf_counter() - started
            got = "\n".join(s.text for s in sections)
            spaced, bare = cer_pair(got, "\n".join(lines))
            print(f"| {kind} | {family} | {size} | {spaced:.3f} | {bare:.3f} | {seconds:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=8, help="pages of small_ocr.pdf (default all 8)")
    parser.add_argument("--det-sides", default=str(ocr._DET_SIDE), help="detector long sides to compare, px")
    parser.add_argument("--threads", default="2", help="onnxruntime thread counts to compare")
    parser.add_argument("--sizes", default="20,28", help="text sizes of the made scans, px")
    parser.add_argument("--strips", action="store_true", help="also time page 1 strip by strip (old path)")
    parser.add_argument("--no-scan", action="store_true", help="skip part 1")
    parser.add_argument("--no-cer", action="store_true", help="skip part 2")
    args = parser.parse_args()
    print(f"CPU: {_cpu_name()}, {os.cpu_count()} cores; RapidOCR PP-OCRv4 mobile det/rec (ONNX), cls off\n")
    if not args.no_scan:
        bench_scan(args.pages, [int(v) for v in args.det_sides.split(",")],
                   [int(v) for v in args.threads.split(",")], args.strips)
    if not args.no_cer:
        bench_cer([int(v) for v in args.sizes.split(",")])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
