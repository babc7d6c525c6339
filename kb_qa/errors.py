"""The one family of errors a user can cause or fix, and the exit codes the command line maps them to.

Every front end (CLI, web page, HTTP API) catches `KbQaError` and shows `str(error)`: one line that names what
failed and, where there is one, the fix. Anything else escaping a front end is a bug and may show a traceback.
Errors are matched by class, never by class-name strings.
"""

from __future__ import annotations

# Exit codes of every `kb-qa` / `python -m kb_qa...` command (documented in the README).
EXIT_OK = 0
EXIT_ERROR = 1  # the command ran and failed: bad document, generation error, I/O error
EXIT_USAGE = 2  # a user's mistake: bad arguments, bad settings, unknown knowledge base
EXIT_UNAVAILABLE = 3  # something needed is not there: no model weights, no GPU, a backend not installed
EXIT_BUSY = 4  # the knowledge base is locked by another writer; retry later
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class KbQaError(Exception):
    """Base of every error meant for a user. `exit_code` is what the CLI exits with."""

    exit_code: int = EXIT_ERROR


class UsageError(KbQaError, ValueError):
    """The user asked for something malformed: arguments, names, settings."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """Settings (YAML file, environment, flags) are missing or invalid."""


class NotFoundError(UsageError, LookupError):
    """A named thing (knowledge base, document, model) does not exist."""


class UnavailableError(KbQaError, RuntimeError):
    """A part the request needs is not loaded or not installed (model weights, GPU, optional backend)."""

    exit_code = EXIT_UNAVAILABLE


class BusyError(KbQaError, RuntimeError):
    """A resource is held by someone else (the writer lock, the generation queue)."""

    exit_code = EXIT_BUSY


class StorageError(KbQaError, OSError):
    """Reading or writing the store failed (disk full, I/O error, damaged file); nothing stored was lost."""

    exit_code = EXIT_ERROR
