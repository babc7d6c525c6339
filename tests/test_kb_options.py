"""Per-KB creation options (kb_qa.kb_options): recorded in the KB, used by ingestion, a model mismatch refused."""

from __future__ import annotations

import pytest
from conftest import make_app

from kb_qa.errors import KbQaError
from kb_qa.kb_options import KbModelMismatch, KbOptions, create_with_options, read_options, validated

LONG_DOC = "\n\n".join(f"Paragraph {i} tells how the solar kettle number {i} folds its mirror into a disc."
                       for i in range(40))  # ~3,300 characters


@pytest.fixture
def small_app(settings, fake_embedder):
    return make_app(settings, embeddings=fake_embedder)


def chunk_texts(app, name):
    kb = app.kb(name)
    ids = sorted(kb.chunk_ids_for_sources([d.source for d in kb.documents()]))
    return [c.text for c in kb.get_chunks(ids).values()]


def test_options_round_trip_and_defaults(settings):
    options = validated(settings)
    assert (options.chunk_size, options.chunk_overlap, options.embedding_model) == (
        settings.ingest.chunk_size, settings.ingest.chunk_overlap, settings.embedding.model)
    assert KbOptions.from_json(options.to_json()) == options
    assert KbOptions.from_json(None) is None and KbOptions.from_json("{not json") is None
    assert KbOptions.from_json('{"chunk_size": 100}') is None  # incomplete: the settings apply


@pytest.mark.parametrize(("size", "overlap", "why"), [(100, 100, "smaller than the chunk size"),
                                                      (10, 0, "chunk_size"), (300, 5000, "chunk_overlap")])
def test_bad_sizes_are_refused_with_the_reason(settings, size, overlap, why):
    with pytest.raises(KbQaError, match=why):
        validated(settings, chunk_size=size, chunk_overlap=overlap)


def test_ingestion_chunks_with_the_kbs_own_sizes(small_app, tmp_path):
    doc = tmp_path / "kettle.md"
    doc.write_text(LONG_DOC, encoding="utf-8")
    create_with_options(small_app, "small", validated(small_app.settings, chunk_size=120, chunk_overlap=0))
    small_app.kb("plain", create=True)  # no options: the settings' 300 characters
    small_app.ingest("small", [doc])
    small_app.ingest("plain", [doc])
    small, plain = chunk_texts(small_app, "small"), chunk_texts(small_app, "plain")
    assert read_options(small_app.kb("small")) == KbOptions(120, 0, small_app.settings.embedding.model)
    assert read_options(small_app.kb("plain")) is None
    assert len(small) > 2 * len(plain)
    assert max(len(t) for t in small) <= 120 < max(len(t) for t in plain)


def test_a_kb_made_for_another_model_is_refused_before_any_work(small_app, fake_embedder, tmp_path):
    doc = tmp_path / "kettle.md"
    doc.write_text(LONG_DOC, encoding="utf-8")
    create_with_options(small_app, "bge", validated(small_app.settings, embedding_model="BAAI/bge-small-zh-v1.5"))
    with pytest.raises(KbModelMismatch, match="KB_QA_EMBEDDING__MODEL=BAAI/bge-small-zh-v1.5"):
        small_app.ingest("bge", [doc])
    assert small_app.kb("bge").info().chunks == 0 and not fake_embedder.calls  # nothing embedded or stored
    with pytest.raises(KbModelMismatch):  # the page's path (its worker shows the message as the file's reason)
        small_app.add_uploads("bge", [("kettle.md", LONG_DOC.encode())])
    with pytest.raises(KbQaError, match="already exists"):
        create_with_options(small_app, "bge", validated(small_app.settings))
