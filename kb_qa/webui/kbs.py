"""The knowledge-base view: create a KB with its options, upload documents (ingested by the background worker),
the document list (indexed, and files that failed with their reason), chunks, remove with confirmation, rebuild,
delete. Callbacks run before the page is drawn, so they may set widget state."""

from __future__ import annotations

import math

import streamlit as st

from kb_qa.jobs import error_text
from kb_qa.kb_options import create_with_options, model_mismatch, read_options, validated
from kb_qa.webui.progress import job_progress
from kb_qa.webui.shared import T, shared_jobs, show_error
from kb_qa.webui.support import document_rows, md_literal, outside_folder, plural, unindexed_files


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
        configured = app.settings.embedding.model
        if info.embedding_model and info.embedding_model != configured:  # vectors of another model are stored
            st.warning(md_literal(
                f"{name} was built with the embedding model {info.embedding_model}; this page uses "
                f"{configured}. Questions and uploads fail until you rebuild it (Rebuild index "
                f"re-embeds every document with {configured}) or restart the page with "
                f"KB_QA_EMBEDDING__MODEL={info.embedding_model}."), icon=":material/warning:")
        elif mismatch := model_mismatch(name, options, configured):  # created for another model, still empty
            st.warning(md_literal(capitalised(mismatch)), icon=":material/warning:")

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
        kb = create_with_options(app, name, options)
    except Exception as exc:  # noqa: BLE001 - shown as a message; the page goes on
        ss.kb_error = f"Creating '{name}' failed: {error_text(exc)}"
        return
    ss.manage_kb = name
    if name not in ss.ask_kbs:
        ss.ask_kbs = [*ss.ask_kbs, name]
    ss.notice = f"Created knowledge base '{name}'."
    if mismatch := model_mismatch(kb.name, options, app.settings.embedding.model):
        ss.kb_error = capitalised(mismatch)


def capitalised(line: str) -> str:
    return line[:1].upper() + line[1:]


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
