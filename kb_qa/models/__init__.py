"""Embedding models: name resolution (resolve.py), one backend per file (torch, openvino, onnx), the cache of
converted models (cache.py) and the LangChain-facing class (embeddings.py). Importing this package imports
nothing heavy; `kb_qa.models.embeddings` loads the backends lazily."""
