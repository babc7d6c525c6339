"""Moved to kb_qa.ingest.uploads; this name stays importable while callers move."""

from kb_qa.ingest.uploads import SavedUpload, UploadRejected, save_upload

__all__ = ["SavedUpload", "UploadRejected", "save_upload"]
