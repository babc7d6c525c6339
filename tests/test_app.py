"""The composition root: parts injected through the constructor, one LLM slot with one generation lock and a reason
when there is no model, and the document use cases every front end shares (remove deletes the KB folder's file,
delete_kb waits at most its lock timeout, Ctrl-C during ingest says what was committed)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from kb_qa.app import App, IngestInterrupted
from kb_qa.errors import EXIT_INTERRUPTED, KbQaError, UnavailableError, UsageError


class SlowLLM:
    """A bare LangChain-like LLM that records overlapping calls: `overlap` > 1 means two generations ran at once."""

    def __init__(self):
        self.active = 0
        self.overlap = 0
        self.guard = threading.Lock()

    def stream(self, prompt, **kwargs):
        with self.guard:
            self.active += 1
            self.overlap = max(self.overlap, self.active)
        try:
            for piece in ("a", "b", "c"):
                time.sleep(0.02)
                yield piece
        finally:
            with self.guard:
                self.active -= 1

    def invoke(self, prompt, **kwargs):
        return "".join(self.stream(prompt))


def test_parts_are_injected_through_the_constructor(settings, embedder):
    fake_llm = SlowLLM()
    app = App(settings, embeddings=embedder, llm=fake_llm)
    assert app.embeddings is embedder and app.embeddings_loaded
    assert app.llm is not None and app.llm.langchain_llm.invoke("q") == "abc"
    assert app.llm_status().loaded
    assert app.retriever is app.retriever  # one retriever per app
    assert app.chain().llm is app.llm


def test_no_model_configured_says_why(settings, embedder):
    app = App(settings, embeddings=embedder)
    status = app.llm_status()
    assert not status.loaded and not status.configured and "model_path" in status.reason
    assert app.llm is None
    with pytest.raises(UnavailableError, match="no language model"):
        app.stream_chat("你好")


def test_a_model_that_fails_to_load_is_a_reason_not_a_crash(settings, embedder, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    s = settings.model_copy(update={"llm": settings.llm.model_copy(update={"model_path": str(broken)})})
    app = App(s, embeddings=embedder)
    assert app.llm_status().state == "not-loaded"
    assert app.llm is None
    status = app.llm_status()
    assert status.state == "unavailable" and status.configured and "loading the model failed" in status.reason
    app.reset_llm()
    assert app.llm_status().state == "not-loaded"  # a retry is possible


def test_every_generation_takes_the_one_lock(settings, embedder):
    fake = SlowLLM()
    app = App(settings, embeddings=embedder, llm=fake)
    lc = app.llm.langchain_llm
    threads = [threading.Thread(target=lambda: list(lc.stream("q"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.overlap == 1
    assert not app.generation_lock.locked()
    pieces = lc.stream("q")
    next(pieces)
    assert app.generation_lock.locked()  # held while an answer streams
    pieces.close()
    assert not app.generation_lock.locked()  # and released when the reader leaves early


def test_the_local_generator_serialises_on_the_apps_lock(settings, embedder, monkeypatch):
    """resolve_llm hands the App's lock to the ChatGLM2 generator, so the handle is not wrapped twice."""
    from kb_qa.llm import factory

    made = {}

    def fake_resolve(s, generation_lock=None, **_):
        made["lock"] = generation_lock
        return SimpleNamespace(generator=SimpleNamespace(lock=generation_lock), describe=lambda: "fake"), "fake"

    monkeypatch.setattr(factory, "retrieval_only_reason", lambda s: None)
    monkeypatch.setattr(factory, "resolve_llm", fake_resolve)
    app = App(settings, embeddings=embedder)
    handle = app.llm
    assert made["lock"] is app.generation_lock and handle.generator.lock is app.generation_lock
    assert app.llm_status().loaded


def _docs(app, name, files):
    folder = app.docs_root / name
    folder.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (folder / rel).write_text(text, encoding="utf-8")
    return folder


def test_remove_deletes_the_kb_folders_file_so_reingest_does_not_bring_it_back(app):
    folder = _docs(app, "kb", {"a.txt": "龙井茶产于杭州。", "b.txt": "The Eiffel Tower is in Paris."})
    assert not app.ingest("kb", [folder]).failed
    report = app.remove_documents("kb", ["a.txt", "missing.txt"])
    assert report.removed == ["a.txt"] and report.missing == ["missing.txt"]
    assert not (folder / "a.txt").exists() and (folder / "b.txt").exists()
    app.ingest("kb", [folder])
    assert [d.source for d in app.kb("kb").documents()] == ["b.txt"]


def test_remove_keeps_files_outside_the_kb_folder(app, tmp_path):
    outside = tmp_path / "mine"
    outside.mkdir()
    (outside / "c.txt").write_text("我的文件，不要删除。", encoding="utf-8")
    app.ingest("kb", [outside])
    assert app.remove_document("kb", "c.txt")
    assert (outside / "c.txt").exists() and app.kb("kb").documents() == []


def test_a_bad_path_removes_nothing(app):
    folder = _docs(app, "kb", {"a.txt": "龙井茶产于杭州。"})
    app.ingest("kb", [folder])
    with pytest.raises(UsageError):
        app.remove_documents("kb", ["a.txt", "../../etc/passwd"])
    assert (folder / "a.txt").exists() and len(app.kb("kb").documents()) == 1


def test_delete_kb_waits_at_most_its_lock_timeout(app):
    folder = _docs(app, "kb", {"a.txt": "龙井茶产于杭州。"})
    app.ingest("kb", [folder])
    holding, release = threading.Event(), threading.Event()

    def hold():
        with app.kb("kb").writer():
            holding.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    holding.wait(5)
    started = time.perf_counter()
    try:
        with pytest.raises(Exception, match="busy"):
            app.delete_kb("kb", lock_timeout_s=0.2)
    finally:
        release.set()
        t.join()
    assert time.perf_counter() - started < 3
    app.delete_kb("kb")
    assert "kb" not in app.kb_names()


def test_ctrl_c_during_ingest_reports_what_was_committed(app):
    app.settings.ingest.commit_every_chunks = 1  # one commit per file
    folder = _docs(app, "kb", {f"{i}.txt": f"第{i}份文件：龙井茶产于杭州西湖。" for i in range(4)})
    seen = []

    def interrupt_after_first(outcome):
        seen.append(outcome)
        if len(seen) == 1:
            raise KeyboardInterrupt

    with pytest.raises(IngestInterrupted) as info:
        app.ingest("kb", [folder], on_file=interrupt_after_first)
    err = info.value
    assert isinstance(err, KbQaError) and err.exit_code == EXIT_INTERRUPTED == 130
    assert [o.source for o in err.committed] == ["0.txt"] and "1 document(s)" in str(err)
    assert [d.source for d in app.kb("kb").documents()] == ["0.txt"]  # stored; the rest not
