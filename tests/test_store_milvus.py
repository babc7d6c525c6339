"""The Milvus backend against a real Milvus Lite (pure Python, embedded gRPC server) started here, offline.

The same behaviours as the local store: ingest, unchanged re-ingest costs nothing, a changed file replaces its chunks,
removing a document removes its chunks, dense and keyword search agree with the local store on the same documents."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pymilvus / milvus-lite not installed (pip install -r requirements-milvus.txt)")
pytest.importorskip("milvus_lite", reason="milvus-lite not installed (pip install -r requirements-milvus.txt)")

from conftest import CountingEmbedder  # noqa: E402

from kb_qa.app import App  # noqa: E402
from kb_qa.ingest.pipeline import ingest  # noqa: E402
from kb_qa.retrieval.keyword import query_terms  # noqa: E402
from kb_qa.settings import load_settings  # noqa: E402
from kb_qa.store import KnowledgeBase  # noqa: E402
from kb_qa.store.milvus import LITE_FILE, PENDING_FILE, MilvusKnowledgeBase  # noqa: E402

ZH = ("知识库问答系统把文档切分成段落，再用向量检索找到相关段落。" * 3 + "\n\n"
      + "检索到的段落和问题一起交给大模型生成答案，并标注出处。" * 3)
EN = ("The warehouse opens at seven in the morning and closes at six in the evening. " * 4 + "\n\n"
      + "Forklift drivers must renew their licence every two years. " * 4)
FR = "Le train de nuit pour Vienne part du quai numéro neuf à vingt-deux heures. " * 4


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    """One Milvus Lite file for the module (each KB gets its own collection in it), closed at the end."""
    from kb_qa.store.milvus import close_client

    uri = str(tmp_path_factory.mktemp("milvus") / "lite.db")
    yield uri
    close_client(uri)


def make_app(tmp_path, embedder, backend: str, uri: str | None = None) -> App:
    settings = load_settings(overrides={
        "paths": {"knowledge_base_root": str(tmp_path / "knowledge_base"),
                  "vector_store_root": str(tmp_path / f"vector_store_{backend}")},
        "llm": {"model_path": None},
        "store": {"backend": backend, "milvus_uri": uri},
    })
    application = App(settings)
    application.__dict__["embeddings"] = embedder
    return application


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "zh.txt").write_text(ZH, encoding="utf-8")
    (folder / "en.md").write_text("# Rules\n\n" + EN, encoding="utf-8")
    (folder / "fr.txt").write_text(FR, encoding="utf-8")
    return folder


def run(app, paths, embedder, **kwargs):
    return ingest(app.kb("kb", create=True), paths, app.settings.ingest, lambda: embedder,
                  embedding_model=app.settings.embedding.model, **kwargs)


def milvus_ids(kb: MilvusKnowledgeBase) -> set[int]:
    return kb.milvus().all_ids()


def record_ids(kb: KnowledgeBase) -> set[int]:
    return set(kb.chunk_vectors(range(1, 10_000)))


def test_backend_setting_opens_milvus_kb_and_search_matches_local(tmp_path, embedder, docs, milvus_uri):
    local, remote = make_app(tmp_path, embedder, "local"), make_app(tmp_path, embedder, "milvus", milvus_uri)
    run(local, [docs], embedder)
    run(remote, [docs], embedder)
    kb_local, kb_milvus = local.kb("kb"), remote.kb("kb")
    assert isinstance(kb_milvus, MilvusKnowledgeBase) and not isinstance(kb_local, MilvusKnowledgeBase)
    assert milvus_ids(kb_milvus) == record_ids(kb_milvus) == record_ids(kb_local)
    assert not (kb_milvus.path / "index-1.faiss").exists()  # vectors are searched in Milvus, no FAISS file

    questions = ["When does the warehouse open?", "向量检索找到相关段落", "train de nuit pour Vienne"]
    vectors = np.asarray(embedder.encode(questions), dtype=np.float32)
    dense_local = kb_local.dense_search_batch(vectors, 3)
    dense_milvus = kb_milvus.dense_search_batch(vectors, 3)
    for ours, theirs in zip(dense_milvus, dense_local, strict=True):
        assert [i for i, _ in ours] == [i for i, _ in theirs]
        assert np.allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-4)

    for question in questions:
        terms = query_terms(question)
        ours, theirs = kb_milvus.keyword_search(terms, 3), kb_local.keyword_search(terms, 3)
        assert ours and ours[0][0] == theirs[0][0]
        assert all(score > 0 for _, score in ours)
    fr_ids = kb_milvus.chunk_ids_for_sources(["fr.txt"])
    allowed = kb_milvus.keyword_search(query_terms("warehouse"), 5, allowed=fr_ids)
    assert allowed == []  # `allowed` restricts the candidates: the French file has no "warehouse"
    assert kb_milvus.dense_search(vectors[0], 5, allowed=fr_ids)[0][0] in fr_ids


def test_incremental_ingest_unchanged_changed_removed(tmp_path, embedder, docs, milvus_uri):
    app = make_app(tmp_path, embedder, "milvus", milvus_uri)
    run(app, [docs], embedder)
    kb = app.kb("kb")
    before = milvus_ids(kb)
    counting = CountingEmbedder(embedder)
    report = run(app, [docs], counting)
    assert {o.status for o in report.outcomes} == {"unchanged"} and counting.texts == 0
    assert milvus_ids(kb) == before

    old_en = kb.chunk_ids_for_sources(["en.md"])
    (docs / "en.md").write_text("# Rules\n\nVisitors must wear a yellow helmet on the loading dock. " * 3,
                                encoding="utf-8")
    run(app, [docs], embedder)
    new_en = kb.chunk_ids_for_sources(["en.md"])
    assert new_en and not (new_en & old_en)
    assert milvus_ids(kb) == record_ids(kb) == (before - old_en) | new_en
    hit = kb.keyword_search(query_terms("yellow helmet"), 1)
    assert hit and hit[0][0] in new_en

    zh = kb.chunk_ids_for_sources(["zh.txt"])
    with kb.writer() as w:
        assert w.remove_document("zh.txt")
        w.commit()
    assert not (milvus_ids(kb) & zh) and milvus_ids(kb) == record_ids(kb)
    assert kb.keyword_search(query_terms("知识库问答系统"), 5) == []

    run(app, [docs], embedder, rebuild=True)  # one transaction; the collection is rebuilt from the records
    assert milvus_ids(kb) == record_ids(kb) and not (milvus_ids(kb) & before)
    assert kb.keyword_search(query_terms("知识库问答系统"), 1)


def test_crashed_commit_is_reconciled_and_never_served(tmp_path, embedder, docs, milvus_uri):
    app = make_app(tmp_path, embedder, "milvus", milvus_uri)
    run(app, [docs], embedder)
    kb = app.kb("kb")
    committed = record_ids(kb)
    # What a commit killed between its Milvus writes and its SQLite commit leaves: rows the records do not have.
    ghost = max(committed) + 100
    vector = np.asarray(embedder.encode(["When does the warehouse open?"]), dtype=np.float32)
    kb.milvus().upsert([ghost], vector, ["warehouse warehouse warehouse opens"])
    (kb.path / PENDING_FILE).touch()
    assert ghost not in {i for i, _ in kb.dense_search(vector[0], 10)}
    assert ghost not in {i for i, _ in kb.keyword_search(query_terms("warehouse opens"), 10)}
    with kb.writer():
        pass  # the next writer reconciles
    assert milvus_ids(kb) == committed and not (kb.path / PENDING_FILE).exists()


def test_default_is_milvus_lite_in_the_kb_folder_and_delete_removes_it(tmp_path, embedder, docs):
    app = make_app(tmp_path, embedder, "milvus")  # no URI
    run(app, [docs / "fr.txt"], embedder)
    kb = app.kb("kb")
    assert (kb.path / LITE_FILE).exists()
    assert kb.keyword_search(query_terms("quai numéro neuf"), 1)
    app.delete_kb("kb")
    assert not kb.path.exists() and app.kb_names() == []


def test_closing_one_of_two_openings_of_a_lite_kb_leaves_the_other_working(tmp_path, embedder, docs):
    # The Lite file's client is shared by the process; closing one opening must not close it under the other.
    app = make_app(tmp_path, embedder, "milvus")  # no URI: the Lite file in the KB folder
    run(app, [docs / "fr.txt"], embedder)
    first = app.kb("kb")
    assert first.keyword_search(query_terms("quai numéro neuf"), 1)
    second = MilvusKnowledgeBase.open(first.path.parent, "kb")
    assert second.keyword_search(query_terms("quai numéro neuf"), 1)
    second.close()
    assert first.keyword_search(query_terms("quai numéro neuf"), 1)  # its client still open
    assert first.dense_search(embedder.encode(["train de nuit"])[0], 1)
    app.delete_kb("kb")
    assert not first.path.exists()


def test_local_kb_switched_to_milvus_is_indexed_from_its_records(tmp_path, embedder, docs, milvus_uri):
    local = make_app(tmp_path, embedder, "local")
    run(local, [docs], embedder)
    ids = record_ids(local.kb("kb"))
    local.kb("kb").close()
    remote = local.settings.model_copy(update={"store": local.settings.store.model_copy(
        update={"backend": "milvus", "milvus_uri": milvus_uri})})
    switched = App(remote)
    switched.__dict__["embeddings"] = embedder
    kb = switched.kb("kb")
    assert kb.keyword_search(query_terms("forklift licence"), 1)  # first search builds the collection
    assert milvus_ids(kb) == ids
