"""`python -m kb_qa.ask`: the same as `kb-qa ask` (kb_qa.cli.ask)."""

import sys

from kb_qa.cli.ask import build_parser, main, run

__all__ = ['build_parser', 'main', 'run']

if __name__ == "__main__":
    sys.exit(main())
