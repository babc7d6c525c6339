"""`kb-qa convert SRC DST`: a plain-transformers copy of a ChatGLM2 checkpoint; runs `kb_qa.llm.convert` (owned
there) as it is."""

from __future__ import annotations

import sys

from kb_qa.cli.common import guarded


def main(argv: list[str] | None = None, *, prog: str = "python -m kb_qa.llm.convert") -> int:
    from kb_qa.llm.convert import main as convert

    return guarded(lambda: convert(argv))


if __name__ == "__main__":
    sys.exit(main())
