"""End to end in a real browser: `streamlit run webui.py` on loopback, driven by headless Chromium (Playwright).

Uploads a document through the page, asks about it, checks that the answer and its sources appear, and saves a
screenshot (test-output/webui*.png). Then uploads a hostile document (<script>, <img onerror>, a Markdown image
on a remote address) and asks about it: nothing from it may become a DOM element and the browser must not
request the remote address.

Needs Debian's `chromium` (apt-get install chromium) and the `playwright` package; never `playwright install`
(it downloads a browser). Skips with the reason when either is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
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

HOSTILE = f"""# 安全测试 Security test

The zebra-lantern protocol is described here. It uses <script>window.__kb_qa_pwned = 1</script> inline tags.
Some loaders keep markup: <img src="http://{REMOTE}/onerror.png" onerror="window.__kb_qa_pwned = 2"> in the text.
Markdown images too: ![tracker](http://{REMOTE}/pixel.png) and a link [click](http://{REMOTE}/phish).
The zebra-lantern protocol rotates its keys every 42 minutes.
"""

GOOD = """# Solar kettles

The solar kettle boils one litre of water in about twelve minutes on a clear day.
Its mirror is made of polished aluminium and folds into a flat disc for carrying.
"""


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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run webui.py` on 127.0.0.1:<free port>, settings pointing at tmp folders."""
    tmp = tmp_path_factory.mktemp("webui_browser")
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               KB_QA_PATHS__KNOWLEDGE_BASE_ROOT=str(tmp / "knowledge_base"),
               KB_QA_PATHS__VECTOR_STORE_ROOT=str(tmp / "vector_store"))
    model = _tiny_model(tmp_path_factory)
    if model:
        env.update(KB_QA_LLM__MODEL_PATH=str(model), KB_QA_LLM__DEVICE="cpu",
                   KB_QA_LLM__MAX_NEW_TOKENS="48")  # the random model rarely stops on its own
    else:
        env.pop("KB_QA_LLM__MODEL_PATH", None)
    log = open(tmp / "streamlit.log", "wb")  # noqa: SIM115 - open for the server's whole life
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "webui.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none", "--global.developmentMode", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
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
        yield {"url": url, "tmp": tmp, "llm": bool(model)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _tiny_model(tmp_path_factory):
    """A tiny random ChatGLM2 checkpoint (the real load + generate path), or None where the builder is absent."""
    try:
        from tiny_chatglm2 import build_tiny_chatglm2
    except ImportError:
        return None
    folder = tmp_path_factory.mktemp("tiny_chatglm2")
    build_tiny_chatglm2(folder)
    return folder


@pytest.fixture
def browser_page(playwright_api, tmp_path):
    """A fresh Chromium profile; every request is recorded, and any that leaves the machine is blocked."""
    context = playwright_api.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000})
    requests: list[str] = []

    def route(r):
        requests.append(r.request.url)
        host = r.request.url.split("/")[2] if "://" in r.request.url else ""
        if host.startswith(("127.0.0.1", "localhost")):
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)
    context.on("request", lambda req: requests.append(req.url))
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.requests = requests
    try:
        yield page
    finally:
        with contextlib.suppress(Exception):  # the last state of the page, for a failed test's post-mortem
            page.screenshot(path=str(tmp_path / "last.png"), full_page=True, timeout=10_000)
        context.close()


# -- page actions --------------------------------------------------------------------------------------------
def _open(page, url):
    page.goto(url)
    _settle(page)


IDLE = """() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon]')
    && !document.querySelector('[data-stale=true]')
    && [...document.querySelectorAll('[data-testid=stSidebar] [data-testid=stCaptionContainer]')]
        .some(e => e.innerText.startsWith('LLM:'))"""  # the sidebar is drawn last: its LLM line ends every run


def _settle(page):
    """Wait until the script run is over: no 'running' indicator, no stale element, the sidebar drawn, and still
    so half a second later (a click's run may not have started yet)."""
    for _ in range(100):
        page.wait_for_function(IDLE, timeout=TIMEOUT_MS)
        page.wait_for_timeout(500)
        if page.evaluate(IDLE):
            return
    raise AssertionError("the page never settled")


def _view(page, name):
    page.get_by_role("radio", name=name, exact=True).click()
    _settle(page)


def _create_kb(page, name):
    _view(page, "Knowledge bases")
    page.get_by_role("textbox", name="Name", exact=True).fill(name)
    page.get_by_role("button", name="Create", exact=True).click()
    _settle(page)
    page.get_by_text(f"Add to {name}").wait_for()


def _upload(page, kb, files):
    page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files([str(f) for f in files])
    for f in files:
        page.get_by_text(Path(f).name).first.wait_for()
    page.get_by_role("button", name=f"Add to {kb}", exact=True).click()
    _settle(page)
    page.locator("[data-testid=stAlertContentSuccess], [data-testid=stAlertContentWarning]").first.wait_for()
    _settle(page)


def _ask(page, question):
    _view(page, "Chat")
    box = page.locator("[data-testid=stChatInputTextArea]")
    box.fill(question)
    box.press("Enter")
    _settle(page)
    page.locator("[data-testid=stChatMessage]").nth(1).locator("[data-testid=stExpander]").first.wait_for()


def test_upload_ask_and_see_sources(server, browser_page, tmp_path):
    page = browser_page
    doc = tmp_path / "solar_kettle.md"
    doc.write_text(GOOD, encoding="utf-8")
    _open(page, server["url"])
    _create_kb(page, "kettles")
    _upload(page, "kettles", [doc])
    assert "kettles: 1 added" in page.locator("[data-testid=stAlertContentSuccess]").inner_text()
    page.locator("[data-testid=stDataFrame]").nth(1).wait_for()  # per-file results + the document list
    picker = page.locator("[data-testid=stSelectbox]").filter(has_text="Document")  # for 'Remove document'
    assert "solar_kettle.md" in picker.inner_text() + " ".join(
        i.input_value() for i in picker.locator("input").all())
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "webui-kbs.png"), full_page=True)
    _ask(page, "How long does the solar kettle take to boil water?")

    messages = page.locator("[data-testid=stChatMessage]")
    assert messages.count() == 2
    answer = messages.nth(1)
    assert answer.inner_text().strip()
    sources = answer.locator("[data-testid=stExpander]")
    assert sources.count() >= 1
    assert "solar_kettle.md" in sources.first.inner_text()
    sources.first.locator("summary").click()
    page.get_by_text("twelve minutes", exact=False).first.wait_for()
    _settle(page)
    page.screenshot(path=str(OUTPUT / "webui.png"), full_page=True)
    assert not [u for u in page.requests if not u.startswith(server["url"]) and not u.startswith("data:")]


def test_hostile_document_is_shown_inert(server, browser_page, tmp_path):
    page = browser_page
    doc = tmp_path / "hostile.md"
    doc.write_text(HOSTILE, encoding="utf-8")
    _open(page, server["url"])
    _create_kb(page, "hostile")
    _upload(page, "hostile", [doc])
    _ask(page, "What does the zebra-lantern protocol do with its keys?")
    answer = page.locator("[data-testid=stChatMessage]").nth(1)
    for i in range(answer.locator("[data-testid=stExpander]").count()):
        answer.locator("[data-testid=stExpander] summary").nth(i).click()
    page.wait_for_timeout(1000)  # give any injected image or script a chance to load or run
    _settle(page)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "webui-hostile.png"), full_page=True)

    text = page.locator("[data-testid=stMainBlockContainer]").inner_text()
    assert "<script>" in text and "onerror" in text  # shown, as text
    assert f"![tracker](http://{REMOTE}/pixel.png)".replace("http://", "") in text.replace("http://", "").replace(
        "\u2060", "")
    assert page.evaluate("window.__kb_qa_pwned") is None
    assert page.evaluate(
        "() => [...document.querySelectorAll('script')].filter(s => s.textContent.includes('__kb_qa_pwned')).length"
    ) == 0
    assert page.evaluate(
        f"() => [...document.querySelectorAll('img, image, iframe, video, audio, source, object, embed')]"
        f".filter(e => (e.outerHTML || '').includes('{REMOTE}')).length") == 0
    assert page.evaluate("() => [...document.querySelectorAll('[onerror]')].length") == 0
    assert not [u for u in page.requests if REMOTE in u]
    assert not [u for u in page.requests if not u.startswith(server["url"]) and not u.startswith("data:")]
