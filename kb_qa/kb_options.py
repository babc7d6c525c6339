"""Per-knowledge-base creation options: chunk size, chunk overlap and embedding model, chosen when a KB is made.

They are kept in the KB's own meta table (one JSON value under `kb_options`, through the store's public
`put_meta`/`get_meta`), so they travel with the KB folder and hold for every front end: the page, the CLI and the
API all ingest through kb_qa.documents, which chunks with these sizes instead of the process-wide
`ingest.chunk_size`/`ingest.chunk_overlap`.

The embedding model: a process has one (settings `embedding.model`), and the store already records the model of
a KB's first vectors and refuses to mix models. What an empty KB cannot say by itself is which model it was made
for; this module records that at creation, and `check_model` refuses to fill a KB made for model A while the
process runs model B (`KbModelMismatch`, one line that says how to start the process with A). Once vectors exist
the store's own check (EmbeddingMismatch) is the authority; the two agree, since the first vectors are written
only after `check_model` passed.

A KB made without options (the CLI's `ingest`, an older KB) has none: the process settings apply, as before.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from kb_qa.errors import KbQaError

META_KEY = "kb_options"


class KbModelMismatch(KbQaError):
    """The KB was made for another embedding model than the one this process runs."""


@dataclass(frozen=True)
class KbOptions:
    chunk_size: int  # target chunk length, characters
    chunk_overlap: int  # characters shared by neighbouring chunks
    embedding_model: str  # the sentence-transformers model the KB is embedded with

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> KbOptions | None:
        """The recorded options, or None for none / a value this version cannot read (the settings then apply)."""
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(int(raw["chunk_size"]), int(raw["chunk_overlap"]), str(raw["embedding_model"]))
        except (ValueError, KeyError, TypeError):
            return None


def validated(settings, *, chunk_size: int | None = None, chunk_overlap: int | None = None,
              embedding_model: str | None = None) -> KbOptions:
    """Options for a new KB: each one given, else the process settings' (`settings`: kb_qa.settings.Settings).
    Raises KbQaError with the reason for sizes outside the settings' own bounds or an overlap >= the size."""
    from pydantic import ValidationError

    ingest = settings.ingest
    size = ingest.chunk_size if chunk_size is None else int(chunk_size)
    overlap = ingest.chunk_overlap if chunk_overlap is None else int(chunk_overlap)
    model = (embedding_model or "").strip() or settings.embedding.model
    try:
        type(ingest).model_validate({**ingest.model_dump(), "chunk_size": size, "chunk_overlap": overlap})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise KbQaError(f"invalid chunk options: {problems}") from None
    if overlap >= size:
        raise KbQaError(f"the chunk overlap ({overlap}) must be smaller than the chunk size ({size})")
    return KbOptions(size, overlap, model)


def read_options(kb) -> KbOptions | None:
    return KbOptions.from_json(kb.get_meta(META_KEY))


def create_with_options(app, name: str, options: KbOptions):
    """Create the KB `name` (it must not exist yet) and record its options; returns the KnowledgeBase."""
    if name in app.kb_names():
        raise KbQaError(f"a knowledge base named {name!r} already exists")
    kb = app.kb(name, create=True)
    kb.put_meta(META_KEY, options.to_json())
    return kb


def ingest_settings_for(kb, ingest_settings):
    """The process's ingest settings with the KB's chunk sizes, when it recorded any."""
    options = read_options(kb)
    if options is None:
        return ingest_settings
    return ingest_settings.model_copy(update={"chunk_size": options.chunk_size,
                                              "chunk_overlap": options.chunk_overlap})


def model_mismatch(name: str, options: KbOptions | None, configured_model: str) -> str | None:
    """Why the KB `name`, created with `options` (`read_options`), cannot be used with `configured_model` (one
    line, with the fix), or None when it can."""
    if options is None or options.embedding_model == configured_model:
        return None
    return (f"knowledge base {name!r} was created for the embedding model {options.embedding_model!r}, "
            f"but this process uses {configured_model!r}. Start it with "
            f"KB_QA_EMBEDDING__MODEL={options.embedding_model} (or embedding.model in the settings file) to "
            "add documents to it or ask it.")


def check_model(kb, configured_model: str) -> None:
    why = model_mismatch(kb.name, read_options(kb), configured_model)
    if why:
        raise KbModelMismatch(why)
