"""The cache of converted models (OpenVINO, ONNX), made offline from the local model folder on first use:

    embedding.cache_dir (relative: to the project folder), else $KB_QA_MODEL_CACHE, else
    $KB_QA_HOME/cache/models when KB_QA_HOME is set, else $XDG_CACHE_HOME/kb_qa/models (~/.cache/kb_qa/models)
      /<model-slug>-<fingerprint>-<backend>/   model files, tokenizer files, export.json

Never the install location. <fingerprint> hashes the source folder's file names, sizes and mtimes plus the
conversion recipe, so a replaced model or a changed recipe gets a new folder and a stale one is never used. A
folder is written under a temporary name and renamed into place: concurrent first uses both convert, one wins,
neither reads half a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from kb_qa.models.backend import unavailable
from kb_qa.models.resolve import resolve_model_path

if TYPE_CHECKING:
    from kb_qa.settings import EmbeddingSettings

log = logging.getLogger(__name__)

# Part of each cache folder's fingerprint: change a recipe and its backend converts again into a new folder.
RECIPES = {
    "openvino": "kb_qa-openvino-v1 convert_model(torch) f32-weights",
    "onnx": "kb_qa-onnx-v1 torchscript opset17",
    "onnx-int8": "kb_qa-onnx-int8-v1 dynamic QInt8 per-channel, FFN output MatMuls fp32",
}


def model_cache_root(settings: EmbeddingSettings | None = None) -> Path:
    """Where converted models live (see the module docstring for the order)."""
    from kb_qa.locations import cache_home, resolve_in_home

    configured = getattr(settings, "cache_dir", None) or os.environ.get("KB_QA_MODEL_CACHE", "").strip()
    if configured:
        return resolve_in_home(configured)
    return cache_home() / "models"


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
    if settings.backend not in RECIPES:
        raise ValueError(f"backend {settings.backend!r} uses the model folder as it is; nothing is cached")
    model_path = model_path or resolve_model_path(settings.model)
    fingerprint = _fingerprint(model_path, RECIPES[settings.backend])
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


def _convert(backend: str, model_path: str, out: Path, settings: EmbeddingSettings) -> None:
    """One conversion step; each backend module is imported only when its conversion runs."""
    match backend:
        case "openvino":
            from kb_qa.models import openvino_backend

            openvino_backend.convert(model_path, out)
        case "onnx":
            from kb_qa.models import onnx_backend

            onnx_backend.export(model_path, out)
        case "onnx-int8":
            from kb_qa.models import onnx_backend

            source = ensure_converted(settings.model_copy(update={"backend": "onnx"}), model_path)
            onnx_backend.quantize_int8(source, out)
        case other:
            raise ValueError(f"no conversion for backend {other!r}")


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
        _convert(settings.backend, model_path, tmp, settings)
    except ImportError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise unavailable(settings.backend, exc.name) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, final)
    return final
