"""kb_qa: local knowledge-base question answering (RAG) over your own documents, with ChatGLM2-6B.

Importing this package is cheap: nothing heavy (torch, transformers, faiss) is imported and no settings are read
until a component asks for them. It does one thing up front: OpenVINO's usage telemetry is switched off for this
process before anything can import openvino (kb_qa.models.telemetry), so every entry point is covered.
"""

from kb_qa.models.telemetry import disable_openvino_telemetry as _disable_openvino_telemetry

_disable_openvino_telemetry()


def _version() -> str:
    """The installed distribution's version; in a plain checkout (not installed), pyproject.toml's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kb_qa")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            match = re.search(r'(?m)^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"))
        except OSError:
            match = None
        return match.group(1) if match else "0+unknown"


__version__ = _version()
