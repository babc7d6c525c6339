"""`python -m kb_qa.kb`: the same as `kb-qa kb` (kb_qa.cli.kb)."""

import sys

from kb_qa.cli.kb import build_parser, main, run

__all__ = ['build_parser', 'main', 'run']

if __name__ == "__main__":
    sys.exit(main())
