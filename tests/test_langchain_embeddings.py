"""Any LangChain `Embeddings` in App(embeddings=...) ingests and retrieves (kb_qa.models.langchain_embeddings)."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

from kb_qa.models.langchain_embeddings import LangChainEmbedder, as_embedder


class WordsEmbeddings(Embeddings):
    """A plain LangChain Embeddings (embed_documents / embed_query only): bag of a few words, unnormalised."""

    WORDS = ("paris", "cat", "sleep", "tower", "france")

    def _vec(self, text):
        low = text.lower()
        return [float(low.count(w)) * 3 + 0.01 for w in self.WORDS]

    def embed_documents(self, texts):
        return [self._vec(t) for t in texts]

    def embed_query(self, text):
        return self._vec(text)


def test_adapter_gives_dimension_and_normalised_vectors():
    embedder = as_embedder(DeterministicFakeEmbedding(size=24), "fake")
    assert isinstance(embedder, LangChainEmbedder) and embedder.dimension == 24 and embedder.model_name == "fake"
    vectors = embedder.encode(["a", "b"])
    assert vectors.shape == (2, 24) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert embedder.encode([]).shape == (0, 24)
    assert as_embedder(embedder) is embedder  # kb_qa's own interface passes through
    with pytest.raises(TypeError):
        as_embedder(object())


def test_app_ingests_and_searches_with_a_langchain_embeddings(settings, tmp_path):
    from kb_qa.app import App

    app = App(settings, embeddings=WordsEmbeddings())
    assert app.embeddings.dimension == len(WordsEmbeddings.WORDS)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "paris.txt").write_text("Paris is in France. The tower stands in Paris.", encoding="utf-8")
    (docs / "cats.txt").write_text("A cat will sleep most of the day; cats sleep a lot.", encoding="utf-8")
    report = app.ingest("kb", [docs])
    assert not [o for o in report.outcomes if o.status == "failed"], report.outcomes
    hits = app.search("where does the cat sleep?", "kb", top_k=1)
    assert hits and hits[0].source.endswith("cats.txt")
