"""Simple tables in pypdf's page text, rewritten as 'cell | cell' rows so the splitter keeps their header.

pypdf returns a ruled table as lines of cells separated by spaces, with no structure. Only the unambiguous case
is recognised: a header line of words and at least two rows under it, all with the same number of cells (3-12),
and at least one column numeric in every row (amounts, years, serial numbers). That is the shape of most
financial tables in Chinese prospectuses ('序号 金融机构名称 授信总额 ...'); cells that wrap onto several lines,
or that contain spaces, break the equal count and the lines are left as they are.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"[-+(（]?[\d,，.]*\d[\d,，.]*%?[)）]?")  # 330,435.30  -12  8.5%  (2023)
_MIN_CELLS, _MAX_CELLS = 3, 12
_MIN_ROWS = 2  # under the header


def _is_number(token: str) -> bool:
    return bool(_NUMBER.fullmatch(token))


def _is_table(lines: list[list[str]]) -> bool:
    header, rows = lines[0], lines[1:]
    if any(_is_number(t) for t in header):
        return False
    return any(all(_is_number(row[j]) for row in rows) for j in range(len(header)))


def pipe_simple_tables(text: str) -> str:
    """`text` with each recognised table's lines joined by ' | ' instead of spaces; everything else unchanged."""
    lines = text.split("\n")
    tokens = [line.split() for line in lines]
    out = list(lines)
    i = 0
    while i < len(lines):
        n = len(tokens[i])
        j = i + 1
        while j < len(lines) and len(tokens[j]) == n:
            j += 1
        if _MIN_CELLS <= n <= _MAX_CELLS and j - i >= 1 + _MIN_ROWS:
            # the header is the first line of the run; a run may hold a table only from its second line on
            for start in (i, i + 1):
                if j - start >= 1 + _MIN_ROWS and _is_table(tokens[start:j]):
                    for k in range(start, j):
                        out[k] = " | ".join(tokens[k])
                    break
        i = j
    return "\n".join(out)
