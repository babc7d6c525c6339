"""`kb-qa eval --bench DIR`: retrieval quality on a labelled set; runs `kb_qa.eval` (owned there) as it is."""

from __future__ import annotations

import sys

from kb_qa.cli.common import guarded


def main(argv: list[str] | None = None, *, prog: str = "python -m kb_qa.eval") -> int:
    from kb_qa import eval as evaluation

    return guarded(lambda: evaluation.main(argv))


if __name__ == "__main__":
    sys.exit(main())
