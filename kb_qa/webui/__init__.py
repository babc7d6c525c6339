"""The web page (Streamlit): chat with your knowledge bases, upload and manage documents. Entry point: webui.py
(`streamlit run webui.py`), which calls `kb_qa.webui.page.main()`.

Calls kb_qa in-process (kb_qa.app.App) and holds no business logic: uploads, ingestion, retrieval and answering
all live in kb_qa; this package lays them out. One App (and so one embedding model and one LLM), one ingestion
worker (kb_qa.jobs) and one conversation store (kb_qa.conversations) per process, shared by every browser session
through st.cache_resource. Uploads and rebuilds run in that worker, so clicks, reruns, reloads and other tabs never
cut them off; the page only shows their progress. Conversations, ratings and settings are JSON files under
<paths.vector_store_root>/.webui/, keyed by a random key kept in the URL (`?u=...&c=...`) or by a typed name.

Modules, each self-contained (Streamlit calls only in the first group):
  page        main(): the order a run draws things in, the view switch, messages
  shared      the process-wide App / worker / store, the translation call T, show_error
  session     a browser session's owner, conversation and settings; saving them (a failed save is a message)
  sidebar     language, conversations, KBs to ask, answer settings, ratings download, models' state
  chat        the conversation, asking, streaming, Stop, rating / regenerate / copy
  sources     the source viewer dialog
  kbs         the knowledge-base view: create, upload, documents, remove, rebuild, delete
  progress    a running job's progress (redrawn on the worker's change events) and the last job's report
  ---
  support     pure helpers: md_literal (untrusted text shown verbatim), rows, export, highlight_terms, errors
  markdown    safe_markdown: model Markdown re-emitted from a filtered parse
  text        the page's words in English and Chinese; a question's language

Untrusted text (document passages, file names, model output) is shown through support.md_literal (escaped
verbatim), markdown.safe_markdown or st.text, never as raw HTML (no unsafe_allow_html anywhere), so nothing in a
document or an answer can run script or make the browser fetch anything. .streamlit/config.toml turns usage
statistics off. This __init__ imports nothing, so the pure helpers load without Streamlit.
"""
