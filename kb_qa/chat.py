"""`python -m kb_qa.chat`: the same as `kb-qa chat` (kb_qa.cli.chat)."""

import sys

from kb_qa.cli.chat import build_parser, fit_history, main, run_chat, run_kb_chat

__all__ = ['build_parser', 'fit_history', 'main', 'run_chat', 'run_kb_chat']

if __name__ == "__main__":
    sys.exit(main())
