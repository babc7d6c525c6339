"""A page's visible text: pypdf's extraction, less the text that lies outside the page.

Why: pypdf extracts every form XObject's text in the form's own coordinates and ignores where the form is
drawn, its /Matrix and its /BBox clip. Imposition tools (pdfjam, N-up and split-spread tools) draw one wide
form on several pages, each shifted and clipped to show its part; pypdf then returns the whole spread on every
page (`unstructured/reliance.pdf` pages 2 and 3 came out identical). Here the placement is tracked with pypdf's
operator visitors: a stack of (matrix form space -> page space, clip rectangle in page space), pushed at each
form's `Do` and popped after it, so every text fragment gets its page position and is kept only if it falls
inside the page's crop box and every enclosing form's BBox.

Coordinates are PDF points (1/72 inch), row-vector matrices [a b c d e f] as pypdf uses them.
"""

from __future__ import annotations

_TOLERANCE = 2.0  # points: text starting a hair outside the box (rounding in the producer) is still visible


def _mult(m: list[float], n: list[float]) -> list[float]:
    """m then n (row vectors: point * m * n)."""
    return [m[0] * n[0] + m[1] * n[2], m[0] * n[1] + m[1] * n[3],
            m[2] * n[0] + m[3] * n[2], m[2] * n[1] + m[3] * n[3],
            m[4] * n[0] + m[5] * n[2] + n[4], m[4] * n[1] + m[5] * n[3] + n[5]]


def _apply(m: list[float], x: float, y: float) -> tuple[float, float]:
    return x * m[0] + y * m[2] + m[4], x * m[1] + y * m[3] + m[5]


def _rect(box, m: list[float]) -> tuple[float, float, float, float]:
    """Axis-aligned page-space bounds of `box` ([x0 y0 x1 y1] in form space) drawn through `m`."""
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = [_apply(m, x, y) for x in (x0, x1) for y in (y0, y1)]
    return (min(c[0] for c in corners), min(c[1] for c in corners),
            max(c[0] for c in corners), max(c[1] for c in corners))


def _intersect(a, b):
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def visible_text(page) -> str:
    """The page's text as `page.extract_text()` gives it, without fragments placed outside the visible page.

    When nothing lies outside (the usual case) the result is exactly pypdf's output."""
    identity = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    crop = tuple(float(v) for v in page.cropbox)
    resources = page.get("/Resources")
    # One entry per Do being executed: (matrix to page space, clip in page space, resources) or None
    # for an image Do (pypdf does not descend into those, but still calls both visitors).
    forms: list[tuple[list[float], tuple, object] | None] = []
    fragments: list[tuple[str, bool]] = []
    dropped = False

    def current():
        for entry in reversed(forms):
            if entry is not None:
                return entry
        return identity, crop, resources

    def before(operator, operands, cm, tm) -> None:
        if operator != b"Do":
            return
        matrix, clip, res = current()
        entry = None
        try:
            xobject = res.get_object()["/XObject"][operands[0]].get_object()
            if xobject.get("/Subtype") == "/Form":
                form_matrix = [float(v) for v in xobject.get("/Matrix", identity)]
                to_page = _mult(form_matrix, _mult([float(v) for v in cm], matrix))
                bbox = xobject.get("/BBox")
                inner = _intersect(clip, _rect(bbox, to_page)) if bbox is not None else clip
                entry = (to_page, inner, xobject.get("/Resources") or res)
        except Exception:  # noqa: BLE001 - unresolvable XObject: pypdf skips it too; keep the enclosing placement
            entry = None
        forms.append(entry)

    def after(operator, operands, cm, tm) -> None:
        if operator == b"Do" and forms:
            forms.pop()

    def on_text(text, cm, tm, font, size) -> None:
        nonlocal dropped
        if not text.strip():
            fragments.append((text, True))
            return
        matrix, clip, _ = current()
        x, y = _apply(_mult([float(v) for v in cm], matrix), float(tm[4]), float(tm[5]))
        inside = (clip[0] - _TOLERANCE <= x <= clip[2] + _TOLERANCE and
                  clip[1] - _TOLERANCE <= y <= clip[3] + _TOLERANCE)
        dropped = dropped or not inside
        fragments.append((text, inside))

    text = page.extract_text(visitor_operand_before=before, visitor_operand_after=after, visitor_text=on_text)
    if not dropped:
        return text
    kept = "".join(fragment for fragment, inside in fragments if inside)
    lines = [line.rstrip() for line in kept.split("\n")]
    out: list[str] = []
    for line in lines:  # dropped fragments leave runs of empty lines behind; keep at most one
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n")
