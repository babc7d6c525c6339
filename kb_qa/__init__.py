"""kb_qa: local knowledge-base question answering (RAG) over your own documents, with ChatGLM2-6B.

Importing this package is cheap: nothing heavy (torch, transformers, faiss) is imported and no settings are read
until a component asks for them.
"""

__version__ = "0.1.0"
