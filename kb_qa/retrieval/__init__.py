"""Retrieval: dense (FAISS) and keyword (BM25 over SQLite FTS5) search over knowledge bases, and their fusion."""
