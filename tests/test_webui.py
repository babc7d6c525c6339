"""The Streamlit page (webui.py) and its pure helpers (kb_qa/webui/support.py).

Helpers: untrusted text is escaped so Streamlit's Markdown shows it verbatim and inert. Page: driven through
streamlit.testing.v1.AppTest (webui.py runs in this process, no browser; tests/test_webui_browser.py has the real
browser) with the real embedding model and, where it says so, the tiny random ChatGLM2 checkpoint.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiny_chatglm2 import tiny_dir, tiny_tokenizer_model  # noqa: F401 - pytest fixtures

from kb_qa.webui.support import (
    LiteralStream,
    Turn,
    conversation_markdown,
    document_rows,
    fence,
    friendly_error,
    history_pairs,
    human_size,
    md_literal,
    outcome_counts,
    outcome_rows,
    outside_folder,
    source_title,
)

JOINER = "\u2060"


def unescape(markdown: str) -> str:
    """What a CommonMark renderer shows for md_literal's output (its escapes, hard breaks and &nbsp; undone)."""
    out, i = [], 0
    markdown = markdown.replace("  \n", "\n").replace("&nbsp;", " ").replace(JOINER, "")
    while i < len(markdown):
        if markdown[i] == "\\" and i + 1 < len(markdown) and markdown[i + 1] in string.punctuation:
            out.append(markdown[i + 1])
            i += 2
        else:
            out.append(markdown[i])
            i += 1
    return "".join(out)


@pytest.mark.parametrize("text", [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "![tracker](http://203.0.113.9/pixel.png)",
    "[click](javascript:alert(1))",
    ":red[colour] $x^2$ `code` **bold** ~~s~~ | a | b |",
    "# heading\n- item\n1. item\n> quote",
])
def test_markup_characters_are_all_escaped(text):
    escaped = md_literal(text)
    for ch in set(text) & set(string.punctuation):
        assert ch not in escaped.replace("\\" + ch, "").replace("&nbsp;", "")
    assert unescape(escaped) == text


def test_autolink_literals_are_broken():
    escaped = md_literal("see http://203.0.113.9/x, www.example.com or a@b.org")
    assert "http\\:" + JOINER + "\\/" in escaped
    assert "www" + JOINER + "\\." in escaped
    assert "\\@" + JOINER in escaped


def test_lines_and_indentation_survive():
    escaped = md_literal("a\n\n    b\tc")
    assert escaped == "a  \n  \n&nbsp;&nbsp;&nbsp;&nbsp;b\tc"


def test_control_characters_are_replaced():
    assert md_literal("a\x00b\x1bc\r\n") == "a\ufffdb\ufffdc  \n"


@given(st.text(), st.lists(st.integers(min_value=0, max_value=50), max_size=6))
def test_streaming_in_any_pieces_equals_escaping_whole(text, cuts):
    bounds = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)], strict=True)]
    escaper = LiteralStream()
    assert "".join(escaper.feed(p) for p in pieces) == md_literal(text)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs"))))
def test_round_trip(text):
    assert unescape(md_literal(text)) == text.replace(JOINER, "")


def test_fence_cannot_be_closed_from_inside():
    block = fence("a ``` b ```` c")
    assert block.startswith("`````text\n") and block.endswith("\n`````")


def test_rows_and_labels():
    doc = SimpleNamespace(source="a.md", n_chunks=3, size=2048, updated_at=0)
    assert document_rows([doc])[0]["chunks"] == 3 and document_rows([doc])[0]["size"] == "2.0 KiB"
    assert human_size(10) == "10 B" and human_size(None) == "-"
    outcomes = [SimpleNamespace(source="a.md", status="added", chunks=3, reason=None),
                SimpleNamespace(source="b.exe", status="failed", chunks=0, reason="unsupported file type")]
    rows = outcome_rows(outcomes)
    assert rows[1]["result"] == "failed" and rows[1]["note"] == "unsupported file type"
    assert outcome_counts(outcomes) == "1 added, 1 failed"
    src = SimpleNamespace(kb="k", source="a.pdf", score=0.8123, label=lambda: "a.pdf p.2")
    assert source_title(1, src) == "[1] a.pdf p.2 · k · score 0.81"


def test_documents_from_outside_the_folder_are_named(tmp_path):
    inside = SimpleNamespace(source="a.md", origin=str(tmp_path / "kb" / "a.md"))
    outside = SimpleNamespace(source="b.md", origin=str(tmp_path / "elsewhere" / "b.md"))
    linked = SimpleNamespace(source="c.md", origin=None)
    assert outside_folder([inside, outside, linked], tmp_path / "kb") == ["b.md"]


def test_history_keeps_the_last_rounds_of_completed_turns():
    turns = [Turn("q1", "a1"), Turn("q2", error="boom"), Turn("q3", "a3"), Turn("q4", "a4")]
    assert history_pairs(turns, 2) == [("q3", "a3"), ("q4", "a4")]
    assert history_pairs(turns, 0) == []


def test_export_is_inert_markdown():
    src = SimpleNamespace(kb="k", source="evil.md", score=0.5, text="```\n![x](http://203.0.113.9/p.png)\n```",
                          label=lambda: "evil.md")
    md = conversation_markdown([Turn("<b>q</b>", "![a](http://203.0.113.9/a.png)", [src], "llm", ["k"])], now=0)
    outside, _, rest = md.partition("````text")  # the passage is fenced with a longer fence than the one inside
    assert rest and "![" not in outside.replace("\\!\\[", "") and "<b>" not in outside
    assert rest.rstrip().endswith("````")


def test_friendly_errors():
    import torch

    from kb_qa.paths import InvalidName
    from kb_qa.store import KnowledgeBaseBusy

    assert "busy" in friendly_error(KnowledgeBaseBusy("locked"))
    assert "ran out of memory" in friendly_error(torch.OutOfMemoryError("CUDA out of memory"))
    assert friendly_error(ValueError("x")) == "ValueError: x"  # not a user error: its class is named
    assert friendly_error(InvalidName("bad name 'a/b'")) == "bad name 'a/b'"  # a user error: its message
    lookalike = type("KnowledgeBaseBusy", (RuntimeError,), {})("locked")  # matched by class, not by name
    assert "busy" not in friendly_error(lookalike)


# ==========================================================================================================
# The page itself, through streamlit.testing.v1.AppTest (runs webui.py in this process, no browser).
# ==========================================================================================================
REPO = Path(__file__).resolve().parents[1]
WEBUI = REPO / "webui.py"
DOCS = REPO / "tests" / "fixtures" / "docs"
CHAT, KBS = "chat", "kbs"
HOSTILE = (b"# Zebra lantern\n\nThe zebra-lantern protocol rotates its keys every 42 minutes.\n"
           b"<script>window.__pwned = 1</script> <img src=x onerror=\"window.__pwned = 2\">\n"
           b"![tracker](http://203.0.113.77/pixel.png) [click](javascript:alert(1)) :red[red] $x$\n")


@pytest.fixture
def page_env(tmp_path, monkeypatch):
    """Settings for the page on tmp folders (via the environment, as a user would set them); caches cleared so
    each test gets its own App."""
    import streamlit

    monkeypatch.setenv("KB_QA_PATHS__KNOWLEDGE_BASE_ROOT", str(tmp_path / "knowledge_base"))
    monkeypatch.setenv("KB_QA_PATHS__VECTOR_STORE_ROOT", str(tmp_path / "vector_store"))
    monkeypatch.setenv("KB_QA_LLM__MODEL_PATH", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    streamlit.cache_resource.clear()
    yield tmp_path
    streamlit.cache_resource.clear()


@pytest.fixture
def tiny_llm_env(page_env, tiny_dir, monkeypatch):  # noqa: F811 - the imported fixture
    monkeypatch.setenv("KB_QA_LLM__MODEL_PATH", str(tiny_dir))
    monkeypatch.setenv("KB_QA_LLM__DEVICE", "cpu")
    monkeypatch.setenv("KB_QA_LLM__MAX_NEW_TOKENS", "24")  # the random model rarely stops on its own
    return page_env


def open_page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(WEBUI), default_timeout=120)
    return checked(at.run())


def checked(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def button(at, label):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r} among {[b.label for b in at.button]}"
    return matches[0]


def view(at, name):
    return checked(at.segmented_control(key="view").set_value(name).run())


def create_kb(at, name):
    view(at, KBS)
    at.text_input(key="new_kb_name").input(name)
    return checked(button(at, "Create").click().run())


def upload(at, kb, files):
    """files: [(name, bytes)] into the knowledge base being managed (`kb`); returns once the background job is
    done and its report is drawn."""
    at.selectbox(key="manage_kb").set_value(kb)
    checked(at.run())
    at.file_uploader(key="uploads").set_value([(n, data, "application/octet-stream") for n, data in files])
    checked(button(at, f"Add to {kb}").click().run())
    return wait_for_jobs(at)


def wait_for_jobs(at, timeout_s=120):
    """Rerun the page until no ingestion job is running (AppTest does not run timed fragments by itself)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        checked(at.run())
        if not at.get("progress"):
            return at
        assert time.monotonic() < deadline, "the ingestion job never finished"
        time.sleep(0.2)


def ask(at, question, kbs=None):
    view(at, CHAT)
    if kbs is not None:
        at.multiselect(key="ask_kbs").set_value(kbs)
        checked(at.run())
    return checked(at.chat_input(key="question").set_value(question).run())


def texts(elements):
    return [unescape(e.value) for e in elements]


def passage_text(expander):
    """A source expander's passage as the reader sees it (escapes undone, highlight directives taken off)."""
    return " ".join(re.sub(r":orange-background\[([^\]]*)\]", r"\1", unescape(m.value)) for m in expander.markdown)


def fixture_file(name):
    return name, (DOCS / name).read_bytes()


def test_create_upload_ask_remove_switch(tiny_llm_env):
    at = open_page()
    assert "Choose a knowledge base" in " ".join(texts(at.info))
    sidebar = " ".join(texts(at.sidebar.caption))
    assert "chatglm2" in sidebar.lower() or "glm" in sidebar.lower(), sidebar  # the tiny model is loaded

    create_kb(at, "manuals")
    assert at.session_state.ask_kbs == ["manuals"] and at.session_state.manage_kb == "manuals"
    upload(at, "manuals", [fixture_file("sample.pdf"), fixture_file("sample.docx"), fixture_file("truncated.pdf"),
                           ("copy-of-sample.pdf", (DOCS / "sample.pdf").read_bytes())])
    results = at.dataframe[0].value
    status = dict(zip(results["file"], results["result"], strict=True))
    assert status == {"sample.pdf": "added", "sample.docx": "added", "truncated.pdf": "failed",
                      "copy-of-sample.pdf": "added"}, status
    notes = dict(zip(results["file"], results["note"], strict=True))
    assert "PDF" in notes["truncated.pdf"] and "same content" in notes["copy-of-sample.pdf"]
    documents = at.dataframe[1].value
    chunks = dict(zip(documents["document"], documents["chunks"], strict=True))
    state = dict(zip(documents["document"], documents["status"], strict=True))
    assert {d for d, s in state.items() if s == "indexed"} == {"sample.pdf", "sample.docx", "copy-of-sample.pdf"}
    assert chunks["sample.pdf"] >= 2
    assert state["truncated.pdf"] == "Not indexed"  # the failed upload is on disk: listed, with its reason
    assert "PDF" in dict(zip(documents["document"], documents["note"], strict=True))["truncated.pdf"]

    ask(at, "What does the quick brown fox jump over?")
    user, assistant = at.chat_message
    assert user.name == "user" and assistant.name == "assistant"
    assert assistant.markdown[0].value.strip()  # the model's (random) answer, streamed
    labels = [unescape(e.label) for e in assistant.expander]
    assert labels and any("sample" in label for label in labels), labels
    passage = " ".join(passage_text(e) for e in assistant.expander)
    assert "quick brown fox" in passage

    # a second round: both turns stay on the page; the first round goes to the model as history
    import kb_qa.qa.chain

    seen, real = {}, kb_qa.qa.chain.QAChain.stream_answer

    def spy(chain, question, history=(), kbs=None, **kwargs):
        seen.update(question=question, history=list(history))
        return real(chain, question, history, kbs, **kwargs)

    first = at.session_state.conversation.turns[0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kb_qa.qa.chain.QAChain, "stream_answer", spy)
        ask(at, "And in Chinese?")
    assert seen["question"] == "And in Chinese?"
    assert seen["history"] == [("What does the quick brown fox jump over?", first.answer)] and first.answer
    assert len(at.chat_message) == 4 and len(at.session_state.conversation.turns) == 2

    # remove a document
    view(at, KBS)
    at.selectbox(key="doc_to_remove").set_value("sample.docx")
    checked(button(at, "Remove document").click().run())
    assert (page_dir(tiny_llm_env) / "manuals" / "sample.docx").exists()  # not before it is confirmed
    assert "sample.docx" in " ".join(texts(at.warning))
    checked(button(at, "Yes, remove").click().run())
    assert set(at.dataframe[-1].value["document"]) == {"sample.pdf", "copy-of-sample.pdf", "truncated.pdf"}
    assert dict(zip(at.dataframe[-1].value["document"], at.dataframe[-1].value["status"],
                    strict=True))["truncated.pdf"] == "Not indexed"  # still listed, until removed:
    assert not (page_dir(tiny_llm_env) / "manuals" / "sample.docx").exists()

    # a second knowledge base; ask only it
    create_kb(at, "notes")
    upload(at, "notes", [("kettle.md", b"# Kettles\n\nThe solar kettle boils a litre in twelve minutes.\n")])
    assert set(at.session_state.ask_kbs) == {"manuals", "notes"}
    ask(at, "How long does the solar kettle take?", kbs=["notes"])
    newest = at.chat_message[-1]
    assert newest.expander and all("notes" in unescape(e.label) and "kettle.md" in unescape(e.label)
                                   for e in newest.expander)

    # rebuild re-embeds the folder's documents; delete removes the knowledge base
    view(at, KBS)
    at.selectbox(key="manage_kb").set_value("manuals")
    checked(at.run())
    at.selectbox(key="failed_to_remove").set_value("truncated.pdf")
    checked(button(at, "Remove file").click().run())  # ... and removable
    assert not (page_dir(tiny_llm_env) / "manuals" / "truncated.pdf").exists()
    checked(button(at, "Rebuild index").click().run())
    wait_for_jobs(at)
    assert set(at.dataframe[-1].value["document"]) == {"sample.pdf", "copy-of-sample.pdf"}
    assert "manuals: 2 added" in " ".join(texts(at.success))  # the rebuild's report
    at.checkbox(key="confirm_delete_manuals").check()
    checked(at.run())
    checked(button(at, "Delete knowledge base").click().run())
    assert at.selectbox(key="manage_kb").options == ["notes"]
    assert at.session_state.ask_kbs == ["notes"]


def page_dir(tmp_path):
    return tmp_path / "knowledge_base"


def test_retrieval_only_clear_and_export(page_env):
    at = open_page()
    assert "retrieval-only" in " ".join(texts(at.sidebar.caption))
    create_kb(at, "kb")
    upload(at, "kb", [fixture_file("sample.md")])
    ask(at, "What grounds answers in documents?")
    assistant = at.chat_message[1]
    shown = unescape(assistant.markdown[0].value)  # the answer bubble's text (later ones are the sources')
    assert "Retrieval only" in shown
    assert assistant.expander and "sample.md" in unescape(assistant.expander[0].label)
    passage = re.sub(r":orange-background\[([^\]]*)\]", r"\1", unescape(assistant.expander[0].markdown[0].value))
    assert passage.strip() and passage.strip()[:40] not in shown  # the passage is shown once: as its source

    exported = at.session_state.conversation.turns
    from kb_qa.webui.support import conversation_markdown

    md = conversation_markdown(exported)
    assert "What grounds answers in documents" in md.replace("\\", "") and "sample.md" in md.replace("\\", "")
    download = at.get("download_button")[0]
    assert not download.proto.disabled
    checked(at.button(key="new_conversation_top").click().run())
    assert not at.chat_message and at.session_state.conversation.turns == []


def test_sidebar_settings_reach_the_chain(page_env, monkeypatch):
    seen = {}

    def fake_stream_answer(chain, question, history=(), kbs=None, *, overrides=None, files=None, on_sources=None):
        from kb_qa.schema import Answer

        seen.update(question=question, kbs=kbs, history=list(history), overrides=dict(overrides), llm=chain.llm)
        yield "ok"
        yield Answer(question, "ok", [], mode="no-answer")

    import kb_qa.qa.chain

    monkeypatch.setattr(kb_qa.qa.chain.QAChain, "stream_answer", fake_stream_answer)
    at = open_page()
    create_kb(at, "kb")
    view(at, CHAT)
    at.slider(key="top_k").set_value(7)
    at.slider(key="score_threshold").set_value(0.25)
    at.toggle(key="hybrid").set_value(False)
    at.slider(key="history_rounds").set_value(1)
    checked(at.run())
    ask(at, "first")
    ask(at, "second")
    assert seen["kbs"] == ["kb"] and seen["question"] == "second" and seen["history"] == [("first", "ok")]
    assert seen["overrides"]["retrieval.top_k"] == 7 and seen["overrides"]["retrieval.keyword"] is False
    assert seen["overrides"]["retrieval.score_threshold"] == 0.25 and seen["overrides"]["qa.history_rounds"] == 1


def test_errors_are_messages_and_the_page_keeps_working(page_env, monkeypatch):
    import torch

    import kb_qa.app
    import kb_qa.qa.chain
    from kb_qa.store import KnowledgeBaseBusy

    monkeypatch.setenv("KB_QA_INGEST__MAX_FILE_MB", "0.001")  # 1 KiB
    at = open_page()
    create_kb(at, "kb")
    upload(at, "kb", [("../../escape.txt", b"tiny but fine"), ("big.txt", b"x" * 4096), ("tool.exe", b"MZ"),
                      fixture_file("truncated.pdf"), ("empty.txt", b"")])
    results = at.dataframe[0].value
    status = dict(zip(results["file"], results["result"], strict=True))
    assert status["escape.txt"] == "added", status  # stored under its sanitised name, inside the KB folder
    assert (page_env / "knowledge_base" / "kb" / "escape.txt").is_file()
    assert not (page_env / "escape.txt").exists() and not (page_env / "knowledge_base" / "escape.txt").exists()
    notes = dict(zip(results["file"], results["note"], strict=True))
    assert status["big.txt"] == "failed" and "limit" in notes["big.txt"]
    assert status["tool.exe"] == "failed" and "unsupported" in notes["tool.exe"]
    assert status["truncated.pdf"] == "failed" and status["empty.txt"] == "failed"
    assert at.warning  # the summary says some files failed

    def busy(*args, **kwargs):
        raise KnowledgeBaseBusy("knowledge base 'kb' is busy: another ingest or edit is running (waited 10 s)")

    monkeypatch.setattr(kb_qa.app.App, "add_uploads", busy)
    upload(at, "kb", [("more.txt", b"more text")])
    results = at.dataframe[0].value
    assert list(results["file"]) == ["more.txt"] and list(results["result"]) == ["failed"]
    assert "busy" in results["note"][0]

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # pragma: no cover

    original = kb_qa.qa.chain.QAChain.stream_answer
    monkeypatch.setattr(kb_qa.qa.chain.QAChain, "stream_answer", oom)
    ask(at, "anything?")
    assert "ran out of memory" in " ".join(texts(at.error))
    monkeypatch.setattr(kb_qa.qa.chain.QAChain, "stream_answer", original)
    ask(at, "What is in escape.txt?")  # the page still answers afterwards
    assert len(at.chat_message) == 4 and at.chat_message[-1].expander


def test_sessions_share_one_app_and_keep_their_own_history(page_env, monkeypatch):
    import kb_qa.llm.factory

    loads = []
    real = kb_qa.llm.factory.resolve_llm
    monkeypatch.setattr(kb_qa.llm.factory, "resolve_llm", lambda *a, **k: loads.append(1) or real(*a, **k))
    first = open_page()
    create_kb(first, "kb")
    upload(first, "kb", [fixture_file("sample.txt")])
    ask(first, "What is retrieval augmented generation?")
    second = open_page()
    assert second.session_state.ask_kbs == ["kb"]  # the knowledge base is shared ...
    assert not second.chat_message and second.session_state.conversation.turns == []  # ... the conversation is not
    ask(second, "Another question")
    assert len(first.session_state.conversation.turns) == 1 and len(second.session_state.conversation.turns) == 1
    assert len(loads) == 1  # the model (here: the retrieval-only decision) is made once per process


def test_hostile_document_is_rendered_inert(page_env):
    at = open_page()
    create_kb(at, "kb")
    upload(at, "kb", [("hostile <img src=x onerror=alert(1)>.md", HOSTILE)])
    ask(at, "What does the zebra-lantern protocol rotate?")
    assistant = at.chat_message[1]
    assert assistant.expander
    rendered = [m for m in at.main.get("markdown")] + [m for m in at.sidebar.get("markdown")]
    rendered += list(at.get("caption")) + list(at.error) + list(at.success) + list(at.warning)
    labels = [e.label for e in assistant.expander]
    assert all(not m.proto.allow_html for m in rendered)
    for body in [m.value for m in rendered] + labels:
        live = re.sub(r"\\[!-/:-@\[-`{-~]", "", body)  # the markup left once escaped characters are taken out
        for needle in ("<script", "<img", "![", "](", ":red[", "$x$", "http:/"):
            assert needle not in live, (needle, body)
    passage = " ".join(unescape(m.value) for e in assistant.expander for m in e.markdown)
    assert "<script>" in passage and "![tracker](http://203.0.113.77/pixel.png)" in passage  # as plain text
    for module in [WEBUI, *sorted((REPO / "kb_qa" / "webui").glob("*.py"))]:  # the entry point and the page
        source = module.read_text(encoding="utf-8")
        assert "unsafe_allow_html" not in source.replace("no unsafe_allow_html", ""), module
        assert "st.html" not in source and "components.v1" not in source, module


def test_kb_creation_options_are_recorded_and_a_model_mismatch_is_explained(page_env):
    from kb_qa.kb_options import KbOptions, read_options
    from kb_qa.store import KnowledgeBase

    def create(name, **fields):
        view(at, KBS)
        at.text_input(key="new_kb_name").input(name)
        for key, value in fields.items():
            widget = at.text_input(key=key) if key == "new_kb_embedding_model" else at.number_input(key=key)
            widget.set_value(value)
        return checked(button(at, "Create").click().run())

    def recorded(name):
        kb = KnowledgeBase.open(page_env / "vector_store", name)
        try:
            return read_options(kb)
        finally:
            kb.close()

    at = open_page()
    create("small", new_kb_chunk_size=120, new_kb_chunk_overlap=10)
    assert recorded("small") == KbOptions(120, 10, "all-MiniLM-L6-v2")  # stored with the KB
    assert any("Created with chunks of 120 characters (overlap 10)" in t for t in texts(at.caption))
    assert not at.error and not at.warning

    create("bge", new_kb_embedding_model="BAAI/bge-small-zh-v1.5")
    assert recorded("bge") == KbOptions(300, 50, "BAAI/bge-small-zh-v1.5")
    assert any("KB_QA_EMBEDDING__MODEL=BAAI/bge-small-zh-v1.5" in t for t in texts(at.error))  # at creation
    assert any("created for the embedding model 'BAAI/bge-small-zh-v1.5'" in t for t in texts(at.warning))
    upload(at, "bge", [("kettle.md", b"# Kettle\n\nThe solar kettle boils water in twelve minutes.\n")])
    report = " ".join(texts(at.warning))
    assert "bge: 1 failed" in report  # the upload is refused with the reason, nothing is embedded
    notes = " ".join(str(v) for v in at.dataframe[0].value["note"])  # the report's per-file reasons
    assert "KB_QA_EMBEDDING__MODEL=BAAI/bge-small-zh-v1.5" in notes

    create("bad", new_kb_chunk_size=100, new_kb_chunk_overlap=100)
    assert any("must be smaller than the chunk size" in t for t in texts(at.error))
    assert "bad" not in at.selectbox(key="manage_kb").options


def test_a_full_disk_is_one_message_and_the_stored_conversation_is_kept(page_env, monkeypatch):
    """A full disk while the page saves a conversation: one clear message, the script goes on, the conversation
    stays in the page and the version on disk stays whole; once there is space the next answer saves it all."""
    import errno
    import os

    import kb_qa.qa.chain
    from kb_qa.conversations import ConversationStore

    def fake_stream_answer(chain, question, history=(), kbs=None, *, overrides=None, files=None, on_sources=None):
        from kb_qa.schema import Answer

        yield "ok"
        yield Answer(question, "ok", [], mode="no-answer")

    monkeypatch.setattr(kb_qa.qa.chain.QAChain, "stream_answer", fake_stream_answer)
    at = open_page()
    create_kb(at, "kb")
    ask(at, "first")
    assert not at.error
    owner, conv_id = at.session_state.owner, at.session_state.conversation.id
    store = ConversationStore(page_env / "vector_store" / ".webui")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as full:
        full.setattr(os, "fsync", disk_full)  # every fsync fails: the disk stays full for the whole question
        ask(at, "second")  # checked(): no exception reached the script
        errors = texts(at.error)
        assert len(errors) == 1, errors
        assert errors[0].startswith("Saving the conversation failed: No space left on device"), errors
        assert "intact" in errors[0] and "Nothing on this page is lost" in errors[0]
    assert [t.question for t in at.session_state.conversation.turns] == ["first", "second"]  # still in the page
    assert [t.question for t in store.load(owner, conv_id).turns] == ["first"]  # the stored one, whole
    assert not list(store.root.rglob(".tmp-*"))
    ask(at, "third")  # space again: no message, and everything the page kept is stored
    assert not at.error
    assert [t.question for t in store.load(owner, conv_id).turns] == ["first", "second", "third"]
