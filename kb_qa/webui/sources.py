"""The source viewer: one cited passage with the question's terms highlighted, where it is, and the original file."""

from __future__ import annotations

import logging

import streamlit as st

from kb_qa.conversations import SourceRecord
from kb_qa.webui.shared import T
from kb_qa.webui.support import highlight_terms, md_literal

log = logging.getLogger("kb_qa.webui")


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
