"""`python -m kb_qa <verb>`: the same dispatcher as the `kb-qa` command (kb_qa.cli)."""

import sys

from kb_qa.cli import main

if __name__ == "__main__":
    sys.exit(main())
