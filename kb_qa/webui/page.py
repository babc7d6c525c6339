"""The page: sidebar, the view switch (chat / knowledge bases), messages, and the order a run draws things in."""

from __future__ import annotations

import streamlit as st

from kb_qa.webui.chat import chat_view
from kb_qa.webui.kbs import kb_view
from kb_qa.webui.session import init_session, save_settings, show_save_failures
from kb_qa.webui.shared import T, shared_app, shared_store
from kb_qa.webui.sidebar import model_state, sidebar
from kb_qa.webui.sources import source_viewer
from kb_qa.webui.support import md_literal

VIEWS = {"chat": ("Chat", ":material/chat:"), "kbs": ("Knowledge bases", ":material/folder_open:")}


def main() -> None:
    st.set_page_config(page_title="kb_qa · knowledge-base QA", layout="wide")  # no page_icon: a material/emoji
    # favicon is fetched from a CDN (fonts.gstatic.com); the page makes no request beyond its own server
    app, store = shared_app(), shared_store()
    init_session(app, store)
    models = sidebar(app, store)
    view = st.segmented_control("View", list(VIEWS), format_func=lambda v: f"{VIEWS[v][1]} {T(VIEWS[v][0])}",
                                default="chat", key="view", required=True, label_visibility="collapsed")
    if st.session_state.get("kb_error"):
        st.error(md_literal(st.session_state.pop("kb_error")), icon=":material/error:")
    if st.session_state.get("notice"):
        st.toast(md_literal(st.session_state.pop("notice")), icon=":material/check_circle:")
    save_box = st.empty()  # a failed save's message (shown at the end of the run: saves happen all through it)
    viewing = st.session_state.pop("viewing", None)
    if viewing:
        source_viewer(app, *viewing)
    save_settings(store)
    follow = None
    if view == "kbs":
        follow = kb_view(app)
    else:
        chat_view(app, store)
    model_state(app, models)  # it waits for the language model to load, which the page need not do
    show_save_failures(save_box)
    if follow is not None:
        follow()  # last: follows a running upload / rebuild until it is done (a click stops it, as any run)
