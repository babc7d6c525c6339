"""A real uvicorn on 127.0.0.1 (random free port, in a thread, torn down), driven by the `openai` Python client
(streaming and not) and by raw HTTP, answering with the tiny random ChatGLM2 checkpoint loaded through the same
path a user's chatglm2-6b folder takes (llm.model_path)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from tiny_chatglm2 import tiny_dir, tiny_tokenizer_model  # noqa: F401 (fixtures)

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

KEY = "test-key-123"
DOCS = [
    ("paris.txt", "The capital of France is Paris. The Eiffel tower stands in Paris and was finished in 1889."),
    ("cats.md", "# Cats\n\nCats are small furry animals. A cat sleeps for about fifteen hours a day."),
]


@contextmanager
def serve(api):
    """uvicorn serving `api` on 127.0.0.1:<free port> in a thread; yields the base URL; always shut down."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def live(tiny_dir, embedder, tmp_path_factory):  # noqa: F811
    """(base_url, FastAPI app) with the tiny ChatGLM2 loaded and a knowledge base 'docs'."""
    from kb_qa.api import create_app
    from kb_qa.app import App
    from kb_qa.settings import load_settings

    root = tmp_path_factory.mktemp("live")
    settings = load_settings(overrides={
        "paths": {"knowledge_base_root": str(root / "knowledge_base"), "vector_store_root": str(root / "vector_store")},
        "llm": {"backend": "chatglm2", "model_path": str(tiny_dir), "device": "cpu", "dtype": "float32",
                "max_context_tokens": 2048, "max_new_tokens": 24},
        "qa": {"language": "en"},
        "api": {"api_key": KEY, "max_queue": 1},
    })
    app = App(settings)
    app.__dict__["embeddings"] = embedder
    report = app.add_uploads("docs", [(n, t.encode()) for n, t in DOCS])
    assert not report.failed
    api = create_app(app, preload=True, wait_timeout_s=30)
    with serve(api) as url:
        deadline = time.monotonic() + 60
        while httpx.get(url + "/health").json()["llm"]["state"] != "loaded":  # preloaded in the background
            assert time.monotonic() < deadline, httpx.get(url + "/health").json()
            time.sleep(0.1)
        yield url, api


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=live[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_health_on_the_wire(live):
    body = httpx.get(live[0] + "/health").json()
    assert body["mode"] == "llm" and body["llm"]["name"] == "chatglm2"
    assert "chatglm2" in body["llm"]["detail"].lower() or body["llm"]["detail"]


def test_models(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["chatglm2", "kb:docs"]


def test_plain_chat_streams_the_same_text_and_honours_sampling(client, live):
    kwargs = {"model": "chatglm2", "messages": [{"role": "user", "content": "你好"}], "temperature": 0,
              "max_tokens": 6}
    full = client.chat.completions.create(**kwargs)
    text = full.choices[0].message.content
    assert full.object == "chat.completion" and full.usage.prompt_tokens > 2
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    pieces, finish = [], None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        assert chunk.object == "chat.completion.chunk"
        delta = chunk.choices[0].delta
        pieces.append(delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == text and finish == "stop"
    # greedy through the API == greedy straight from the loaded model, same settings
    handle = live[1].state.ctx.engine.llm()
    assert handle.chat("你好", [], temperature=0, max_new_tokens=6) == text
    # max_tokens is honoured: a longer budget gives a longer (greedy, so extended) answer
    longer = client.chat.completions.create(**{**kwargs, "max_tokens": 20}).choices[0].message.content
    assert longer.startswith(text) and len(longer) > len(text)


def test_knowledge_base_answer_streams_with_sources(client):
    stream = client.chat.completions.create(
        model="kb:docs", stream=True, temperature=0, max_tokens=12,
        messages=[{"role": "user", "content": "When was the Eiffel tower finished?"}])
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    extra = last.model_extra
    assert extra["mode"] == "llm"
    assert extra["sources"][0]["source"] == "paris.txt" and 0 <= extra["sources"][0]["score"] <= 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    same = client.chat.completions.create(
        model="whatever", extra_body={"knowledge_base": "docs"}, temperature=0, max_tokens=12,
        messages=[{"role": "user", "content": "When was the Eiffel tower finished?"}])
    assert same.choices[0].message.content == text  # greedy: streamed == non-streamed
    assert same.model_extra["sources"][0]["source"] == "paris.txt"


def test_chatglm_contract_on_the_wire(live):
    url = live[0]
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(url + "/", headers=headers, timeout=60, json={
        "prompt": "你好", "history": [], "max_length": 64, "top_p": 0.7, "temperature": 0})
    body = r.json()
    assert r.status_code == 200 and body["status"] == 200 and body["history"] == [["你好", body["response"]]]
    assert "sources" not in body
    r = httpx.post(url + "/", headers=headers, timeout=60, json={
        "prompt": "How long do cats sleep?", "knowledge_base": "docs", "temperature": 0, "max_length": 600})
    assert r.status_code == 200 and r.json()["sources"][0]["source"] == "cats.md"


def test_auth_over_the_wire(live):
    bad = openai.OpenAI(base_url=live[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(live[0] + "/health").status_code == 200


def test_raw_traversal_paths_over_the_wire(live, tmp_path_factory):
    """Paths sent byte for byte (http.client does not normalise '..'): uvicorn decodes, the API refuses."""
    host, port = live[0].removeprefix("http://").split(":")
    before = sorted(p.name for p in (live[1].state.ctx.app.docs_root / "docs").iterdir())
    for method, path in [
        ("DELETE", "/knowledge_bases/docs/documents/../../../secret.txt"),
        ("DELETE", "/knowledge_bases/docs/documents/..%2f..%2fsecret.txt"),
        ("DELETE", "/knowledge_bases/docs/documents/%2e%2e/%2e%2e/secret.txt"),
        ("DELETE", "/knowledge_bases/docs/documents/%252e%252e%252fsecret.txt"),
        ("DELETE", "/knowledge_bases/docs/documents/..%5c..%5csecret.txt"),
        ("DELETE", "/knowledge_bases/docs/documents/%00.txt"),
        ("GET", "/knowledge_bases/..%2f..%2ftmp/documents"),
        ("GET", "/knowledge_bases/%2e%2e/documents"),
        ("DELETE", "/knowledge_bases/docs/documents/.."),
        ("DELETE", "/knowledge_bases/%2e%2e"),
    ]:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request(method, path, headers={"Authorization": f"Bearer {KEY}"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        assert resp.status in (400, 404, 405, 422), (path, resp.status, body)
        assert "detail" in json.loads(body)
    assert sorted(p.name for p in (live[1].state.ctx.app.docs_root / "docs").iterdir()) == before
    assert httpx.get(live[0] + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_over_capacity_is_503_and_the_server_keeps_serving(live):
    """max_queue = 1: with one stream generating and one waiting, a third request is refused at once."""
    url = live[0] + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "chatglm2", "stream": True, "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": "讲一个很长的故事"}]}
    results = []

    def ask(payload):
        try:
            with httpx.stream("POST", url, headers=headers, json=payload, timeout=60) as r:
                r.read()
                results.append(r.status_code)
        except Exception as exc:  # noqa: BLE001
            results.append(repr(exc))

    gate = live[1].state.ctx.gate("chatglm2")
    assert gate.try_acquire()  # hold the model, as a long generation would
    try:
        threads = [threading.Thread(target=ask, args=(body,)) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while len(results) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(results) == [503, 503], results  # two over the queue of one
        assert gate.status().waiting == 1
    finally:
        gate.release()
    for t in threads:
        t.join(60)
    assert sorted(results) == [200, 503, 503]
    h = httpx.get(live[0] + "/health").json()["generation"]
    assert h == {"model": "chatglm2", "busy": False, "waiting": 0, "max_queue": 1}
