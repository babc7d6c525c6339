"""Rows of cells -> records of 'column: value' lines (shared by the spreadsheet and delimited-text loaders)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date, datetime, time

from kb_qa.ingest.limits import check_columns, current_options


def cell_str(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time(0) else value.isoformat(sep=" ")
    if isinstance(value, (date, time)):
        return value.isoformat()
    return str(value)


def within_width(rows: Iterable[list], name, where: str = "") -> Iterator[list]:
    """`rows` as they come, the file refused (LoadError) at the first row wider than ingest.max_table_columns
    (before it reaches `records_text`, which would turn it into thousands of 'column: value' lines)."""
    limits = current_options.get().limits
    for number, row in enumerate(rows, 1):
        check_columns(row, number, name, limits, where)
        yield row


def records_text(rows: Iterable[list[str]]) -> str:
    """Rows -> records of 'column: value' lines separated by blank lines. The header is the first row (of the
    first five) with at least two cells filled and at least half as many as the widest of them; rows above it
    (titles) are kept as plain lines. One-column tables become plain lines."""
    rows = [[c.strip() for c in row] for row in rows]
    rows = [row for row in rows if any(row)]
    if not rows:
        return ""
    head = rows[:5]
    widest = max(sum(1 for c in row if c) for row in head)
    if widest < 2:
        return "\n".join(" ".join(c for c in row if c) for row in rows)
    h = next(i for i, row in enumerate(head) if sum(1 for c in row if c) >= max(2, widest / 2))
    header = [c or f"column {j + 1}" for j, c in enumerate(rows[h])]
    blocks = [" ".join(c for c in row if c) for row in rows[:h]]
    for row in rows[h + 1:]:
        lines = []
        for j, value in enumerate(row):
            if value:
                column = header[j] if j < len(header) else f"column {j + 1}"
                lines.append(f"{column}: {value}")
        blocks.append("\n".join(lines))
    if len(rows) == h + 1:  # a header and nothing else
        blocks.append(" | ".join(rows[h]))
    return "\n\n".join(b for b in blocks if b)
