"""End to end in a real browser: `streamlit run webui.py` on loopback, driven by headless Chromium (Playwright).

The page answers with a model behind an OpenAI-compatible endpoint: a small fake server in this file that streams
a scripted Markdown answer (hostile on request, slow on request), so what the browser renders is known. One test
per must-fix item of the page:
  - nothing leaves the machine: every request the browser makes, from the very first load, goes to the page's own
    server (the shipped .streamlit/config.toml turns usage statistics off: no flag on the command line here);
  - uploads survive clicks, a reload and a second tab while they are indexed, with progress that moves;
  - a Markdown answer is rendered (bold, table, citation links) with hostile content inert (no script runs, no
    image or remote address is fetched, no javascript: link), and a hostile document's passages stay text;
  - Stop keeps the partial answer and its sources; the conversation is still there after a reload.

Needs Debian's `chromium` (apt-get install chromium) and the `playwright` package; never `playwright install`
(it downloads a browser). Skips with the reason when either is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "test-output"
CHROMIUM = os.environ.get("KB_QA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REMOTE = "203.0.113.77"  # TEST-NET-3: never routable; any request to it is a rendering bug
TIMEOUT_MS = 90_000

HOSTILE_DOC = f"""# 安全测试 Security test

The zebra-lantern protocol is described here. It uses <script>window.__kb_qa_pwned = 1</script> inline tags.
Some loaders keep markup: <img src="http://{REMOTE}/onerror.png" onerror="window.__kb_qa_pwned = 2"> in the text.
Markdown images too: ![tracker](http://{REMOTE}/pixel.png) and a link [click](http://{REMOTE}/phish).
The zebra-lantern protocol rotates its keys every 42 minutes.
"""

GOOD_DOC = """# Solar kettles

The solar kettle boils one litre of water in about twelve minutes on a clear day.
Its mirror is made of polished aluminium and folds into a flat disc for carrying.
"""

# What the fake model answers: hostile Markdown to the zebra-lantern question, slowly when the question says so.
HOSTILE_ANSWER = (
    "**Bold answer** about the zebra-lantern protocol [1].\n\n"
    "| item | minutes |\n|---|---|\n| keys | 42 |\n\n"
    f"<script>window.__kb_qa_pwned = 3</script> <img src=\"http://{REMOTE}/a.png\" "
    "onerror=\"window.__kb_qa_pwned = 4\">\n\n"
    f"![pixel](http://{REMOTE}/md.png) [js](javascript:window.__kb_qa_pwned=5) :red[red] $x^2$ done.\n")
KETTLE_ANSWER = "The solar kettle boils a litre in **twelve minutes** [1]."
SLOW_PIECES = [f"word{i} " for i in range(60)]  # 60 pieces, 0.25 s apart: 15 s unless stopped


class FakeOpenAI(BaseHTTPRequestHandler):
    """POST /v1/chat/completions, streamed (SSE) or not; the answer depends on the question (see above)."""

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        question = str(body.get("messages", [{}])[-1].get("content", ""))
        if "slowly" in question:
            pieces, delay = SLOW_PIECES, 0.25
        elif "protocol do with its keys" in question:  # the question, not a passage that mentions zebras
            pieces, delay = [HOSTILE_ANSWER[i:i + 12] for i in range(0, len(HOSTILE_ANSWER), 12)], 0.0
        else:
            pieces, delay = [KETTLE_ANSWER], 0.0
        del prompt
        if not body.get("stream"):
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": "".join(pieces)},
                                            "finish_reason": "stop", "index": 0}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for piece in pieces:
                event = {"choices": [{"delta": {"content": piece}, "index": 0, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
                time.sleep(delay)
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page stopped reading: Stop


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def playwright_api():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        yield p


@contextlib.contextmanager
def running_page(tmp: Path):
    """`streamlit run webui.py` on 127.0.0.1:<free port> with the repo's .streamlit/config.toml, settings pointing
    at tmp folders, answering through the fake OpenAI-compatible model. Yields {'url', 'tmp', 'store'}."""
    llm = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=llm.serve_forever, daemon=True).start()
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               KB_QA_PATHS__KNOWLEDGE_BASE_ROOT=str(tmp / "knowledge_base"),
               KB_QA_PATHS__VECTOR_STORE_ROOT=str(tmp / "vector_store"),
               KB_QA_LLM__BACKEND="openai", KB_QA_LLM__MODEL_PATH="",
               KB_QA_LLM__OPENAI_BASE_URL=f"http://127.0.0.1:{llm.server_address[1]}/v1")
    log = open(tmp / "streamlit.log", "wb")  # noqa: SIM115 - open for the server's whole life
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "webui.py"),
                             "--server.port", str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("streamlit did not start:\n" + (tmp / "streamlit.log").read_text(errors="replace"))
            time.sleep(0.3)
        yield {"url": url, "tmp": tmp, "store": tmp / "vector_store"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        llm.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_page(tmp_path_factory.mktemp("webui_browser")) as page:
        yield page


@contextlib.contextmanager
def browser_context(playwright, profile: Path):
    """A fresh Chromium profile. Every request is recorded (context.requests) from before the first page opens;
    any that is not to the local server is blocked, and the tests assert there were none."""
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000})
    requests: list[str] = []

    def route(r):
        requests.append(r.request.url)
        host = r.request.url.split("/")[2] if "://" in r.request.url else ""
        if host.startswith(("127.0.0.1:", "localhost:")):
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)
    context.requests = requests
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def context(playwright_api, tmp_path, server):
    with browser_context(playwright_api, tmp_path / "chromium-profile") as ctx:
        yield ctx
        leaks = [u for u in ctx.requests if not u.startswith(server["url"]) and not u.startswith(("data:", "blob:"))]
        assert not leaks, leaks


@pytest.fixture
def page(context, tmp_path):
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        yield page
    finally:
        with contextlib.suppress(Exception):  # the last state of the page, for a failed test's post-mortem
            page.screenshot(path=str(tmp_path / "last.png"), full_page=True, timeout=10_000)


# -- page actions --------------------------------------------------------------------------------------------
IDLE = """() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon]')
    && !document.querySelector('[data-stale=true]')
    && !document.querySelector('[data-testid=stProgress]')
    && [...document.querySelectorAll('[data-testid=stSidebar] [data-testid=stCaptionContainer]')]
        .some(e => e.innerText.startsWith('LLM:'))"""  # the sidebar's LLM line ends every run


def settle(page):
    """Wait until the script run is over (no 'running' indicator, no stale element, no ingestion progress, the
    sidebar drawn), and still so half a second later (a click's run may not have started yet)."""
    for _ in range(200):
        page.wait_for_function(IDLE, timeout=TIMEOUT_MS)
        page.wait_for_timeout(500)
        if page.evaluate(IDLE):
            return
    raise AssertionError("the page never settled")


def open_page(page, url):
    page.goto(url)
    settle(page)


def view(page, name):
    page.get_by_role("radio", name=name, exact=False).click()
    settle(page)


def create_kb(page, name):
    view(page, "Knowledge bases")
    page.get_by_role("textbox", name="Name", exact=True).fill(name)
    page.get_by_role("button", name="Create", exact=True).click()
    settle(page)
    page.get_by_text(f"Add to {name}").wait_for()


def choose_files(page, files):
    page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files([str(f) for f in files])
    page.get_by_text(Path(files[-1]).name).first.wait_for()


def upload(page, kb, files):
    choose_files(page, files)
    page.get_by_role("button", name=f"Add to {kb}", exact=True).click()
    report = page.locator("[data-testid=stAlertContentSuccess], [data-testid=stAlertContentWarning]").first
    report.wait_for(timeout=4 * TIMEOUT_MS)  # the first upload of the process also loads the embedding model
    settle(page)


def ask(page, question, *, wait=True):
    view(page, "Chat")
    box = page.locator("[data-testid=stChatInputTextArea]")
    box.fill(question)
    box.press("Enter")
    if wait:
        settle(page)
        page.locator("[data-testid=stChatMessage]").last.locator("[data-testid=stExpander]").first.wait_for()


def documents_in(store: Path, kb: str) -> list[str]:
    from kb_qa.store import KnowledgeBase

    base = KnowledgeBase.open(store, kb)
    try:
        return sorted(d.source for d in base.documents())
    finally:
        base.close()


# -- the tests -------------------------------------------------------------------------------------------------
def test_first_load_contacts_nothing_but_the_local_server(server, context, page):
    open_page(page, server["url"])
    page.wait_for_timeout(1500)  # telemetry, if it were on, goes out shortly after the first render
    assert context.requests and all(u.startswith(server["url"]) or u.startswith(("data:", "blob:"))
                                    for u in context.requests), context.requests
    assert page.get_by_text("Deploy", exact=True).count() == 0  # the minimal toolbar: no hosted-service links
    # (the context fixture asserts the same for every test, from its first request to its last)


PROGRESS_SEEN = """() => {  // every text any progress bar of this page shows, as it changes (installed per page)
    let last = "";
    new MutationObserver(() => {
        const now = [...document.querySelectorAll('[data-testid=stProgress]')].map(e => e.innerText).join("\\n");
        if (now && now !== last) { last = now; window.kbqaProgressSeen(now); }
    }).observe(document, {subtree: true, childList: true, characterData: true});
}"""


@contextlib.contextmanager
def writer_lock_held(store: Path, kb: str):
    """Hold `kb`'s write lock from this process (as the CLI would while it writes): the page's upload job reads
    and embeds its first file, then waits for the lock (kb_qa.jobs waits up to 120 s) until the block ends."""
    from kb_qa.store import KnowledgeBase

    base = KnowledgeBase.open(store, kb)
    try:
        with base.writer(lock_timeout_s=30):
            yield
    finally:
        base.close()


def test_uploads_survive_clicks_a_reload_and_a_second_tab(server, context, page, tmp_path):
    """The job is held at its first commit (the write lock is taken here) while the page is clicked, reloaded and
    opened in a second tab, so all of that surely happens during indexing; then it runs on. Every text the
    progress bar shows is recorded in the browser as it changes (a MutationObserver in every page of the
    context), not sampled: the page must show the progress moving file by file."""
    seen: set[str] = set()
    context.expose_function("kbqaProgressSeen", lambda text: seen.update(text.split("\n")))
    context.add_init_script(f"({PROGRESS_SEEN})()")
    files = []
    for i in range(12):
        f = tmp_path / f"note_{i:02d}.md"
        f.write_text(f"# Note {i}\n\nNote {i} says the meeting room {i} has {i + 2} chairs.\n" * 20, encoding="utf-8")
        files.append(f)
    open_page(page, server["url"])
    create_kb(page, "notes")
    choose_files(page, files)
    with writer_lock_held(server["store"], "notes"):
        page.get_by_role("button", name="Add to notes", exact=True).click()
        page.locator("[data-testid=stProgress]").first.wait_for()
        page.get_by_role("radio", name="Chat", exact=False).click()  # clicks while it is indexed ...
        page.wait_for_timeout(300)
        page.reload()  # ... a reload ...
        other = context.new_page()  # ... and a second tab
        other.goto(server["url"])
        page.wait_for_load_state()
        page.get_by_role("radio", name="Knowledge bases", exact=False).click()
        page.locator("[data-testid=stProgress]").first.wait_for()  # still indexing: the job was not cancelled
        assert documents_in(server["store"], "notes") == []
    report = page.locator("[data-testid=stAlertContentSuccess], [data-testid=stAlertContentWarning]").first
    report.wait_for(timeout=3 * TIMEOUT_MS)
    settle(page)
    assert documents_in(server["store"], "notes") == [f.name for f in files]  # every document committed
    assert "notes: 12 added" in page.locator("[data-testid=stAlertContentSuccess]").inner_text()  # the report
    done = {t.split(" files")[0].split()[-1] for t in seen if " files" in t}
    assert "0/12" in done and len(done) >= 4, sorted(done)  # the progress moved while it ran, file by file
    other.close()


def test_markdown_answer_rendered_and_hostile_content_inert(server, page, tmp_path):
    doc = tmp_path / "hostile.md"
    doc.write_text(HOSTILE_DOC, encoding="utf-8")
    open_page(page, server["url"])
    create_kb(page, "hostile")
    upload(page, "hostile", [doc])
    ask(page, "What does the zebra-lantern protocol do with its keys?")
    answer = page.locator("[data-testid=stChatMessage]").last
    for i in range(answer.locator("[data-testid=stExpander]").count()):
        answer.locator("[data-testid=stExpander] summary").nth(i).click()
    page.wait_for_timeout(1000)  # give any injected image or script a chance to load or run
    settle(page)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "webui-hostile.png"), full_page=True)

    assert answer.locator("strong", has_text="Bold answer").count() == 1  # Markdown is rendered ...
    assert answer.locator("table td", has_text="42").count() == 1
    citation = answer.locator("a[href='#sources-1']")
    assert citation.count() >= 1 and citation.first.inner_text() == "[1]"  # ... citations link to the sources
    assert page.evaluate("() => !!document.getElementById('sources-1')")
    text = answer.inner_text()
    assert "<script>" in text and "onerror" in text and ":red[red]" in text and "$x^2$" in text  # ... as text
    assert page.evaluate("window.__kb_qa_pwned") is None
    assert page.evaluate(
        "() => [...document.querySelectorAll('script')].filter(s => s.textContent.includes('__kb_qa_pwned')).length"
    ) == 0
    assert page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=stMain] img, [data-testid=stMain] iframe, "
        "[data-testid=stMain] video, [data-testid=stMain] audio, [data-testid=stMain] object')].length") == 0
    assert page.evaluate("() => [...document.querySelectorAll('[onerror]')].length") == 0
    assert page.evaluate("() => [...document.querySelectorAll('a')].filter(a => /^\\s*(javascript|data):/i"
                         ".test(a.getAttribute('href') || '')).length") == 0
    assert page.evaluate("() => document.querySelectorAll('.katex').length") == 0  # no math rendering
    passages = page.locator("[data-testid=stMainBlockContainer]").inner_text().replace("\u2060", "")
    assert f"![tracker]({REMOTE}/pixel.png)".replace(REMOTE, f"http://{REMOTE}") in passages  # the document's, as text


def test_stop_keeps_the_partial_answer_and_sources_and_history_survives_a_reload(server, page, tmp_path):
    doc = tmp_path / "solar_kettle.md"
    doc.write_text(GOOD_DOC, encoding="utf-8")
    open_page(page, server["url"])
    create_kb(page, "kettles")
    upload(page, "kettles", [doc])
    ask(page, "How long does the solar kettle take to boil water?")
    first = page.locator("[data-testid=stChatMessage]").nth(1)
    assert "twelve minutes" in first.inner_text() and first.locator("strong").count() == 1

    ask(page, "Tell me slowly about the solar kettle mirror", wait=False)
    bubble = page.locator("[data-testid=stChatMessage]").nth(3)
    page.get_by_text("word3", exact=False).first.wait_for()  # generating
    page.get_by_role("button", name="Stop").click()
    settle(page)
    bubble = page.locator("[data-testid=stChatMessage]").nth(3)
    kept = bubble.inner_text()
    assert "word3" in kept and "word59" not in kept  # what was generated until Stop, and no more
    assert "Stopped" in kept
    assert bubble.locator("[data-testid=stExpander]").count() >= 1  # its sources
    assert "solar_kettle.md" in bubble.locator("[data-testid=stExpander]").first.inner_text()
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "webui-stopped.png"), full_page=True)

    page.reload()  # the conversation is kept (its id is in the URL; the turns on disk)
    settle(page)
    messages = page.locator("[data-testid=stChatMessage]")
    assert messages.count() == 4
    assert "twelve minutes" in messages.nth(1).inner_text() and "word3" in messages.nth(3).inner_text()
