"""One browser session's state: who is asking (owner: a random key kept in the URL, or a typed name), which
conversation, the sidebar's settings; saving them, where a full disk or an I/O error is one message in the page
(`saved`, `show_save_failures`), never a crash."""

from __future__ import annotations

import logging

import streamlit as st

from kb_qa.conversations import Conversation, ConversationStore, new_id, safe_owner
from kb_qa.jobs import error_text
from kb_qa.webui.shared import T
from kb_qa.webui.support import md_literal

log = logging.getLogger("kb_qa.webui")

SETTING_KEYS = ("lang", "top_k", "score_threshold", "hybrid", "temperature", "max_new_tokens", "history_rounds")


def init_session(app, store: ConversationStore) -> None:
    ss, params = st.session_state, st.query_params
    if "owner" not in ss:
        ss.owner = params.get("u") or new_id()
        saved = store.load_settings(ss.owner)
        for key in SETTING_KEYS:
            if key in saved:
                ss[key] = saved[key]
        ss.saved_settings = {k: saved.get(k) for k in SETTING_KEYS}
        conversation = store.load(ss.owner, params.get("c", ""))
        ss.conversation = conversation or Conversation()
    if params.get("u") != ss.owner or (ss.conversation.turns and params.get("c") != ss.conversation.id):
        params["u"] = ss.owner
        if ss.conversation.turns:
            params["c"] = ss.conversation.id
    names = app.kb_names()
    default = [app.settings.default_kb] if app.settings.default_kb in names else names[:1]
    ss.setdefault("ask_kbs", default)
    ss["ask_kbs"] = [n for n in ss["ask_kbs"] if n in names]  # a KB deleted by another session or the CLI
    if ss.get("manage_kb") not in names:
        ss["manage_kb"] = (ss["ask_kbs"] or names or [None])[0]
    s = app.settings
    ss.setdefault("lang", "en")
    ss.setdefault("top_k", s.retrieval.top_k)
    ss.setdefault("score_threshold", float(s.retrieval.score_threshold))
    ss.setdefault("hybrid", bool(s.retrieval.dense and s.retrieval.keyword))
    ss.setdefault("temperature", float(s.llm.temperature))
    ss.setdefault("max_new_tokens", int(s.llm.max_new_tokens))
    ss.setdefault("history_rounds", int(s.qa.history_rounds))


def save_settings(store: ConversationStore) -> None:
    ss = st.session_state
    values = {k: ss.get(k) for k in SETTING_KEYS}
    if values != ss.get("saved_settings") and saved(lambda: store.save_settings(ss.owner, values)):
        ss.saved_settings = values


def save_conversation(store: ConversationStore) -> None:
    ss = st.session_state
    if ss.conversation.turns:
        saved(lambda: store.save(ss.owner, ss.conversation))


def save_failures() -> list[str]:
    """This session's failed saves not shown yet: a list object kept in the session, so a save in a run that is
    being stopped (no st.* call possible there) can still add to it; main() shows them once at the end."""
    return st.session_state.setdefault("save_failures", [])


def saved(save, failures: list[str] | None = None) -> bool:
    """Run one save of the page's own files (conversations, ratings, settings). A full disk or an I/O error is
    one message in the page, never a crash: the conversation stays in the page and what was stored before is
    intact (kb_qa.conversations writes atomically). `failures`: where to note it (default: this session's)."""
    try:
        save()
        return True
    except OSError as exc:  # SaveFailed, or any other OS error on the way
        log.warning("saving failed: %r", exc)
        (failures if failures is not None else save_failures()).append(error_text(exc))
        return False


def show_save_failures(box) -> None:
    """The failed saves of this run (and of a stopped one before it), as one message at the top of the page."""
    failures = save_failures()
    if failures:
        latest = list(dict.fromkeys(failures))
        failures.clear()
        more = " " + T("Nothing on this page is lost: it is saved again at the next answer or change.")
        box.error(md_literal(latest[-1] + more), icon=":material/sd_card_alert:")


def request_overrides() -> dict:
    """This session's sidebar settings as dotted overrides of the process settings (what the chain applies)."""
    ss = st.session_state
    return {
        "retrieval.top_k": int(ss.top_k),
        "retrieval.score_threshold": float(ss.score_threshold),
        "retrieval.dense": True,
        "retrieval.keyword": bool(ss.hybrid),
        "llm.temperature": float(ss.temperature),
        "llm.max_new_tokens": int(ss.max_new_tokens),
        "qa.history_rounds": int(ss.history_rounds),
    }


def new_conversation() -> None:
    st.session_state.conversation = Conversation()
    st.query_params.pop("c", None)


def open_conversation(store: ConversationStore, conversation_id: str) -> None:
    conv = store.load(st.session_state.owner, conversation_id)
    if conv is not None:
        st.session_state.conversation = conv
        st.query_params["c"] = conv.id


def set_owner(store: ConversationStore) -> None:
    ss = st.session_state
    name = (ss.get("owner_name") or "").strip()
    if name:
        ss.owner = safe_owner(name)
        st.query_params["u"] = ss.owner
        saved = store.list(ss.owner)
        ss.conversation = saved[0] if saved else Conversation()
