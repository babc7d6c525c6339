"""A PDF page's images put back together where the page draws them, as one picture for OCR (pypdf only).

Why: scanners and converters often store a scanned page as many images. `mineru/small_ocr.pdf` draws each page
as 62 strips of 1634x39 pixels stacked by `cm` operators; OCR'd one by one, every text line cut by a strip
border was misread, and page 1 took 20.7 s on the idle 2-core machine (62 detector + recogniser runs; 240 s
under load). Pasted back into one page picture, the page is one OCR call (~5 s) and its lines are whole.

`page_picture(page)` walks the content stream (q/Q/cm/Do, forms included, to a small depth), places each image
XObject at its box in page space, and pastes it on a white canvas at the images' own resolution (capped at
`MAX_CANVAS_SIDE` pixels on the long side, so a 600-dpi scan is not blown up for nothing), turned as the page's
/Rotate says it is shown. It returns None when the page cannot be composed that way (no placed images, a rotated
or skewed image, inline images only); the caller then falls back to the page's images one by one.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

Matrix = tuple[float, float, float, float, float, float]
IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
MAX_CANVAS_SIDE = 2400  # px: long side of the composed page; the detector scales it down again (ocr._DET_SIDE)
_MAX_FORM_DEPTH = 4  # nested form XObjects followed when looking for images
_MAX_IMAGES = 500  # images pasted on one page; past it the page is OCR'd image by image (a hostile page)


def multiply(m: Matrix, n: Matrix) -> Matrix:
    """m then n, in PDF's row-vector convention (a b c d e f)."""
    a1, b1, c1, d1, e1, f1 = m
    a2, b2, c2, d2, e2, f2 = n
    return (a1 * a2 + b1 * c2, a1 * b2 + b1 * d2, c1 * a2 + d1 * c2, c1 * b2 + d1 * d2,
            e1 * a2 + f1 * c2 + e2, e1 * b2 + f1 * d2 + f2)


def placed_images(page, reader=None) -> list[tuple[object, Matrix]]:
    """(image XObject, matrix mapping the unit square to page space) for every image the page draws, in drawing
    order. Raises on a content stream pypdf cannot parse."""
    from pypdf.generic import ContentStream

    out: list[tuple[object, Matrix]] = []

    def walk(contents, resources, ctm: Matrix, depth: int) -> None:
        xobjects = resources.get("/XObject") if resources is not None else None
        xobjects = xobjects.get_object() if xobjects is not None else {}
        stack: list[Matrix] = []
        for operands, operator in ContentStream(contents, reader).operations:
            if operator == b"q":
                stack.append(ctm)
            elif operator == b"Q":
                ctm = stack.pop() if stack else ctm
            elif operator == b"cm" and len(operands) == 6:
                ctm = multiply(tuple(float(v) for v in operands), ctm)  # type: ignore[arg-type]
            elif operator == b"Do" and operands and operands[0] in xobjects:
                xobject = xobjects[operands[0]].get_object()
                subtype = xobject.get("/Subtype")
                if subtype == "/Image":
                    out.append((xobject, ctm))
                elif subtype == "/Form" and depth < _MAX_FORM_DEPTH:
                    matrix = tuple(float(v) for v in xobject.get("/Matrix", IDENTITY))
                    inner = xobject.get("/Resources")
                    walk(xobject, inner.get_object() if inner is not None else resources,
                         multiply(matrix, ctm), depth + 1)  # type: ignore[arg-type]
            if len(out) > _MAX_IMAGES:
                return

    contents = page.get_contents()
    if contents is None:
        return out
    resources = page.get("/Resources")
    walk(contents, resources.get_object() if resources is not None else None, IDENTITY, 0)
    return out


def page_picture(page, reader=None):
    """The page's images composed into one grayscale PIL image in page layout, or None (see the module doc)."""
    from PIL import Image

    try:  # private, but the one function that decodes an image XObject (pypdf pinned >=7.1,<8)
        from pypdf.generic._image_xobject import _xobj_to_image
    except ImportError:  # pragma: no cover - older pypdf kept it here
        from pypdf.filters import _xobj_to_image  # type: ignore[attr-defined,no-redef,unused-ignore]

    placed = placed_images(page, reader)
    if not placed or len(placed) > _MAX_IMAGES:
        return None
    if any(abs(m[1]) > 1e-6 or abs(m[2]) > 1e-6 or m[0] <= 0 or m[3] == 0 for _, m in placed):
        return None  # rotated, skewed or mirrored horizontally: leave it to the image-by-image path
    box = page.cropbox
    left, bottom = float(box.left), float(box.bottom)
    width_pt, height_pt = float(box.width), float(box.height)
    if width_pt <= 0 or height_pt <= 0:
        return None
    pictures = []
    for xobject, m in placed:
        picture = _decode(xobject, _xobj_to_image)
        if picture is not None:
            pictures.append((picture, m))
    if not pictures:
        return None
    # pixels per point: the finest image's own resolution, so nothing is scaled down below what was scanned
    scale = max(p.width / m[0] for p, m in pictures if m[0] > 0)
    scale = min(scale, MAX_CANVAS_SIDE / max(width_pt, height_pt))
    canvas = Image.new("L", (max(1, round(width_pt * scale)), max(1, round(height_pt * scale))), 255)
    for picture, (a, _b, _c, d, e, f) in pictures:
        x0, x1 = (e - left) * scale, (e + a - left) * scale
        y_top = (height_pt - (f + max(d, 0) - bottom)) * scale  # PDF y grows upwards, the canvas's downwards
        y_bottom = (height_pt - (f + min(d, 0) - bottom)) * scale
        size = (max(1, round(x1 - x0)), max(1, round(y_bottom - y_top)))
        gray = _on_white(picture)
        if d < 0:  # drawn upside down
            gray = gray.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        canvas.paste(gray.resize(size), (round(x0), round(y_top)))
    rotation = int(page.get("/Rotate", 0) or 0) % 360  # shown turned clockwise by this much: turn it the same
    return canvas.rotate(-rotation, expand=True) if rotation in (90, 180, 270) else canvas


def _on_white(picture):
    """Grayscale, with any transparency (an SMask, a PNG-like palette) laid on white rather than black."""
    from PIL import Image

    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    return picture.convert("L")


def _decode(xobject, xobj_to_image):
    from kb_qa.ingest.ocr import MAX_IMAGE_PIXELS

    try:
        width, height = int(xobject.get("/Width", 0)), int(xobject.get("/Height", 0))
        if width * height > MAX_IMAGE_PIXELS:
            log.warning("an image of %dx%d pixels on the page is over the OCR bound; skipped", width, height)
            return None
        return xobj_to_image(xobject)[2]
    except Exception:  # noqa: BLE001 - an image pypdf/Pillow cannot decode: skip it, keep the others
        log.warning("an image on the page could not be decoded", exc_info=True)
        return None
