"""What every part of the page shares: the process-wide App, ingestion worker and conversation store (made once,
used by every browser session through st.cache_resource), the translation call `T`, and `show_error`."""

from __future__ import annotations

import logging

import streamlit as st

from kb_qa.conversations import ConversationStore
from kb_qa.jobs import is_expected, runner_for
from kb_qa.webui.support import friendly_error, md_literal
from kb_qa.webui.text import translate

log = logging.getLogger("kb_qa.webui")


def T(text: str, **fields) -> str:  # noqa: N802 - the page's one-letter translation call
    out = translate(text, st.session_state.get("lang", "en"))
    return out.format(**fields) if fields else out


@st.cache_resource(show_spinner="Reading settings…")
def shared_app():
    from kb_qa.app import App
    from kb_qa.settings import load_settings

    return App(load_settings())


@st.cache_resource
def shared_jobs():
    """The ingestion worker of the shared App (one per process; no script run owns it)."""
    return runner_for(shared_app())


@st.cache_resource
def shared_store() -> ConversationStore:
    return ConversationStore(shared_app().store_root / ".webui")


def show_error(exc: BaseException, what: str) -> None:
    log.warning("%s failed: %r", what, exc, exc_info=not is_expected(exc))
    st.error(md_literal(f"{what} failed: {friendly_error(exc)}"), icon=":material/error:")
