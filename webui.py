"""The web page: chat with your knowledge bases, upload and manage documents.   Run: streamlit run webui.py

Calls kb_qa in-process (kb_qa.app.App) and holds no business logic: uploads, ingestion, retrieval and answering
all live in kb_qa; this file lays them out. One App (and so one embedding model and one LLM), one ingestion
worker (kb_qa.jobs) and one conversation store (kb_qa.conversations) per process, shared by every browser session
through st.cache_resource. Uploads and rebuilds run in that worker, so clicks, reruns, reloads and other tabs never
cut them off; the page only shows their progress. Conversations, ratings and settings are JSON files under
<paths.vector_store_root>/.webui/, keyed by a random key kept in the URL (`?u=...&c=...`) or by a typed name.

Untrusted text (document passages, file names, model output) is shown through kb_qa.webui_support.md_literal
(escaped verbatim), kb_qa.webui_markdown.safe_markdown (model Markdown, re-emitted from a filtered parse) or
st.text, never as raw HTML (no unsafe_allow_html anywhere), so nothing in a document or an answer can run script
or make the browser fetch anything. .streamlit/config.toml turns usage statistics off.

Settings: configs/default.yaml and KB_QA_* environment variables (see kb_qa/settings.py), e.g.
    KB_QA_LLM__MODEL_PATH=/models/chatglm2-6b streamlit run webui.py
"""

from __future__ import annotations

import logging
import math
import threading
import time

import streamlit as st

from kb_qa.conversations import Conversation, ConversationStore, SourceRecord, Turn, eval_bench_zip, new_id
from kb_qa.jobs import error_text, is_expected, runner_for
from kb_qa.kb_options import create_with_options, model_mismatch, read_options, validated
from kb_qa.webui_markdown import safe_markdown
from kb_qa.webui_support import (
    conversation_markdown,
    document_rows,
    friendly_error,
    highlight_terms,
    history_pairs,
    md_literal,
    outcome_counts,
    outcome_rows,
    outside_folder,
    plural,
    source_title,
    unindexed_files,
)
from kb_qa.webui_text import LANGUAGES, answer_note, question_language, translate

log = logging.getLogger("kb_qa.webui")

SETTING_KEYS = ("lang", "top_k", "score_threshold", "hybrid", "temperature", "max_new_tokens", "history_rounds")
HEARTBEAT_S = 0.25  # a running upload / rebuild is redrawn on each change, and at least this often (seconds)
STORING_WAIT_S = 10.0  # how long a run waits for the answer a stopped run is still storing (normally ms)


def T(text: str, **fields) -> str:  # noqa: N802 - the page's one-letter translation call
    out = translate(text, st.session_state.get("lang", "en"))
    return out.format(**fields) if fields else out


# ======================================================================================================
# Shared, process-wide resources (made once, used by every browser session)
# ======================================================================================================
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


# ======================================================================================================
# Session state: who is asking (owner), which conversation, settings
# ======================================================================================================
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


def show_error(exc: BaseException, what: str) -> None:
    log.warning("%s failed: %r", what, exc, exc_info=not is_expected(exc))
    st.error(md_literal(f"{what} failed: {friendly_error(exc)}"), icon=":material/error:")


# ======================================================================================================
# Sidebar: language, conversations, which knowledge bases to ask, answer settings, model state
# ======================================================================================================
def sidebar(app, store: ConversationStore):
    """The sidebar's widgets (drawn first, so they exist in every run however early it is interrupted); returns the
    box that model_state() fills at the end of the run (it may wait for the language model to load)."""
    ss = st.session_state
    with st.sidebar:
        st.title(":material/menu_book: kb_qa")
        st.caption(T("Ask questions about your own documents."))
        st.segmented_control(T("Interface language"), list(LANGUAGES), format_func=LANGUAGES.get, key="lang",
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


def new_conversation() -> None:
    st.session_state.conversation = Conversation()
    st.query_params.pop("c", None)


def open_conversation(store: ConversationStore, conversation_id: str) -> None:
    conv = store.load(st.session_state.owner, conversation_id)
    if conv is not None:
        st.session_state.conversation = conv
        st.query_params["c"] = conv.id


def set_owner(store: ConversationStore) -> None:
    from kb_qa.conversations import safe_owner

    ss = st.session_state
    name = (ss.get("owner_name") or "").strip()
    if name:
        ss.owner = safe_owner(name)
        st.query_params["u"] = ss.owner
        saved = store.list(ss.owner)
        ss.conversation = saved[0] if saved else Conversation()


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


# ======================================================================================================
# Chat view
# ======================================================================================================
def chat_view(app, store: ConversationStore) -> None:
    ss = st.session_state
    storing = ss.get("storing_answer")
    if storing is not None and not storing.wait(STORING_WAIT_S):  # a stopped run still storing its answer
        log.warning("the previous answer was not stored within %.0f s; drawing the conversation as it is",
                    STORING_WAIT_S)
    turns: list[Turn] = ss.conversation.turns
    kbs = list(ss.ask_kbs)
    # drawn first and the same in every run (an answer given in this run reruns the page), so nothing above the
    # conversation goes stale or shifts while an answer streams
    top = st.columns([6, 2, 2], vertical_alignment="center")
    top[0].subheader(T("Chat"))
    top[1].button(T("New conversation"), icon=":material/add_comment:", on_click=new_conversation,
                  disabled=not turns, width="stretch", key="new_conversation_top")
    top[2].download_button(T("Export (.md)"), icon=":material/download:",
                           data=conversation_markdown(turns) if turns else "",
                           file_name=time.strftime("kb_qa-conversation-%Y%m%d-%H%M.md"), mime="text/markdown",
                           disabled=not turns, on_click="ignore", width="stretch")
    st.caption(md_literal(T("Asking: {kbs}", kbs=", ".join(kbs))) if kbs else " ")
    if not kbs:
        st.info(T("Choose a knowledge base to ask in the sidebar, or create one under **Knowledge bases**."))

    for n, turn in enumerate(turns):
        render_turn(turn, n, last=n == len(turns) - 1, store=store)

    question = st.chat_input(T("Ask a question about your documents…"), disabled=not kbs, key="question")
    again = ss.pop("regenerate", None)
    if question and question.strip():
        ask(question.strip(), kbs, store)
    elif again is not None and turns and turns[-1].id == again:
        last = turns.pop()
        ask(last.question, last.kbs or kbs, store)



def sources_anchor(n: int) -> str:
    """The id of turn n's sources heading: Streamlit slugs heading text, and 'Sources n' slugs to 'sources-n'."""
    return f"sources-{n + 1}"


def answer_markdown(turn: Turn, n: int) -> str:
    """What the answer bubble shows: the model's Markdown (safely), or for retrieval-only / no-answer turns the
    note in the question's language (the passages themselves are the sources below: not repeated)."""
    lang = question_language(turn.question)
    if turn.mode in ("retrieval-only", "no-answer"):
        return md_literal(answer_note(turn.mode, lang))
    return safe_markdown(turn.answer, n_sources=len(turn.sources), anchor=sources_anchor(n))


def render_turn(turn: Turn, n: int, *, last: bool = False, store: ConversationStore | None = None) -> None:
    with st.chat_message("user"):
        st.markdown(md_literal(turn.question))
    with st.chat_message("assistant"):
        if turn.answer or turn.mode in ("retrieval-only", "no-answer"):
            st.markdown(answer_markdown(turn, n))
        render_notes(turn)
        render_sources(turn, n)
        if store is not None and (turn.answer or turn.sources):
            answer_actions(turn, n, last=last, store=store)


def render_notes(turn: Turn) -> None:
    lang = question_language(turn.question)
    if turn.error:
        st.error(md_literal(turn.error), icon=":material/error:")
    elif turn.stopped:
        st.caption(md_literal(answer_note("stopped", lang)))
    meta = [answer_note(turn.mode, lang) if turn.mode == "chat" else "", ", ".join(turn.kbs),
            f"{turn.seconds:.1f} s" if turn.seconds else ""]
    if turn.query and turn.query.strip() != turn.question.strip():
        meta.append(T("Searched for: {query}", query=turn.query))
    meta_text = " · ".join(x for x in meta if x)
    if meta_text:
        st.caption(md_literal(meta_text))


def render_sources(turn: Turn, n: int) -> None:
    if not turn.sources:
        return
    st.markdown(f"###### {T('Sources')} {n + 1}")  # its slug is the anchor [1]-style citations link to
    terms = turn.query or turn.question
    for i, source in enumerate(turn.sources, 1):
        with st.expander(md_literal(source_title(i, source)), icon=":material/description:"):
            details = [f"knowledge base: {source.kb}", f"file: {source.source}"]
            if source.page is not None:
                details.append(f"page {source.page}")
            if source.heading:
                details.append(f"section: {source.heading}")
            details.append(f"score {source.score:.3f}")
            st.caption(md_literal(" · ".join(details)))
            st.markdown(highlight_terms(source.text, terms))
            st.button(T("View source"), key=f"view_{turn.id}_{i}", icon=":material/open_in_new:",
                      on_click=lambda s=source: st.session_state.update(viewing=(s, terms)))


@st.dialog("Source", width="large")
def source_viewer(app, source: SourceRecord, terms: str) -> None:
    from kb_qa.paths import safe_join

    st.markdown(f"**{md_literal(source.label())}** · {md_literal(source.kb)}")
    st.markdown(highlight_terms(source.text, terms))
    path = None
    try:
        path = safe_join(app.docs_root / source.kb, source.source)
    except Exception:  # noqa: BLE001 - a name that cannot be inside the folder: no download
        log.debug("no download for %r", source.source, exc_info=True)
    if path is not None and path.is_file() and path.stat().st_size <= app.settings.ingest.max_file_mb * 2**20:
        st.download_button(T("Download the original"), data=path.read_bytes(), file_name=path.name,
                           icon=":material/download:", on_click="ignore")
    else:
        st.caption(T("The original file is not in the knowledge base folder."))


def answer_actions(turn: Turn, n: int, *, last: bool, store: ConversationStore) -> None:
    cols = st.columns([2, 2, 6], vertical_alignment="center")
    with cols[0]:
        rating = st.feedback("thumbs", key=f"rate_{turn.id}")
        wanted = {0: -1, 1: 1}.get(rating, 0) if rating is not None else turn.rating
        if rating is not None and wanted != turn.rating:
            turn.rating = wanted
            saved(lambda: store.add_feedback(st.session_state.owner, st.session_state.conversation.id, turn,
                                             wanted))
            save_conversation(store)
    if last:
        cols[1].button(T("Regenerate"), key=f"regen_{turn.id}", icon=":material/refresh:", type="tertiary",
                       on_click=lambda: st.session_state.update(regenerate=turn.id))
    with cols[2].popover(T("Copy"), icon=":material/content_copy:"):
        st.code(turn.answer, language="markdown", wrap_lines=True)  # the code block has a copy button


def ask(question: str, kbs: list[str], store: ConversationStore) -> None:
    ss = st.session_state
    # Stop (or any click) stops this run: Streamlit raises StopException at its next st.* call and starts the next
    # run at once, in another thread. From then on every st.* call, st.session_state included, raises again, so
    # what storing the turn needs is taken now, and the next run waits on `storing` before it draws the turns.
    owner, conversation, failures = ss.owner, ss.conversation, save_failures()
    storing = ss["storing_answer"] = threading.Event()
    overrides = request_overrides()
    turn = Turn(question=question, kbs=list(kbs), settings=overrides)
    history = history_pairs(conversation.turns, int(ss.history_rounds))
    conversation.turns.append(turn)  # kept even if the run is stopped or interrupted half-way
    if not conversation.title:
        conversation.title = question
    try:
        saved(lambda: store.save(owner, conversation), failures)
        st.query_params["c"] = conversation.id
        stream_turn(turn, len(conversation.turns) - 1, history, kbs, overrides,
                    save=lambda: saved(lambda: store.save(owner, conversation), failures))
    finally:
        storing.set()  # stored (or failed to be): the next run may draw it
    st.rerun()  # draw the finished turn the way every earlier one is drawn (actions, rating, sources)


def stream_turn(turn: Turn, n: int, history, kbs: list[str], overrides: dict, *, save) -> None:
    """Draw turn n while its answer streams; then store it with `save()`, also when the run is stopped half-way
    (what was generated and its sources are kept)."""
    lang = question_language(turn.question)
    with st.chat_message("user"):
        st.markdown(md_literal(turn.question))
    with st.chat_message("assistant"):
        body = st.empty()
        body.markdown(f"*{md_literal(translate('searching…', lang))}*")
        stop = st.empty()
        stop.button(T("Stop"), icon=":material/stop_circle:", key="stop")  # a click reruns: the answer stops
        pieces: list[str] = []
        started = time.perf_counter()
        result: dict = {}

        def on_sources(sources, query) -> None:
            turn.sources = [SourceRecord.of(s) for s in sources]
            turn.query = query

        app = shared_app()
        if app.generation_lock.locked():  # the model generates for one session at a time; this one queues
            waiting = translate("waiting for the model (another answer is being generated)…", lang)
            body.markdown(f"*{md_literal(waiting)}*")
        stream = None
        try:
            from kb_qa.schema import Answer

            stream = app.chain().stream_answer(turn.question, history, kbs, overrides=overrides,
                                               on_sources=on_sources)
            shown = 0.0
            for item in stream:
                if isinstance(item, Answer):
                    result["answer"] = item
                    continue
                if not item:
                    continue
                pieces.append(item)
                if time.perf_counter() - shown > 0.08:  # redraw at most ~12 times a second
                    body.markdown(safe_markdown("".join(pieces), n_sources=len(turn.sources),
                                                anchor=sources_anchor(n)) if turn.sources or pieces else "")
                    shown = time.perf_counter()
                elif len(pieces) == 1:
                    body.markdown(f"*{md_literal(translate('generating…', lang))}*")
        except Exception as exc:  # noqa: BLE001 - bad input, busy KB, OOM: a message, and the page goes on
            turn.error = answer_note("failed", lang, error=friendly_error(exc))
            log.warning("answering failed: %r", exc, exc_info=not is_expected(exc))
            _free_gpu_memory(exc)
        finally:  # also on Stop / a rerun (BaseException): no st.* call in here, it would raise before the save
            if stream is not None:
                stream.close()  # ends the generation and frees the model's lock
            answer = result.get("answer")
            if answer is not None:
                turn.answer, turn.mode, turn.query = answer.text, answer.mode, answer.query
                turn.sources = [SourceRecord.of(s) for s in answer.sources]
            elif not turn.error:
                turn.answer = "".join(pieces)
                turn.mode = "llm" if turn.sources else ""
                turn.stopped = True  # Stop, a click elsewhere, or a reload: what was generated is kept
            turn.seconds = time.perf_counter() - started
            save()
        stop.empty()
        body.empty()


def _free_gpu_memory(exc: BaseException) -> None:
    import sys

    torch = sys.modules.get("torch")
    oom = torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ()))
    if not (oom or "out of memory" in str(exc).lower()):
        return
    try:
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        log.debug("emptying the CUDA cache failed", exc_info=True)


# ======================================================================================================
# Knowledge-base view
# ======================================================================================================
def kb_view(app):
    """The knowledge-base view; returns job_progress()'s follow function (or None)."""
    ss = st.session_state
    names = app.kb_names()
    left, right = st.columns([3, 2], gap="large")
    with right, st.form("create_kb", clear_on_submit=True, border=True):
        st.markdown(f"**{T('New knowledge base')}**")
        st.text_input(T("Name"), key="new_kb_name", placeholder="e.g. manuals",
                      help="Letters (any script), digits, '_', '-', '.'; up to 64 characters.")
        s = app.settings
        sizes = st.columns(2)
        sizes[0].number_input(T("Chunk size (characters)"), 50, 4000, value=int(s.ingest.chunk_size), step=50,
                              key="new_kb_chunk_size", help="Target length of each passage, in characters.")
        sizes[1].number_input(T("Chunk overlap (characters)"), 0, 1000, value=int(s.ingest.chunk_overlap),
                              step=10, key="new_kb_chunk_overlap",
                              help="Characters shared by neighbouring passages; smaller than the chunk size.")
        st.text_input(T("Embedding model"), value=s.embedding.model, key="new_kb_embedding_model",
                      help="Recorded with the knowledge base: documents and questions are embedded with it. This "
                           "page runs one model (embedding.model in the settings); a knowledge base made for "
                           "another one is usable once the page is started with that model.")
        st.form_submit_button(T("Create"), icon=":material/add:", on_click=create_kb, args=(app,))
    with left:
        if not names:
            st.info("No knowledge bases yet: create one on the right, then upload documents into it.")
            return
        st.selectbox(T("Knowledge base"), names, key="manage_kb")
    name = ss.manage_kb
    with left:
        summary = st.container()

    st.subheader(T("Upload documents"))
    upload_form(app, name)
    follow = job_progress(name)

    try:
        kb = app.kb(name)
        info, docs = kb.info(), kb.documents()
    except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
        show_error(exc, f"Opening {name}")
        return follow
    with summary:
        st.caption(md_literal(f"{plural(info.documents, 'document')} · {plural(info.chunks, 'chunk')} · "
                              f"embedding model {info.embedding_model or '-'}"))
        options = read_options(kb)
        if options is not None:
            st.caption(md_literal(f"Created with chunks of {options.chunk_size} characters (overlap "
                                  f"{options.chunk_overlap}) for the embedding model {options.embedding_model}."))
        mismatch = model_mismatch(kb, app.settings.embedding.model)
        if mismatch and not (info.embedding_model and info.embedding_model != app.settings.embedding.model):
            st.warning(md_literal(mismatch[0].upper() + mismatch[1:]), icon=":material/warning:")
        if info.embedding_model and info.embedding_model != app.settings.embedding.model:
            st.warning(md_literal(
                f"{name} was built with the embedding model {info.embedding_model}; this page uses "
                f"{app.settings.embedding.model}. Questions and uploads fail until you rebuild it (Rebuild index "
                f"re-embeds every document with {app.settings.embedding.model}) or restart the page with "
                f"KB_QA_EMBEDDING__MODEL={info.embedding_model}."), icon=":material/warning:")

    st.subheader(T("Documents"))
    failed = unindexed_files(app.docs_root / name, docs, shared_jobs().jobs(name))
    if docs or failed:
        rows = document_rows(docs) + [{"document": f, "status": T("Not indexed"), "chunks": 0, "size": "-",
                                       "updated": "-", "note": why} for f, why in failed.items()]
        st.dataframe(rows, hide_index=True, width="stretch",
                     column_config={"chunks": st.column_config.NumberColumn("chunks", format="%d")})
    if docs:
        document_actions(app, name, docs)
    elif not failed:
        st.caption(T("No documents yet."))
    if failed:
        cols = st.columns([4, 2, 2], vertical_alignment="bottom")
        cols[0].selectbox(T("Not indexed"), list(failed), key="failed_to_remove")
        cols[1].button(T("Remove file"), icon=":material/delete:", on_click=remove_failed_file, args=(app, name),
                       width="stretch")

    with st.expander(T("Delete this knowledge base")):
        st.caption(md_literal(f"Deletes the index of '{name}'. The uploaded files under "
                              f"{app.docs_root / name} are kept."))
        confirm = st.checkbox(md_literal(f"Yes, delete '{name}'"), key=f"confirm_delete_{name}")
        st.button(T("Delete knowledge base"), type="primary", disabled=not confirm, on_click=delete_kb,
                  args=(app, name))
    return follow


def document_actions(app, name: str, docs) -> None:
    ss = st.session_state
    busy = bool(shared_jobs().active(name))
    cols = st.columns([4, 2, 2], vertical_alignment="bottom")
    cols[0].selectbox(T("Document"), [d.source for d in docs], key="doc_to_remove")
    cols[1].button(T("Remove document"), icon=":material/delete:", width="stretch",
                   on_click=lambda: ss.update(confirm_remove=(name, ss.get("doc_to_remove"))))
    cols[2].button(T("Rebuild index"), icon=":material/refresh:", on_click=rebuild, args=(name,),
                   width="stretch", disabled=busy,
                   help=f"Re-read and re-embed every document in {app.docs_root / name} from scratch.")
    pending = ss.get("confirm_remove")
    if pending and pending[0] == name and pending[1]:
        with st.container(border=True):
            st.warning(md_literal(T("Remove '{doc}' from {kb} and delete its file?", doc=pending[1], kb=name)))
            yes, no = st.columns(2)
            yes.button(T("Yes, remove"), type="primary", on_click=remove_document, args=(app, name, pending[1]),
                       width="stretch")
            no.button(T("Cancel"), on_click=lambda: ss.pop("confirm_remove", None), width="stretch")
    elsewhere = outside_folder(docs, app.docs_root / name)
    if elsewhere:
        st.caption(md_literal(f"{plural(len(elsewhere), 'document')} came from outside {app.docs_root / name} "
                              "(e.g. python -m kb_qa.ingest PATH); a rebuild drops them, re-ingest them after."))
    selected = ss.get("doc_to_remove")
    if selected:
        with st.expander(T("Chunks of the selected document") + f": {md_literal(selected)}"):
            kb = app.kb(name)
            chunks = kb.get_chunks(sorted(kb.chunk_ids_for_sources([selected])))
            for cid, chunk in list(chunks.items())[:200]:
                where = " · ".join(x for x in [f"#{cid}", f"p.{chunk.page}" if getattr(chunk, "page", None)
                                               is not None else "", getattr(chunk, "heading", None) or ""] if x)
                st.caption(md_literal(where))
                st.text(chunk.text)


def upload_form(app, name: str) -> None:
    from kb_qa.ingest.loaders import SUPPORTED_EXTENSIONS

    limit_mb = app.settings.ingest.max_file_mb
    with st.form("upload", clear_on_submit=True):
        files = st.file_uploader(
            T("Files (up to {mb} MiB each)", mb=f"{limit_mb:g}"), accept_multiple_files=True,
            type=sorted(e.lstrip(".") for e in SUPPORTED_EXTENSIONS), key="uploads",
            max_upload_size=max(1, math.ceil(limit_mb)))
        submitted = st.form_submit_button(T("Add to {kb}", kb=name), icon=":material/upload:", type="primary")
    if submitted and files:
        shared_jobs().submit_upload(name, [(f.name, f.getvalue()) for f in files])
        st.rerun()  # draw the job's progress (and clear the form) at once
    elif submitted:
        st.warning(T("Choose one or more files first."))


def job_progress(name: str):
    """This KB's running jobs' progress, drawn now into a box of its own, then the last job's report. Returns
    None, or while a job runs the function main() calls at the very end of the run (so the whole page is drawn
    first) to follow it: it redraws the box on every change the worker reports (kb_qa.jobs.wait_for_change,
    not a polling timer, so each file's step is shown however quick) and reruns the page once the job is done."""
    runner = shared_jobs()
    box = st.empty()
    version = runner.version()  # read before drawing: a change made meanwhile is drawn by follow()
    draw_progress(box, runner, name)
    last = runner.latest(name)
    if last is not None and not last.active and last.id not in st.session_state.get("dismissed", set()):
        show_report(runner.snapshot(last))
    if not runner.active(name):
        return None

    def follow() -> None:
        seen = version
        while runner.active(name):
            seen = runner.wait_for_change(seen, HEARTBEAT_S)
            draw_progress(box, runner, name)  # also the heartbeat: a click's rerun stops this run at an st call
        st.rerun()  # done: draw the report and the new documents

    return follow


def draw_progress(box, runner, name: str) -> None:
    with box.container():
        for job in runner.active(name):
            job = runner.snapshot(job)
            what = "Rebuilding" if job.kind == "rebuild" else "Indexing"
            text = (f"{what} {name}: {job.files_done}/{job.files_total} files · {plural(job.chunks_done, 'chunk')}"
                    + (f" · {job.current}" if job.current and job.kind == "upload" else "")
                    + (" (queued)" if job.state == "queued" else ""))
            st.progress(job.fraction, text=md_literal(text))


def show_report(job) -> None:
    if job.error:
        st.error(md_literal(f"{job.kb}: {'rebuild' if job.kind == 'rebuild' else 'upload'} failed: {job.error}"),
                 icon=":material/error:")
    summary = f"{job.kb}: {outcome_counts(job.outcomes)} ({job.seconds:.1f} s)"
    (st.warning if job.failed or job.error else st.success)(md_literal(summary))
    if job.outcomes:
        st.dataframe(outcome_rows(job.outcomes), hide_index=True, width="stretch")
    st.button("Dismiss", key=f"dismiss_{job.id}", type="tertiary", on_click=lambda: st.session_state.setdefault(
        "dismissed", set()).add(job.id))


# -- callbacks (run before the page is drawn, so they may set widget state) -----------------------------
def create_kb(app) -> None:
    ss = st.session_state
    name = (ss.get("new_kb_name") or "").strip()
    if not name:
        return
    if name in app.kb_names():
        ss.kb_error = f"A knowledge base named '{name}' already exists: choose another name, or pick it above."
        ss.manage_kb = name
        return
    try:
        options = validated(app.settings, chunk_size=ss.get("new_kb_chunk_size"),
                            chunk_overlap=ss.get("new_kb_chunk_overlap"),
                            embedding_model=ss.get("new_kb_embedding_model"))
        create_with_options(app, name, options)
    except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
        ss.kb_error = f"Creating '{name}' failed: {error_text(exc)}"
        return
    ss.manage_kb = name
    if name not in ss.ask_kbs:
        ss.ask_kbs = [*ss.ask_kbs, name]
    ss.notice = f"Created knowledge base '{name}'."
    if options.embedding_model != app.settings.embedding.model:
        ss.kb_error = (f"'{name}' was created for the embedding model {options.embedding_model}, but this page "
                       f"runs {app.settings.embedding.model}: start the page with "
                       f"KB_QA_EMBEDDING__MODEL={options.embedding_model} to add documents to it or ask it.")


def remove_document(app, name: str, source: str) -> None:
    ss = st.session_state
    ss.pop("confirm_remove", None)
    try:
        removed = app.remove_document(name, source)
    except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
        ss.kb_error = f"Removing '{source}' failed: {error_text(exc)}"
        return
    ss.notice = f"Removed '{source}' from {name}." if removed else f"'{source}' was already gone."


def remove_failed_file(app, name: str) -> None:
    from kb_qa.paths import safe_join

    ss = st.session_state
    source = ss.get("failed_to_remove")
    if not source:
        return
    try:
        path = safe_join(app.docs_root / name, source)
        path.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
        ss.kb_error = f"Removing '{source}' failed: {error_text(exc)}"
        return
    ss.notice = f"Deleted the file '{source}' from {app.docs_root / name}."


def rebuild(name: str) -> None:
    shared_jobs().submit_rebuild(name)


def delete_kb(app, name: str) -> None:
    ss = st.session_state
    try:
        app.delete_kb(name)
    except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
        ss.kb_error = f"Deleting '{name}' failed: {error_text(exc)}"
        return
    ss.ask_kbs = [n for n in ss.ask_kbs if n != name]
    ss.manage_kb = None
    ss.notice = f"Deleted knowledge base '{name}'."


# ======================================================================================================
# The page
# ======================================================================================================
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


# Streamlit runs this file as "__main__". The parser's worker process (kb_qa.ingest.worker, started with spawn)
# re-imports the parent's __main__ file as "__mp_main__" before it serves: without this guard it would draw the whole
# page there, load the models a second time and hold the first upload until the parse time limit.
if __name__ == "__main__":
    main()
