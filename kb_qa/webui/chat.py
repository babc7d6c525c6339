"""The chat view: the conversation's turns (answer, notes, sources, rating / regenerate / copy), the question box,
and asking: the answer streams into its bubble, and Stop (or any click) keeps what was generated and its sources."""

from __future__ import annotations

import logging
import threading
import time

import streamlit as st

from kb_qa.conversations import ConversationStore, SourceRecord, Turn
from kb_qa.jobs import is_expected
from kb_qa.webui.markdown import safe_markdown
from kb_qa.webui.session import new_conversation, request_overrides, save_conversation, save_failures, saved
from kb_qa.webui.shared import T, shared_app
from kb_qa.webui.support import (
    conversation_markdown,
    friendly_error,
    highlight_terms,
    history_pairs,
    md_literal,
    source_title,
)
from kb_qa.webui.text import answer_note, question_language, translate

log = logging.getLogger("kb_qa.webui")

STORING_WAIT_S = 10.0  # how long a run waits for the answer a stopped run is still storing (normally ms)


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
    def save() -> None:
        saved(lambda: store.save(owner, conversation), failures)

    try:
        save()
        st.query_params["c"] = conversation.id
        stream_turn(turn, len(conversation.turns) - 1, history, kbs, overrides, save=save)
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
