"""Moved to kb_qa.paths; this name stays importable while callers move."""

from kb_qa.paths import MAX_NAME_BYTES, InvalidName, safe_join, sanitize_filename, validate_doc_path, validate_kb_name

__all__ = ["MAX_NAME_BYTES", "InvalidName", "safe_join", "sanitize_filename", "validate_doc_path", "validate_kb_name"]
