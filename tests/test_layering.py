"""The import direction of docs/ARCHITECTURE.md: ingest -> store -> retrieval -> qa -> llm are layers, front ends
(cli, api, webui) sit on top of app, and nothing points back up. Parsed with `ast`, so a lazy import inside a
function counts as much as a top-level one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kb_qa"
FRONT_ENDS = {"app", "documents", "cli", "api", "webui", "conversations", "__main__"}
# package (or top-level module) -> kb_qa parts it must never import
FORBIDDEN = {
    "schema": {"store", "ingest", "retrieval", "qa", "llm", "models", "embeddings"} | FRONT_ENDS,
    "errors": {"store", "ingest", "retrieval", "qa", "llm", "settings"} | FRONT_ENDS,
    "paths": {"store", "ingest", "retrieval", "qa", "llm"} | FRONT_ENDS,
    "store": {"ingest", "retrieval", "qa", "llm"} | FRONT_ENDS,
    "ingest": {"retrieval", "qa", "llm"} | FRONT_ENDS,
    "retrieval": {"ingest", "qa", "llm"} | FRONT_ENDS,
    "llm": {"store", "ingest", "retrieval", "qa"} | FRONT_ENDS,
    "qa": FRONT_ENDS,
}
SHIMS = {"ingest/__main__.py"}  # `python -m kb_qa.ingest` is a front end living in the package by the README's word


def _imports(file: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n.split(".")[1] for n in names if n.startswith("kb_qa.") and n.count(".") >= 1}


def _modules():
    for file in sorted(PACKAGE.rglob("*.py")):
        rel = file.relative_to(PACKAGE).as_posix()
        top = rel.split("/")[0].removesuffix(".py")
        if top in FORBIDDEN and rel not in SHIMS:
            yield pytest.param(file, top, id=rel)


@pytest.mark.parametrize(("file", "layer"), list(_modules()))
def test_no_module_imports_upward(file, layer):
    wrong = _imports(file) & FORBIDDEN[layer]
    assert not wrong, f"kb_qa/{file.relative_to(PACKAGE).as_posix()} ({layer}) imports {sorted(wrong)}"


def test_the_check_sees_lazy_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from kb_qa.app import App\n    import kb_qa.cli.common\n", encoding="utf-8")
    assert _imports(probe) == {"app", "cli"}
