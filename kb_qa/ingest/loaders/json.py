"""JSON and JSON Lines: keys kept, values as 'key: value' lines; top-level list items / lines are records."""

from __future__ import annotations

import json

from kb_qa.ingest.encoding import decode_text
from kb_qa.ingest.loaders.base import LoadError
from kb_qa.schema import Section


def load_json(data: bytes, name: str) -> list[Section]:
    text = decode_text(data, name)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(name, f"invalid JSON: {exc}") from exc
    items = value if isinstance(value, list) else [value]
    return [Section("\n\n".join(_json_text(item) for item in items))]


def load_jsonl(data: bytes, name: str) -> list[Section]:
    text = decode_text(data, name)
    blocks = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            blocks.append(_json_text(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise LoadError(name, f"invalid JSON on line {number}: {exc}") from exc
    return [Section("\n\n".join(blocks))]


def _json_text(value, indent: str = "") -> str:
    """Nested JSON as indented 'key: value' lines; list items as '- value'."""
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{indent}{key}:")
                lines.append(_json_text(item, indent + "  "))
            else:
                lines.append(f"{indent}{key}: {_json_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                inner = _json_text(item, indent + "  ")
                lines.append(f"{indent}- {inner.lstrip()}")
            else:
                lines.append(f"{indent}- {_json_scalar(item)}")
        return "\n".join(lines)
    return indent + _json_scalar(value)


def _json_scalar(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(value)
