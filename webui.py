"""The web page: chat with your knowledge bases, upload and manage documents.   Run: streamlit run webui.py

Calls kb_qa in-process (kb_qa.app.App) and holds no business logic: uploads, ingestion, retrieval and answering
all live in kb_qa; this file lays them out. One App (and so one embedding model and one LLM) per process, shared
by every browser session through st.cache_resource; each session keeps its own conversation in st.session_state.

Untrusted text (document passages, file names, model output) is always shown through
kb_qa.webui_support.md_literal / literal_stream or st.text, never as raw HTML (no unsafe_allow_html anywhere), so
nothing in a document can run script or make the browser fetch a remote image.

Settings: configs/default.yaml and KB_QA_* environment variables (see kb_qa/settings.py), e.g.
    KB_QA_LLM__MODEL_PATH=/models/chatglm2-6b streamlit run webui.py
"""

from __future__ import annotations

import logging
import math
import threading
import time

import streamlit as st

from kb_qa.webui_support import (
    MODE_NOTES,
    Turn,
    conversation_markdown,
    document_rows,
    friendly_error,
    history_pairs,
    literal_stream,
    md_literal,
    outcome_counts,
    outcome_rows,
    outside_folder,
    plural,
    source_title,
)

log = logging.getLogger("kb_qa.webui")

st.set_page_config(page_title="kb_qa · knowledge-base QA", layout="wide")  # no page_icon: a material/emoji
# favicon is fetched from a CDN (fonts.gstatic.com); the page makes no request beyond its own server


# ======================================================================================================
# Shared, process-wide resources (loaded once, used by every browser session)
# ======================================================================================================
@st.cache_resource(show_spinner="Reading settings…")
def shared_app():
    from kb_qa.app import App
    from kb_qa.settings import load_settings

    return App(load_settings())


@st.cache_resource
def generation_lock() -> threading.Lock:
    """One generation at a time per process: the LLM (and its GPU memory) is shared by all sessions."""
    return threading.Lock()


# ------------------------------------------------------------------------------------------------------
# The one place that touches the language model and the answering chain.
# ------------------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner="Loading the language model (once per process)…")
def shared_llm():
    """(handle, description, None) when a model is loaded; (None, why answers are retrieval-only, error or None)
    otherwise. A failed load is cached too (a 6B model must not be retried on every click): see 'Retry'."""
    from kb_qa.llm.factory import resolve_llm

    try:
        handle, text = resolve_llm(shared_app().settings.llm)
    except Exception as exc:  # e.g. out of memory, an unsupported checkpoint: say why, answer retrieval-only
        log.exception("loading the language model failed")
        _free_gpu_memory(exc)
        return None, f"retrieval-only: the model failed to load: {friendly_error(exc)}", exc
    return handle, text, None


def answer_stream(kbs: list[str], question: str, history: list[tuple[str, str]], overrides: dict, result: dict):
    """Yield the answer's text pieces (also kept in result['pieces']); the final kb_qa.schema.Answer goes to
    result['answer']. Closing this generator closes the chain's, which ends the generation."""
    from kb_qa.qa.chain import stream_answer
    from kb_qa.schema import Answer

    for item in stream_answer(shared_app(), question, kbs=kbs, history=history, llm=shared_llm()[0],
                              overrides=overrides):
        if isinstance(item, Answer):
            result["answer"] = item
        elif item:
            result["pieces"].append(item)
            yield item


# ======================================================================================================
# Session state
# ======================================================================================================
def init_session(app) -> None:
    ss = st.session_state
    ss.setdefault("turns", [])
    ss.setdefault("report", None)  # (kb, [FileOutcome], seconds) of the last upload / rebuild, shown until replaced
    names = app.kb_names()
    default = [app.settings.default_kb] if app.settings.default_kb in names else names[:1]
    ss.setdefault("ask_kbs", default)
    ss["ask_kbs"] = [n for n in ss["ask_kbs"] if n in names]  # a KB deleted by another session or the CLI
    if ss.get("manage_kb") not in names:
        ss["manage_kb"] = (ss["ask_kbs"] or names or [None])[0]
    s = app.settings
    ss.setdefault("top_k", s.retrieval.top_k)
    ss.setdefault("score_threshold", float(s.retrieval.score_threshold))
    ss.setdefault("hybrid", bool(s.retrieval.dense and s.retrieval.keyword))
    ss.setdefault("temperature", float(s.llm.temperature))
    ss.setdefault("max_new_tokens", int(s.llm.max_new_tokens))
    ss.setdefault("history_rounds", int(s.qa.history_rounds))


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


def show_error(exc: BaseException, what: str) -> None:
    log.warning("%s failed: %r", what, exc, exc_info=not _expected(exc))
    st.error(md_literal(f"{what} failed: {friendly_error(exc)}"), icon=":material/error:")


def _expected(exc: BaseException) -> bool:
    return type(exc).__name__ in {"KnowledgeBaseBusy", "InvalidName", "UploadRejected", "KnowledgeBaseNotFound",
                                  "EmbeddingMismatch", "KnowledgeBaseError"}


# ======================================================================================================
# Sidebar: which knowledge bases to ask, answer settings, model state
# ======================================================================================================
def sidebar(app):
    """The sidebar's widgets (drawn first, so they exist in every run however early it is interrupted); returns the
    box that model_state() fills at the end of the run (it may wait for the language model to load)."""
    with st.sidebar:
        st.title(":material/menu_book: kb_qa")
        st.caption("Ask questions about your own documents.")
        names = app.kb_names()
        st.multiselect("Knowledge bases to ask", names, key="ask_kbs",
                       placeholder="Choose one or several" if names else "Create one first",
                       help="Answers search every selected knowledge base.")

        st.subheader("Answer settings")
        s = app.settings  # ranges widen to take in whatever the settings file says
        st.slider("Passages (top_k)", 1, max(20, s.retrieval.top_k), key="top_k",
                  help="Passages retrieved and given to the model.")
        st.slider("Score threshold", 0.0, 1.0, step=0.05, key="score_threshold",
                  help="Passages scoring below this (0 = worst, 1 = best match) are dropped; 0 keeps all.")
        st.toggle("Hybrid search (vectors + keywords)", key="hybrid",
                  help="Off: vector (embedding) search only. On: also BM25 keyword search, fused.")
        st.slider("Temperature", 0.0, 2.0, step=0.05, key="temperature",
                  help="0 = always the most likely word; higher = more varied answers. (Language model only.)")
        st.number_input("Max answer tokens", 16, max(s.llm.max_context_tokens // 2, s.llm.max_new_tokens), step=64,
                        key="max_new_tokens", help="Longest answer, in tokens. (Language model only.)")
        st.slider("History rounds", 0, max(10, s.qa.history_rounds), key="history_rounds",
                  help="Earlier questions and answers the model sees (0 = each question on its own).")

        st.subheader("Models")
        return st.container()


def model_state(app, box) -> None:
    _, llm_text, llm_error = shared_llm()
    with box:
        st.caption(md_literal(f"Embeddings: {embedding_state(app)}"))
        st.caption(md_literal(f"LLM: {llm_text}"))
        if llm_error is not None:
            st.button("Retry loading the model", on_click=shared_llm.clear)


def embedding_state(app) -> str:
    if "embeddings" in vars(app):  # already loaded (App.embeddings is a cached property)
        try:
            return app.embeddings.describe()
        except Exception:
            log.debug("describing the embedding model failed", exc_info=True)
    return f"{app.settings.embedding.model} (loads on first use)"


# ======================================================================================================
# Chat view
# ======================================================================================================
def chat_view(app) -> None:
    ss = st.session_state
    turns: list[Turn] = ss.turns
    header = st.container()  # filled last, so Clear / Export already include an answer given in this run
    kbs = list(ss.ask_kbs)
    if not kbs:
        st.info("Choose a knowledge base to ask in the sidebar, or create one under **Knowledge bases**.")
    elif not turns:
        st.caption(md_literal("Asking: " + ", ".join(kbs)))

    for turn in turns:
        render_turn(turn)

    question = st.chat_input("Ask a question about your documents…", disabled=not kbs, key="question")
    if question and question.strip():
        ask(question.strip(), kbs)

    with header:
        top = st.columns([6, 2, 2], vertical_alignment="center")
        top[0].subheader("Chat")
        top[1].button("Clear conversation", icon=":material/delete_sweep:", on_click=lambda: ss.update(turns=[]),
                      disabled=not turns, width="stretch")
        top[2].download_button("Export (.md)", icon=":material/download:",
                               data=conversation_markdown(turns) if turns else "",
                               file_name=time.strftime("kb_qa-conversation-%Y%m%d-%H%M.md"), mime="text/markdown",
                               disabled=not turns, on_click="ignore", width="stretch")


def render_turn(turn: Turn) -> None:
    with st.chat_message("user"):
        st.markdown(md_literal(turn.question))
    with st.chat_message("assistant"):
        if turn.answer:
            st.markdown(md_literal(turn.answer))
        if turn.error:
            st.error(md_literal(turn.error), icon=":material/error:")
        render_sources(turn)


def render_sources(turn: Turn) -> None:
    note = MODE_NOTES.get(turn.mode, "")
    meta = " · ".join(x for x in [note, ", ".join(turn.kbs), f"{turn.seconds:.1f} s" if turn.seconds else ""] if x)
    if meta:
        st.caption(md_literal(meta))
    for i, source in enumerate(turn.sources, 1):
        with st.expander(md_literal(source_title(i, source)), icon=":material/description:"):
            details = [f"knowledge base: {source.kb}", f"file: {source.source}"]
            if source.page is not None:
                details.append(f"page {source.page}")
            if source.heading:
                details.append(f"section: {source.heading}")
            details.append(f"score {source.score:.3f}")
            if source.dense_score is not None:
                details.append(f"vector {source.dense_score:.3f}")
            if source.keyword_score is not None:
                details.append(f"keyword {source.keyword_score:.3f}")
            st.caption(md_literal(" · ".join(details)))
            st.text(source.text)


def ask(question: str, kbs: list[str]) -> None:
    ss = st.session_state
    turn = Turn(question=question, kbs=kbs)
    ss.turns.append(turn)  # kept even if the run is stopped or interrupted half-way
    with st.chat_message("user"):
        st.markdown(md_literal(question))
    with st.chat_message("assistant"):
        started = time.perf_counter()
        result: dict = {"pieces": []}
        history = history_pairs(ss.turns[:-1], int(ss.history_rounds))
        stream = answer_stream(kbs, question, history, request_overrides(), result)
        lock = generation_lock()
        if not lock.acquire(blocking=False):
            with st.spinner("Another answer is being generated; waiting for the model…"):
                lock.acquire()
        try:
            st.write_stream(literal_stream(stream))
        except Exception as exc:  # bad input, busy KB, OOM: a message, and the page goes on
            turn.error = f"Answering failed: {friendly_error(exc)}"
            log.warning("answering failed", exc_info=True)
            _free_gpu_memory(exc)
        finally:  # also on Stop / a rerun (BaseException): end the generation before another may start
            stream.close()
            lock.release()
            answer = result.get("answer")
            if answer is not None:
                turn.answer, turn.sources, turn.mode = answer.text, list(answer.sources), answer.mode
            else:
                turn.answer = "".join(result["pieces"])
                turn.error = turn.error or "Answering stopped before it finished."
            turn.seconds = time.perf_counter() - started
        if turn.error:
            st.error(md_literal(turn.error), icon=":material/error:")
        render_sources(turn)


def _free_gpu_memory(exc: BaseException) -> None:
    if "out of memory" not in str(exc).lower() and type(exc).__name__ != "OutOfMemoryError":
        return
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        log.debug("emptying the CUDA cache failed", exc_info=True)


# ======================================================================================================
# Knowledge-base view
# ======================================================================================================
def kb_view(app) -> None:
    ss = st.session_state
    names = app.kb_names()
    left, right = st.columns([3, 2], gap="large")
    with right, st.form("create_kb", clear_on_submit=True, border=True):
        st.markdown("**New knowledge base**")
        st.text_input("Name", key="new_kb_name", placeholder="e.g. manuals",
                      help="Letters (any script), digits, '_', '-', '.'; up to 64 characters.")
        st.form_submit_button("Create", icon=":material/add:", on_click=create_kb, args=(app,))
    with left:
        if not names:
            st.info("No knowledge bases yet: create one on the right, then upload documents into it.")
            return
        st.selectbox("Knowledge base", names, key="manage_kb")
    name = ss.manage_kb
    with left:
        summary = st.empty()  # filled once the upload below (if any) is done

    st.subheader("Upload documents")
    upload_form(app, name)
    report = ss.report
    if report and report[0] == name:
        show_report(*report)

    try:
        kb = app.kb(name)
        info, docs = kb.info(), kb.documents()
    except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
        show_error(exc, f"Opening {name}")
        return
    summary.caption(md_literal(f"{plural(info.documents, 'document')} · {plural(info.chunks, 'chunk')} · "
                               f"embedding model {info.embedding_model or '-'}"))

    st.subheader("Documents")
    if docs:
        st.dataframe(document_rows(docs), hide_index=True, width="stretch",
                     column_config={"chunks": st.column_config.NumberColumn("chunks", format="%d")})
        cols = st.columns([4, 2, 2], vertical_alignment="bottom")
        cols[0].selectbox("Document", [d.source for d in docs], key="doc_to_remove")
        cols[1].button("Remove document", icon=":material/delete:", on_click=remove_document, args=(app, name),
                       width="stretch")
        cols[2].button("Rebuild index", icon=":material/refresh:", on_click=rebuild, args=(app, name),
                       width="stretch",
                       help=f"Re-read and re-embed every document in {app.docs_root / name} from scratch.")
        elsewhere = outside_folder(docs, app.docs_root / name)
        if elsewhere:
            st.caption(md_literal(f"{plural(len(elsewhere), 'document')} came from outside {app.docs_root / name} "
                                  "(e.g. python -m kb_qa.ingest PATH); a rebuild drops them, re-ingest them after."))
    else:
        st.caption("No documents yet.")

    with st.expander("Delete this knowledge base"):
        st.caption(md_literal(f"Deletes the index of '{name}'. The uploaded files under "
                              f"{app.docs_root / name} are kept."))
        confirm = st.checkbox(md_literal(f"Yes, delete '{name}'"), key=f"confirm_delete_{name}")
        st.button("Delete knowledge base", type="primary", disabled=not confirm, on_click=delete_kb,
                  args=(app, name))



def upload_form(app, name: str) -> None:
    from kb_qa.ingest.loaders import SUPPORTED_EXTENSIONS

    limit_mb = app.settings.ingest.max_file_mb
    with st.form("upload", clear_on_submit=True):
        files = st.file_uploader(
            f"Files (up to {limit_mb:g} MiB each)", accept_multiple_files=True,
            type=sorted(e.lstrip(".") for e in SUPPORTED_EXTENSIONS), key="uploads",
            max_upload_size=max(1, math.ceil(limit_mb)))
        submitted = st.form_submit_button(f"Add to {name}", icon=":material/upload:", type="primary")
    if submitted and files:
        ingest_uploads(app, name, files)
    elif submitted:
        st.warning("Choose one or more files first.")


def ingest_uploads(app, name: str, files) -> None:
    total = len(files)
    bar = st.progress(0.0, text=f"Saving and indexing {total} file(s)…")
    done: list = []

    def on_file(outcome) -> None:
        done.append(outcome)
        bar.progress(min(len(done) / total, 1.0), text=f"{len(done)}/{total} · {outcome.source}: {outcome.status}")

    with st.spinner(f"Indexing {total} file(s) into {name}…"):
        try:
            report = app.add_uploads(name, [(f.name, f.getvalue()) for f in files], on_file=on_file)
        except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
            bar.empty()
            show_error(exc, "Upload")
            return
    bar.empty()  # the report below says how it went
    st.session_state.report = (name, list(report.outcomes), report.seconds)


def show_report(name: str, outcomes: list, seconds: float) -> None:
    failed = [o for o in outcomes if o.status == "failed"]
    summary = f"{name}: {outcome_counts(outcomes)} ({seconds:.1f} s)"
    (st.warning if failed else st.success)(md_literal(summary))
    st.dataframe(outcome_rows(outcomes), hide_index=True, width="stretch")


# -- callbacks (run before the page is drawn, so they may set widget state) -----------------------------
def create_kb(app) -> None:
    ss = st.session_state
    name = (ss.get("new_kb_name") or "").strip()
    if not name:
        return
    try:
        app.kb(name, create=True)
    except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
        ss.kb_error = f"Creating '{name}' failed: {friendly_error(exc)}"
        return
    ss.manage_kb = name
    if name not in ss.ask_kbs:
        ss.ask_kbs = [*ss.ask_kbs, name]
    ss.notice = f"Created knowledge base '{name}'."


def remove_document(app, name: str) -> None:
    ss = st.session_state
    source = ss.get("doc_to_remove")
    if not source:
        return
    try:
        removed = app.remove_document(name, source)
    except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
        ss.kb_error = f"Removing '{source}' failed: {friendly_error(exc)}"
        return
    ss.notice = f"Removed '{source}' from {name}." if removed else f"'{source}' was already gone."


def rebuild(app, name: str) -> None:
    ss = st.session_state
    try:
        report = app.ingest(name, [app.docs_root / name], rebuild=True)
    except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
        ss.kb_error = f"Rebuilding {name} failed: {friendly_error(exc)}"
        return
    ss.report = (name, list(report.outcomes), report.seconds)
    ss.notice = f"Rebuilt {name} in {report.seconds:.1f} s."


def delete_kb(app, name: str) -> None:
    ss = st.session_state
    try:
        app.delete_kb(name)
    except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
        ss.kb_error = f"Deleting '{name}' failed: {friendly_error(exc)}"
        return
    ss.ask_kbs = [n for n in ss.ask_kbs if n != name]
    ss.manage_kb = None
    ss.notice = f"Deleted knowledge base '{name}'."


# ======================================================================================================
# The page
# ======================================================================================================
VIEWS = {"chat": ":material/chat: Chat", "kbs": ":material/folder_open: Knowledge bases"}


def main() -> None:
    app = shared_app()
    init_session(app)
    models = sidebar(app)
    view = st.segmented_control("View", list(VIEWS), format_func=VIEWS.get, default="chat", key="view",
                                required=True, label_visibility="collapsed")
    if st.session_state.get("kb_error"):
        st.error(md_literal(st.session_state.pop("kb_error")), icon=":material/error:")
    if st.session_state.get("notice"):
        st.toast(md_literal(st.session_state.pop("notice")), icon=":material/check_circle:")
    if view == "kbs":
        kb_view(app)
    else:
        chat_view(app)
    model_state(app, models)  # last: it waits for the language model to load, which the page need not do


main()
