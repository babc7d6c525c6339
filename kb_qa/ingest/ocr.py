"""OCR for scans and images, offline: RapidOCR (PP-OCRv4 Chinese/English, ONNX models inside its wheel).

`ocr_images(images, first_page)` turns page images into `Section`s marked `ocr=True`, one per page, lines in
reading order (top to bottom, then left to right). Used by the image loader, by the PDF loader for pages with no
(or almost no) text layer, and for pictures inside DOCX/PPTX.

Modes (`ingest.ocr`): auto = only where there is no text layer; force = every page with an image; off = never.
At most `ocr_max_pages` pages per file are recognised (the rest are skipped, with a warning). Progress goes to
`progress_callback` (the worker forwards it to the parent) and the cost to `COST` (pages, seconds).

Deliberately not here: layout analysis or table structure from images (only text lines).
"""

from __future__ import annotations

import contextvars
import io
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kb_qa.ingest.limits import current_options
from kb_qa.schema import Section

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
MIN_TEXT_LAYER_CHARS = 16  # a page with fewer non-space characters than this counts as having no text layer
MAX_IMAGE_PIXELS = 100_000_000  # Pillow's decompression-bomb bound per image (10k x 10k)
_DET_SIDE = 1600  # px: the longest side the detector sees (RapidOCR's default 'min 736' upscales small scans)

progress_callback: contextvars.ContextVar[Callable[[int, int, str], None] | None] = contextvars.ContextVar(
    "ocr_progress", default=None)


@dataclass
class OcrCost:
    pages: int = 0
    seconds: float = 0.0
    skipped_pages: int = 0  # over ocr_max_pages

    def add(self, pages: int, seconds: float, skipped: int = 0) -> None:
        with _cost_lock:
            self.pages += pages
            self.seconds += seconds
            self.skipped_pages += skipped


_cost_lock = threading.Lock()
COST = OcrCost()  # running total in this process (the parent adds what its workers report)

_engines: dict[int, object] = {}
_engine_lock = threading.Lock()


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("rapidocr_onnxruntime") is not None


def engine(threads: int):
    """One RapidOCR engine per process and thread count (loading the models takes a second or two)."""
    with _engine_lock:
        if threads not in _engines:
            from kb_qa.ingest.loaders.base import LoadError

            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise LoadError("OCR", "OCR needs the 'rapidocr-onnxruntime' package "
                                       "(pip install -r requirements.txt), or set ingest.ocr: off") from exc
            _engines[threads] = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1,
                                         det_limit_type="max", det_limit_side_len=_DET_SIDE)
        return _engines[threads]


def open_image(data: bytes):
    """Decode image bytes with Pillow (bounded pixel count), as RGB; raises on damaged or huge images."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # over 2x this Pillow raises DecompressionBombError
    image = Image.open(io.BytesIO(data))
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image of {image.width}x{image.height} pixels is over {MAX_IMAGE_PIXELS:,}")
    return image


def image_frames(data: bytes) -> list:
    """Every frame of an image (multi-page TIFF: one per page) as RGB."""
    from PIL import ImageSequence

    image = open_image(data)
    return [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]


def recognise(image, threads: int | None = None) -> str:
    """Text lines of one image (a PIL image or an array), in reading order."""
    import numpy as np

    threads = threads or current_options.get().ocr_threads
    result, _ = engine(threads)(np.asarray(image))
    return _reading_order(result or [])


def ocr_pages(pages: Iterable[tuple[int, list]], total: int) -> list[Section]:
    """`pages` = (page number, [images on it]); one OCR section per page that yields text. Bounded by
    `ocr_max_pages`; progress per page."""
    options = current_options.get()
    report = progress_callback.get()
    sections: list[Section] = []
    done = skipped = 0
    started = time.perf_counter()
    for number, images in pages:
        if done >= options.ocr_max_pages:
            skipped += 1
            continue
        text = "\n".join(t for t in (recognise(image, options.ocr_threads) for image in images) if t.strip())
        done += 1
        if report is not None:
            report(done, min(total, options.ocr_max_pages), "OCR pages")
        if text.strip():
            sections.append(Section(text, page=number, ocr=True))
    COST.add(done, time.perf_counter() - started, skipped)
    if skipped:
        log.warning("OCR stopped after %d pages (ingest.ocr_max_pages); %d pages skipped", done, skipped)
    return sections


def _reading_order(result: list) -> str:
    """RapidOCR boxes -> lines: boxes whose vertical centres are within half a line height share a line."""
    boxes = []
    for box, text, _score in result:
        ys = [p[1] for p in box]
        xs = [p[0] for p in box]
        boxes.append((min(ys), max(ys), min(xs), str(text)))
    boxes.sort()
    lines: list[list[tuple[float, str]]] = []
    line_mid = line_height = None
    for top, bottom, left, text in boxes:
        mid, height = (top + bottom) / 2, bottom - top
        if lines and line_mid is not None and abs(mid - line_mid) <= max(line_height, height) / 2:
            lines[-1].append((left, text))
        else:
            lines.append([(left, text)])
            line_mid, line_height = mid, height
    return "\n".join(" ".join(t for _, t in sorted(line)) for line in lines)
