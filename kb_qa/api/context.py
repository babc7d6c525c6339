"""What every route needs, built once per FastAPI app: the `App`, the engine adapter, the generation gate; plus
the dependencies that hand them (and validated knowledge-base names) to the routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam

from kb_qa.api.capacity import GenerationGate
from kb_qa.api.engine import Engine
from kb_qa.app import App
from kb_qa.naming import InvalidName, validate_kb_name


@dataclass
class ApiContext:
    app: App
    engine: Engine
    lock_timeout_s: float = 5.0  # how long a write waits for a busy knowledge base before 409
    gates: dict[str, GenerationGate] = field(default_factory=dict)
    wait_timeout_s: float = 300.0  # how long a generation request may wait for the model before 503

    def gate(self, model: str) -> GenerationGate:
        """The gate of one loaded model (one generation at a time per model)."""
        gate = self.gates.get(model)
        if gate is None:
            gate = self.gates.setdefault(
                model, GenerationGate(model, self.app.settings.api.max_queue, self.wait_timeout_s))
        return gate

    def checked_kb_name(self, name: str) -> str:
        """`name` if it is a valid knowledge-base name whose folders (if present) are real folders inside the data
        roots: a symlink planted as knowledge_base/<name> or vector_store/<name> would redirect reads, writes and
        deletes elsewhere, so it is refused."""
        validate_kb_name(name)
        for root in (self.app.docs_root, self.app.store_root):
            folder = Path(root) / name
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise InvalidName(f"knowledge base {name!r}: {folder.name} in {Path(root).name}/ is not a folder")
            if folder.exists() and folder.resolve().parent != Path(root).resolve():
                raise InvalidName(f"knowledge base {name!r} resolves outside its root")
        return name


def get_ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


def kb_name(request: Request, name: str = PathParam(description="Knowledge base name.", max_length=64)) -> str:
    """A path parameter that names a knowledge base, validated before any route touches the file system."""
    return get_ctx(request).checked_kb_name(name)


Ctx = Annotated[ApiContext, Depends(get_ctx)]  # a route parameter: the API's context
KBPath = Annotated[str, Depends(kb_name)]  # a route parameter: the validated {name} of the path
