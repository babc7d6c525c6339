"""`kb-qa api [--host H] [--port P]`: serve the HTTP API; runs `kb_qa.api`'s own entry point (owned there)."""

from __future__ import annotations

import sys

from kb_qa.cli.common import guarded


def main(argv: list[str] | None = None, *, prog: str = "python -m kb_qa.api") -> int:
    from kb_qa.api.__main__ import main as serve

    return guarded(lambda: serve(argv))


if __name__ == "__main__":
    sys.exit(main())
