"""The HTTP API: ChatGLM2's `api.py` contract, OpenAI-compatible chat completions, knowledge-base management.

`create_app(app=None, settings=None)` builds the FastAPI app; `python -m kb_qa.api` serves it with uvicorn.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    """See `kb_qa.api.server.create_app` (imported lazily: importing kb_qa.api loads no web framework)."""
    from kb_qa.api.server import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
