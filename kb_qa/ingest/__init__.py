"""Ingestion: files -> load (loaders/, encoding.py) -> split (splitter.py) -> hash, embed, store (pipeline.py).

Run it with `python -m kb_qa.ingest`. Nothing is imported here, so importing a loader does not pull in the
embedding stack.
"""
