"""OpenVINO's usage telemetry, off for this process.

`import openvino` (the default CPU embedding backend) reports usage events to Google Analytics through the
`openvino_telemetry` package: one on every import, dozens during a model conversion. OpenVINO's documented
opt-out (`opt_in_out --opt_out`) writes "0" to a per-user consent file, $HOME/intel/openvino_telemetry; we do
not rely on it because it is global state outside this project (a user's earlier "1" would win, and writing it
changes every other OpenVINO program of the user). Instead we use the path OpenVINO itself takes when the
telemetry package is not installed: its converter imports `openvino_telemetry` inside `try/except ImportError`
and falls back to `openvino.tools.ovc.telemetry_stub`, whose methods do nothing. Marking the module as absent
(`sys.modules[...] = None`, Python's documented way to make an import fail) before openvino is imported selects
that stub for this process only, whatever the consent file says. Nothing is written anywhere.

`kb_qa/__init__.py` calls `disable_openvino_telemetry()`, so every entry point (CLI, web page, API, tests,
benchmarks) is covered before any of our code can import openvino. tests/test_offline.py proves it with a
socket guard: importing openvino without this sends, with it nothing does.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

TELEMETRY_MODULE = "openvino_telemetry"
_SENDERS = ("send_event", "send_error", "send_stack_trace", "start_session", "end_session", "send_opt_in_event")


def _do_nothing(*args, **kwargs) -> None:
    return None


def disable_openvino_telemetry() -> None:
    """Make OpenVINO use its no-op telemetry stub in this process. Idempotent, cheap (imports nothing)."""
    loaded = sys.modules.get(TELEMETRY_MODULE)
    if loaded is None:
        sys.modules[TELEMETRY_MODULE] = None  # type: ignore[assignment]  # `import openvino_telemetry` now fails
        return
    # Imported before kb_qa (e.g. by the user's own code): too late for the stub, so mute the real sender.
    telemetry = getattr(loaded, "Telemetry", None)
    for name in _SENDERS:
        if telemetry is not None and hasattr(telemetry, name):
            setattr(telemetry, name, _do_nothing)
    log.debug("openvino_telemetry was imported before kb_qa; its senders are now no-ops")
