"""The sidebar: language, conversations, which knowledge bases to ask, answer settings, ratings download, the
models' state."""

from __future__ import annotations

import logging

import streamlit as st

from kb_qa.conversations import ConversationStore, eval_bench_zip
from kb_qa.webui.session import new_conversation, open_conversation, set_owner
from kb_qa.webui.shared import T
from kb_qa.webui.support import md_literal
from kb_qa.webui.text import LANGUAGES

log = logging.getLogger("kb_qa.webui")


def sidebar(app, store: ConversationStore):
    """The sidebar's widgets (drawn first, so they exist in every run however early it is interrupted); returns the
    box that model_state() fills at the end of the run (it may wait for the language model to load)."""
    ss = st.session_state
    with st.sidebar:
        st.title(":material/menu_book: kb_qa")
        st.caption(T("Ask questions about your own documents."))
        st.segmented_control(T("Interface language"), list(LANGUAGES), format_func=LANGUAGES.__getitem__, key="lang",
                             required=True)
        names = app.kb_names()
        st.multiselect(T("Knowledge bases to ask"), names, key="ask_kbs",
                       placeholder=T("Choose one or several") if names else T("Create one first"),
                       help=T("Answers search every selected knowledge base."))

        with st.expander(T("Conversations"), icon=":material/forum:", expanded=True):
            st.button(T("New conversation"), icon=":material/add_comment:", on_click=new_conversation,
                      width="stretch", key="new_conversation")
            saved = store.list(ss.owner)
            for conv in saved[:30]:
                current = conv.id == ss.conversation.id
                st.button(md_literal(conv.display_title() or "…"), key=f"conv_{conv.id}", width="stretch",
                          type="primary" if current else "tertiary", on_click=open_conversation,
                          args=(store, conv.id), disabled=current)
            st.text_input(T("Your name (keeps your conversations on every browser)"), key="owner_name",
                          on_change=set_owner, args=(store,), placeholder=ss.owner)

        st.subheader(T("Answer settings"))
        s = app.settings  # ranges widen to take in whatever the settings file says
        st.slider(T("Passages (top_k)"), 1, max(20, s.retrieval.top_k), key="top_k",
                  help="Passages retrieved and given to the model.")
        st.slider(T("Score threshold"), 0.0, 1.0, step=0.05, key="score_threshold",
                  help="Passages scoring below this (0 = worst, 1 = best match) are dropped; 0 keeps all.")
        st.toggle(T("Hybrid search (vectors + keywords)"), key="hybrid",
                  help="Off: vector (embedding) search only. On: also BM25 keyword search, fused.")
        st.slider(T("Temperature"), 0.0, 2.0, step=0.05, key="temperature",
                  help="0 = always the most likely word; higher = more varied answers. (Language model only.)")
        st.number_input(T("Max answer tokens"), 16, max(s.llm.max_context_tokens // 2, s.llm.max_new_tokens),
                        step=64, key="max_new_tokens", help="Longest answer, in tokens. (Language model only.)")
        st.slider(T("History rounds"), 0, max(10, s.qa.history_rounds), key="history_rounds",
                  help="Earlier questions and answers the model sees (0 = each question on its own).")

        feedback_downloads(store)
        st.subheader(T("Models"))
        return st.container()


def feedback_downloads(store: ConversationStore) -> None:
    ratings = store.feedback()
    if not ratings:
        return
    with st.expander(T("Feedback") + f" ({len(ratings)})", icon=":material/thumbs_up_down:"):
        import json

        st.download_button(T("Download ratings (.jsonl)"), on_click="ignore", width="stretch",
                           data="".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ratings),
                           file_name="kb_qa-feedback.jsonl", mime="application/jsonl")
        st.download_button(T("Download 👍 as an evaluation set (.zip)"), data=eval_bench_zip(ratings),
                           file_name="kb_qa-feedback-bench.zip", mime="application/zip", on_click="ignore",
                           width="stretch", help="A BEIR folder for: python -m kb_qa.eval --bench DIR")


def model_state(app, box) -> None:
    """The models' state, at the end of the run: the first run of the process waits here for the model to load
    (App.llm loads once, never raises; a failed load says why and is retried only on request)."""
    _ = app.llm  # load it now, so the first question does not wait (a bare expression would be drawn)
    status = app.llm_status()
    with box:
        st.caption(md_literal(f"Embeddings: {embedding_state(app)}"))
        if status.loaded:
            st.caption(md_literal(f"LLM: {status.reason or status.name}"))
        else:
            st.caption(md_literal(f"LLM: retrieval-only: {status.reason or status.state}"))
        if status.configured and not status.loaded:
            st.button("Retry loading the model", on_click=app.reset_llm)


def embedding_state(app) -> str:
    if app.embeddings_loaded:
        try:
            return app.embeddings.describe()
        except Exception:  # noqa: BLE001 - a description is not worth an error
            log.debug("describing the embedding model failed", exc_info=True)
    return f"{app.settings.embedding.model} (loads on first use)"
