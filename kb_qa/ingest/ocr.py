"""OCR for scans and images, offline: RapidOCR (PP-OCRv4 Chinese/English, ONNX models inside its wheel).

`ocr_pages(pages, total)` turns page pictures into `Section`s marked `ocr=True`, one per page, lines in reading
order (top to bottom, then left to right). Used by the image loader and by the PDF loaders for pages with no (or
almost no) text layer (pypdf: the page's images composed in page layout, `loaders/pdf_images.py`).
`EmbeddedPictures` reads the pictures inside DOCX/PPTX, in place.

Modes (`ingest.ocr`): auto = only where there is no text layer (and, for pictures in documents, only pictures of
a useful size); force = every page with an image, every picture; off = never. Per file at most `ocr_max_pages`
pages and `ocr_max_images` pictures are recognised (the rest are skipped, counted, and warned about).
Progress per page goes to `progress_callback` (the worker forwards it to the parent); the cost (pages, pictures,
seconds) to `record`, which adds it to `COST` and to the caller's `collect_cost()` (the ingest summary).

Speed (defaults chosen on this project's 2-core machine, figures in bench/bench_ocr.py): the detector sees at
most `_DET_SIDE` px on the long side, the angle classifier is off, `ocr_threads` onnxruntime threads.
Deliberately not here: layout analysis or table structure from images (only text lines).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

from kb_qa.ingest.limits import current_options
from kb_qa.schema import Section

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
MIN_TEXT_LAYER_CHARS = 16  # a page with fewer non-space characters than this counts as having no text layer
MAX_IMAGE_PIXELS = 100_000_000  # Pillow's decompression-bomb bound per image (10k x 10k)
MIN_PICTURE_SIDE = 32  # px: in auto mode a picture in a DOCX/PPTX narrower or lower than this is not OCR'd
MIN_PICTURE_PIXELS = 20_000  # px: ... nor one smaller than this in all (about 200 x 100)
# px: the longest side the text detector sees. RapidOCR's default ('min 736') upscales a page so its SHORT side is
# 736 px; 'max 960' scales a 1634x2400 scan page down to 654x960 for detection only (recognition still crops the
# lines from the full-resolution picture). Measured on mineru/small_ocr.pdf page 1 (composed, 1634x2400), one
# thread: the same 31 lines found at 960 and 1600, detection 1.2 vs 1.8 CPU-s; recognition (~8 CPU-s a page) is
# most of the cost and does not depend on this size (8 pages: 0.205 vs 0.223 pages/s, within noise). 960 keeps
# detection cheap on large scans, where it grows with the picture.
_DET_SIDE = 960

progress_callback: contextvars.ContextVar[Callable[[int, int, str], None] | None] = contextvars.ContextVar(
    "ocr_progress", default=None)


def page_wants_ocr(text: str, mode: str) -> bool:
    """Whether a PDF page with text layer `text` is read by OCR under `ingest.ocr` = `mode` (off/auto/force)."""
    return mode == "force" or (mode == "auto" and len("".join(text.split())) < MIN_TEXT_LAYER_CHARS)


def ocr_replaces_layer(text: str, mode: str) -> bool:
    """For a page that is OCR'd: whether its text layer is dropped (forced, or nothing but whitespace) rather than
    kept beside the recognised text."""
    return mode == "force" or not text.strip()


@dataclass
class OcrCost:
    pages: int = 0  # PDF pages and image files/frames recognised
    images: int = 0  # pictures inside DOCX/PPTX recognised
    seconds: float = 0.0  # wall time spent recognising (model loading excluded)
    skipped_pages: int = 0  # over ocr_max_pages
    skipped_images: int = 0  # over ocr_max_images

    def add(self, other: OcrCost) -> None:
        with _cost_lock:
            self.pages += other.pages
            self.images += other.images
            self.seconds += other.seconds
            self.skipped_pages += other.skipped_pages
            self.skipped_images += other.skipped_images

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> OcrCost:
        return cls(pages=int(raw.get("pages", 0)), images=int(raw.get("images", 0)),
                   seconds=float(raw.get("seconds", 0.0)), skipped_pages=int(raw.get("skipped_pages", 0)),
                   skipped_images=int(raw.get("skipped_images", 0)))

    def summary(self) -> str:
        """'OCR: 8 pages, 2 pictures in 41.2 s' (empty when nothing was OCR'd)."""
        if not (self.pages or self.images or self.skipped_pages or self.skipped_images):
            return ""
        parts = [_count(self.pages, "page")] if self.pages or self.skipped_pages else []
        parts += [_count(self.images, "picture")] if self.images or self.skipped_images else []
        skipped = self.skipped_pages + self.skipped_images
        return "OCR: " + ", ".join(parts) + f" in {self.seconds:.1f} s" + (
            f" ({skipped} skipped over ingest.ocr_max_pages / ocr_max_images)" if skipped else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


_cost_lock = threading.Lock()
COST = OcrCost()  # running total in this process (the parent adds what its workers report)
cost_sink: contextvars.ContextVar[OcrCost | None] = contextvars.ContextVar("ocr_cost_sink", default=None)


def record(cost: OcrCost) -> None:
    """Add one parse's OCR cost to the process total and to the caller's sink (`collect_cost`), if any."""
    COST.add(cost)
    sink = cost_sink.get()
    if sink is not None:
        sink.add(cost)


@contextlib.contextmanager
def collect_cost() -> Iterator[OcrCost]:
    """`with collect_cost() as cost:` the OCR done by parses in this context (worker processes included)."""
    cost = OcrCost()
    token = cost_sink.set(cost)
    try:
        yield cost
    finally:
        cost_sink.reset(token)


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
            # use_cls=False: the 0/180 degree line classifier costs a run per line and, on small_ocr.pdf, turned
            # every line that starts with a full-width bracket upside down (4 of 31 lines lost). Scans are upright.
            _engines[threads] = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1,
                                         det_limit_type="max", det_limit_side_len=_DET_SIDE, use_cls=False)
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
    if report is not None and total:
        report(0, min(total, options.ocr_max_pages), "OCR pages")  # the bar starts with the first page's work
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
    record(OcrCost(pages=done, seconds=time.perf_counter() - started, skipped_pages=skipped))
    if skipped:
        log.warning("OCR stopped after %d pages (ingest.ocr_max_pages); %d pages skipped", done, skipped)
    return sections


class EmbeddedPictures:
    """OCR of the pictures inside one document (DOCX, PPTX), in the order the loader meets them.

    Which pictures: `ocr: off` none; `auto` those of at least `MIN_PICTURE_SIDE` px on both sides and
    `MIN_PICTURE_PIXELS` in all (icons, bullets and rules carry no text worth a recogniser run); `force` every
    picture Pillow can decode. At most `ocr_max_images` per file (the rest are counted as skipped and said so).
    A picture whose bytes were already seen in this file (a logo on every slide) is read once and its text
    kept at its first place only. Formats Pillow cannot read (EMF, WMF, SVG) are passed over."""

    def __init__(self, name) -> None:
        self.name = name
        self.options = current_options.get()
        self.cost = OcrCost()
        self._seen: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.options.ocr != "off"

    def text(self, data: bytes) -> str:
        """The picture's text lines in reading order, or '' (not read, or no text on it)."""
        import hashlib

        if not self.enabled or not data:
            return ""
        digest = hashlib.sha256(data).hexdigest()
        if digest in self._seen:
            return ""
        self._seen.add(digest)
        try:
            frames = image_frames(data)
        except Exception:  # noqa: BLE001 - a format Pillow cannot decode (EMF, WMF, SVG) or a damaged picture
            log.debug("%s: a picture could not be decoded for OCR", self.name, exc_info=True)
            return ""
        picture = frames[0]
        if self.options.ocr == "auto" and (min(picture.size) < MIN_PICTURE_SIDE
                                           or picture.width * picture.height < MIN_PICTURE_PIXELS):
            return ""
        if self.cost.images >= self.options.ocr_max_images:
            self.cost.skipped_images += 1
            return ""
        started = time.perf_counter()
        text = recognise(picture, self.options.ocr_threads)
        self.cost.images += 1
        self.cost.seconds += time.perf_counter() - started
        return text.strip()

    def finish(self) -> None:
        """Report this file's cost (call once, after the last picture)."""
        if self.cost.skipped_images:
            log.warning("%s: OCR stopped after %d pictures (ingest.ocr_max_images); %d skipped", self.name,
                        self.cost.images, self.cost.skipped_images)
        if self.cost.images or self.cost.skipped_images:
            record(self.cost)


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


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance in characters (insertions, deletions, substitutions): the numerator of the character
    error rate that the OCR tests and bench/bench_ocr.py report. O(len(a) * len(b)) time, one row of memory."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]
