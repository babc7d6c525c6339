"""`python -m kb_qa.ingest PATH...`: the same as `kb-qa ingest` (kb_qa.cli.ingest)."""

import sys

from kb_qa.cli.ingest import main

if __name__ == "__main__":
    sys.exit(main())
