"""The web page's parts that need no page: the background ingestion worker (kb_qa.jobs), safe Markdown for answers
(kb_qa.webui.markdown), conversation / rating storage (kb_qa.conversations), question language (kb_qa.webui.text).
"""

from __future__ import annotations

import json
import re
import threading
import zipfile
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kb_qa.conversations import Conversation, ConversationStore, SourceRecord, Turn, eval_bench, eval_bench_zip
from kb_qa.jobs import DONE, FAILED, JobRunner, runner_for
from kb_qa.webui.markdown import safe_link_target, safe_markdown
from kb_qa.webui.support import highlight_terms, md_literal, query_terms
from kb_qa.webui.text import answer_note, question_language

REMOTE = "203.0.113.77"


# -- jobs ------------------------------------------------------------------------------------------------------
class FakeApp:
    """add_uploads that records what it was given; each call can be held until the test releases it."""

    def __init__(self, tmp_path: Path, gate: threading.Event | None = None, fail: set[str] = frozenset()):
        self.calls: list[list[str]] = []
        self.gate = gate
        self.fail = fail
        self.docs_root = tmp_path / "kb"
        self.settings = SimpleNamespace(ingest=SimpleNamespace(extensions=[".md"]))

    def add_uploads(self, name, files, **kwargs):
        from kb_qa.ingest.pipeline import FileOutcome
        from kb_qa.store import KnowledgeBaseBusy

        if self.gate is not None:
            assert self.gate.wait(10)
        self.calls.append([f for f, _ in files])
        if files[0][0] in self.fail:
            raise KnowledgeBaseBusy(f"knowledge base {name!r} is busy")
        return SimpleNamespace(outcomes=[FileOutcome(f, "added", chunks=len(data)) for f, data in files])


def test_uploads_run_file_by_file_in_the_background(tmp_path):
    gate = threading.Event()
    app = FakeApp(tmp_path, gate, fail={"b.md"})
    runner = JobRunner(app)
    job = runner.submit_upload("kb", [("a.md", b"12"), ("b.md", b"345"), ("c.md", b"6789")])
    assert job.active and job.files_done == 0  # submitting returns at once: the worker does the work
    gate.set()
    assert runner.wait_idle(10)
    done = runner.snapshot(job)
    assert done.state == DONE and done.files_done == 3 and done.fraction == 1.0
    assert app.calls == [["a.md"], ["b.md"], ["c.md"]]  # one commit per file
    assert [(o.source, o.status) for o in done.outcomes] == [("a.md", "added"), ("b.md", "failed"),
                                                              ("c.md", "added")]
    assert "busy" in done.failed[0].reason  # a user error: its message, no traceback
    assert done.chunks_done == 2 + 4
    assert runner.latest("kb") is job and runner.active() == []


def test_progress_moves_while_a_job_runs(tmp_path):
    release = [threading.Event() for _ in range(3)]
    seen = []

    class Stepwise(FakeApp):
        def add_uploads(self, name, files, **kwargs):
            seen.append(files[0][0])
            assert release[len(seen) - 1].wait(10)
            return super().add_uploads(name, files, **kwargs)

    runner = JobRunner(Stepwise(tmp_path))
    job = runner.submit_upload("kb", [(f"{i}.md", b"x") for i in range(3)])
    fractions = []
    for event in release:
        event.set()
        for _ in range(200):
            if runner.snapshot(job).files_done == len(fractions) + 1:
                break
            threading.Event().wait(0.01)
        fractions.append(runner.snapshot(job).fraction)
    assert runner.wait_idle(10)
    assert fractions == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_a_waiting_page_is_woken_by_every_step(tmp_path):
    """wait_for_change returns on each step of a job (what the page redraws on), not after a timer: each file's
    commit is seen on its own while the next one is still held."""
    release = [threading.Event() for _ in range(3)]
    started = []

    class Stepwise(FakeApp):
        def add_uploads(self, name, files, **kwargs):
            started.append(files[0][0])
            assert release[len(started) - 1].wait(10)
            return super().add_uploads(name, files, **kwargs)

    runner = JobRunner(Stepwise(tmp_path))
    version = runner.version()
    job = runner.submit_upload("kb", [(f"{i}.md", b"x") for i in range(3)])
    seen = []
    for event in release:
        event.set()
        while runner.snapshot(job).files_done == len(seen):
            before = version
            version = runner.wait_for_change(version, 10)
            assert version != before, "no change reported within 10 s"
        seen.append(runner.snapshot(job).files_done)
    assert seen == [1, 2, 3]
    while runner.snapshot(job).active:  # the job's end is a change too
        version = runner.wait_for_change(version, 10)
    assert runner.snapshot(job).state == DONE
    assert runner.wait_for_change(version, 0.05) == version  # nothing happens: it times out, same version


def test_a_failing_job_says_why_and_the_worker_goes_on(tmp_path):
    from kb_qa.store import EmbeddingMismatch

    class Broken(FakeApp):
        def ingest(self, *args, **kwargs):
            raise EmbeddingMismatch("knowledge base 'kb' was built with model-a, not model-b")

    (tmp_path / "kb" / "kb").mkdir(parents=True)
    (tmp_path / "kb" / "kb" / "x.md").write_text("x")
    runner = JobRunner(Broken(tmp_path))
    rebuild = runner.submit_rebuild("kb")
    upload = runner.submit_upload("kb", [("a.md", b"1")])
    assert runner.wait_idle(10)
    assert rebuild.state == FAILED and "model-a" in rebuild.error and rebuild.files_total == 1
    assert upload.state == DONE


def test_one_runner_per_app(tmp_path):
    app = FakeApp(tmp_path)
    assert runner_for(app) is runner_for(app)
    assert runner_for(FakeApp(tmp_path)) is not runner_for(app)


# -- safe Markdown ---------------------------------------------------------------------------------------------
HOSTILE_ANSWER = f"""**Bold** and *em*, `code`, a [link](https://example.org/a_(b)) per [1] and [2].

<script>alert(1)</script> <img src="http://{REMOTE}/x.png" onerror="alert(2)">

![tracker](http://{REMOTE}/pixel.png) ![local](/etc/passwd) [js](javascript:alert(3)) [data](data:text/html,x)
[file](file:///etc/passwd) <http://{REMOTE}/auto> http://{REMOTE}/bare www.example.com a@b.org
:red[colour] :material/home: :smile: $x^2$ $$y$$ \\(z\\)

| a | b |
|---|--:|
| `a` | **x** |

1. one
2. two
   - nested `x`

> quoted [3]

```html
<script>alert(4)</script>
```
"""


def _live(markdown: str) -> str:
    """What is left of Markdown once escaped characters, code spans and code blocks are taken out."""
    markdown = re.sub(r"(`{3,})[^\n]*\n.*?\n\1", "", markdown, flags=re.S)
    markdown = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", markdown)
    return re.sub(r"\\[!-/:-@\[-`{-~]", "", markdown)


def test_answer_markdown_keeps_structure_and_drops_everything_active():
    out = safe_markdown(HOSTILE_ANSWER, n_sources=2, anchor="sources-1")
    assert "**Bold**" in out and "*em*" in out and "`code`" in out
    assert "| a | b |" in out and "| --- | --: |" in out and "1. one" in out and "   - nested" in out
    assert "> quoted" in out and "```html\n<script>alert(4)</script>\n```" in out  # code stays code
    assert "[\\[1\\]](#sources-1)" in out and "[\\[2\\]](#sources-1)" in out
    assert "\\[3\\]" in out and "(#sources-1)" not in out.split("quoted")[1]  # no third source: plain text
    assert "[link](https://example.org/a_%28b%29)" in out  # a safe link, percent-encoded so it cannot break out
    live = _live(out)
    for needle in ("<script", "<img", "onerror=", "![", "javascript:", "data:", "file:", "/etc/passwd)",
                   ":red[", ":material", ":smile:", "$", "www.", "@b"):
        assert needle not in live, (needle, live)
    assert re.findall(REMOTE + r"[^)\s]*", live) == [f"{REMOTE}/auto"]  # only the <autolink>, as a link
    assert "tracker" in out and "local" in out  # images become their description


@given(st.text(max_size=300))
def test_no_input_yields_markup_that_fetches_or_runs(text):
    out = safe_markdown(text, n_sources=3, anchor="sources-1")
    live = _live(out)
    assert "![" not in live and "<" not in live and "$" not in live
    for m in re.finditer(r"\]\(([^)]*)\)", live):
        assert m.group(1) == "#sources-1" or m.group(1).startswith(("http://", "https://", "mailto:")), out


def test_link_targets():
    assert safe_link_target("https://a.org/x y") == "https://a.org/x%20y"
    assert safe_link_target("HTTP://a.org") == "HTTP://a.org"
    for bad in ("javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x", "vbscript:x", "/local",
                "file:///etc/passwd", "", "x"):
        assert safe_link_target(bad) is None, bad


def test_highlighting_is_inert_and_finds_the_terms():
    text = f"The zebra-lantern protocol :red[x] ![i](http://{REMOTE}/p.png) 知识库问答系统"
    out = highlight_terms(text, "What does the zebra-lantern protocol do? 知识库")
    assert ":orange-background[zebra\\-lantern]" in out and ":orange-background[protocol]" in out
    assert ":orange-background[知识库]" in out and ":orange-background[The]" not in out
    live = re.sub(r":orange-background\[", "", _live(out))
    assert ":red[" not in live and "![" not in live and "](" not in live
    assert query_terms("the and of") == []


def _unhighlighted(markdown: str) -> str:
    return re.sub(r":orange-background\[((?:\\.|[^\]\\])*)\]", r"\1", markdown)


def test_latin_terms_highlight_whole_words_only_and_nothing_is_inserted():
    text = "The solar kettle boils. Kettles, teakettles and kettlesome (kettle) 水壶kettle的 知识库问答"
    out = highlight_terms(text, "How fast do kettles boil? 知识库")
    marked = re.findall(r":orange-background\[([^\]]*)\]", out)
    assert marked == ["kettle", "boils", "Kettles", "kettle", "kettle", "知识库"], out  # plural/singular both
    assert "teakettles" in out and "kettlesome" in out  # never a part of a longer word ("tea[kettles]")
    assert _unhighlighted(out) == md_literal(text)  # no space or character added anywhere
    assert highlight_terms("bosses boss", "boss") == ":orange-background[bosses] :orange-background[boss]"
    assert re.findall(r"\[([^\]]*)\]", highlight_terms("问答系统的知识库", "知识库")) == ["知识库"]  # CJK: substring


# -- conversations, ratings, settings ----------------------------------------------------------------------------
def test_conversations_round_trip_per_owner(tmp_path):
    store = ConversationStore(tmp_path)
    source = SourceRecord("kb", "a.pdf", "passage text", 0.8, page=2)
    conv = Conversation(turns=[Turn("q?", "a!", [source], "llm", ["kb"], query="q standalone")])
    store.save("alice", conv)
    loaded = store.load("alice", conv.id)
    assert loaded.turns[0].sources[0] == source and loaded.turns[0].query == "q standalone"
    assert store.load("bob", conv.id) is None and store.list("bob") == []
    assert [c.id for c in store.list("alice")] == [conv.id] and loaded.display_title() == "q?"
    assert store.load("alice", "../../etc/passwd") is None
    store.save("../../evil", conv)  # an owner name cannot leave the folder
    assert all(p.resolve().is_relative_to(tmp_path.resolve()) for p in tmp_path.rglob("*"))
    store.save_settings("alice", {"lang": "zh", "top_k": 3})
    assert store.load_settings("alice") == {"lang": "zh", "top_k": 3}
    store.delete("alice", conv.id)
    assert store.list("alice") == []


def test_ratings_export_as_an_eval_bench(tmp_path):
    from kb_qa.eval import load_bench

    store = ConversationStore(tmp_path)
    liked = Turn("What boils water?", "The kettle [1].", [SourceRecord("kb", "k.md", "The kettle boils water.")],
                 "llm", ["kb"], settings={"retrieval.top_k": 4})
    disliked = Turn("Bad?", "no", [SourceRecord("kb", "x.md", "Unrelated.")], "llm", ["kb"])
    store.add_feedback("alice", "c1", liked, -1)
    store.add_feedback("alice", "c1", liked, 1)  # changed their mind: the latest rating counts
    store.add_feedback("alice", "c1", disliked, -1)
    with open(store.feedback_path, "a", encoding="utf-8") as f:
        f.write('{"cut off by a cra')
    ratings = store.feedback()
    assert sorted(r["rating"] for r in ratings) == [-1, 1]
    assert next(r for r in ratings if r["rating"] == 1)["settings"] == {"retrieval.top_k": 4}
    files = eval_bench(ratings)
    assert [json.loads(line)["text"] for line in files["queries.jsonl"].splitlines()] == ["What boils water?"]
    folder = tmp_path / "bench"
    with zipfile.ZipFile(BytesIO(eval_bench_zip(ratings, "bench"))) as archive:
        archive.extractall(tmp_path)
    bench = load_bench(folder)  # the eval CLI's own reader accepts it
    assert len(bench.queries) == 1 and len(bench.corpus) == 1


def test_question_language():
    assert question_language("How long does it take?") == "en"
    assert question_language("这个产品怎么安装？") == "zh"
    assert question_language("What is RAG 检索增强生成?") == "zh"
    assert "Nothing" in answer_note("no-answer", "en") and answer_note("no-answer", "zh") == "知识库中未找到相关内容。"
