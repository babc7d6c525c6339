"""The HTTP API through FastAPI's test client: every endpoint and its errors, auth, CORS, limits, capacity."""

from __future__ import annotations

import json
import threading
import time

import anyio
import pytest
from fastapi.testclient import TestClient

from kb_qa.api import create_app
from kb_qa.api.capacity import GenerationGate, Overloaded

DOCS = [
    ("paris.txt", "The capital of France is Paris. The Eiffel tower stands in Paris and was finished in 1889."),
    ("cats.md", "# Cats\n\nCats are small furry animals. A cat sleeps for about fifteen hours a day."),
    ("长城.txt", "长城是中国古代的军事防御工程，全长两万多公里。"),
]


def with_api(settings, **api):
    """`settings` with some api.* values changed."""
    return settings.model_copy(update={"api": settings.api.model_copy(update=api)})


def make_client(app, **kwargs) -> TestClient:
    return TestClient(create_app(app, preload=False, **kwargs), raise_server_exceptions=False)


def with_llm(client: TestClient, llm) -> TestClient:
    """A client over a new App on the same data and embedder whose model is `llm` (the App owns the model, and
    wraps it so every generation takes the App's generation lock)."""
    from kb_qa.app import App

    old = client.app.state.ctx.app
    return make_client(App(old.settings, embeddings=old.embeddings, llm=llm), lock_timeout_s=0.2)


@pytest.fixture
def client(app):
    return make_client(app, lock_timeout_s=0.2)


@pytest.fixture
def kb_client(client):
    """A client whose app has knowledge base 'kb' holding DOCS."""
    r = client.post("/knowledge_bases/kb/documents",
                    files=[("files", (name, text.encode("utf-8"))) for name, text in DOCS])
    assert r.status_code == 200, r.text
    return client


def sse_events(text: str) -> list:
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# -- health ---------------------------------------------------------------------------------------------------
def test_health_says_what_is_loaded(client):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["mode"] == "retrieval-only"
    assert body["llm"]["state"] == "unavailable" and "model_path" in body["llm"]["detail"]
    assert body["embedding"]["name"] == "all-MiniLM-L6-v2"
    assert body["embedding"]["state"] == "loaded"  # the fixture's app shares the session's model


# -- knowledge bases ------------------------------------------------------------------------------------------
def test_create_list_show_delete(client, app):
    assert client.get("/knowledge_bases").json() == []
    r = client.post("/knowledge_bases", json={"name": "notes"})
    assert r.status_code == 201 and r.json()["name"] == "notes" and r.json()["documents"] == 0
    assert client.post("/knowledge_bases", json={"name": "notes"}).status_code == 409
    assert [k["name"] for k in client.get("/knowledge_bases").json()] == ["notes"]
    assert client.get("/knowledge_bases/notes").json()["chunks"] == 0
    assert client.get("/knowledge_bases/nope").status_code == 404
    assert client.delete("/knowledge_bases/notes").json() == {"deleted": "notes"}
    assert client.delete("/knowledge_bases/notes").status_code == 404
    assert client.get("/knowledge_bases").json() == []
    assert not (app.store_root / "notes").exists()


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "a b", "", "x" * 65, "a\x00b", "a..b"])
def test_create_refuses_bad_names(client, name):
    r = client.post("/knowledge_bases", json={"name": name})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] in (None, "name")


def test_upload_ingest_list_remove(kb_client, app):
    c = kb_client
    docs = c.get("/knowledge_bases/kb/documents").json()
    assert sorted(d["source"] for d in docs) == sorted(n for n, _ in DOCS)
    assert all(d["chunks"] >= 1 and len(d["sha256"]) == 64 for d in docs)
    assert "origin" not in docs[0]  # server paths are not disclosed
    # per-file results: unchanged, updated, refused
    r = c.post("/knowledge_bases/kb/documents", files=[
        ("files", ("paris.txt", DOCS[0][1].encode())),
        ("files", ("cats.md", b"# Cats\n\nCats purr.")),
        ("files", ("virus.exe", b"MZ")),
        ("files", ("../../escape.txt", b"Paris again.")),
    ])
    assert r.status_code == 200
    status = {f["source"]: (f["status"], f["reason"]) for f in r.json()["files"]}
    assert status["paris.txt"][0] == "unchanged"
    assert status["cats.md"][0] == "updated"
    assert status["virus.exe"][0] == "failed" and "unsupported" in status["virus.exe"][1]
    assert status["escape.txt"][0] == "added"  # stored under its sanitised name, inside the KB folder
    assert (app.docs_root / "kb" / "escape.txt").is_file()
    # remove
    assert c.delete("/knowledge_bases/kb/documents/escape.txt").json() == {"deleted": "escape.txt"}
    assert not (app.docs_root / "kb" / "escape.txt").exists()
    assert c.delete("/knowledge_bases/kb/documents/escape.txt").status_code == 404
    assert c.delete("/knowledge_bases/nope/documents/a.txt").status_code == 404
    assert c.delete("/knowledge_bases/kb/documents/%2e%2e%2fpasswd").status_code == 400
    assert c.get("/knowledge_bases/kb").json()["documents"] == 3


def test_upload_needs_files(client):
    r = client.post("/knowledge_bases/kb/documents", data={"x": "y"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "files"


def test_delete_with_documents(kb_client, app):
    assert (app.docs_root / "kb").is_dir()
    assert kb_client.delete("/knowledge_bases/kb", params={"delete_documents": "true"}).status_code == 200
    assert not (app.docs_root / "kb").exists() and not (app.store_root / "kb").exists()


def test_search_scores(kb_client):
    r = kb_client.post("/knowledge_bases/kb/search", json={"query": "When was the Eiffel tower finished?"})
    assert r.status_code == 200
    hits = r.json()["results"]
    assert hits[0]["source"] == "paris.txt" and hits[0]["index"] == 1
    scores = [h["score"] for h in hits]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    one = kb_client.post("/knowledge_bases/kb/search", json={"query": "cats", "top_k": 1}).json()["results"]
    assert len(one) == 1
    strict = kb_client.post("/knowledge_bases/kb/search", json={"query": "cats", "score_threshold": 0.99})
    assert strict.json()["results"] == []
    assert kb_client.post("/knowledge_bases/nope/search", json={"query": "x"}).status_code == 404
    assert kb_client.post("/knowledge_bases/kb/search", json={"query": ""}).status_code == 400
    r = kb_client.post("/knowledge_bases/kb/search", json={"query": "x", "top_k": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_k"


def test_busy_knowledge_base_is_409(kb_client, app):
    kb = app.kb("kb")
    with kb.writer():  # another writer holds the lock
        r = kb_client.post("/knowledge_bases/kb/documents", files=[("files", ("new.txt", b"something new"))])
        assert r.status_code == 409 and "busy" in r.json()["error"]["message"]
        r = kb_client.delete("/knowledge_bases/kb/documents/paris.txt")
        assert r.status_code == 409 and "busy" in r.json()["error"]["message"]
    assert kb_client.delete("/knowledge_bases/kb/documents/paris.txt").status_code == 200


# -- answering, retrieval-only ---------------------------------------------------------------------------------
def test_chatglm_contract_with_knowledge_base(kb_client):
    r = kb_client.post("/", json={"prompt": "Where is the Eiffel tower?", "history": [["hi", "hello"]],
                                  "knowledge_base": "kb", "top_p": 0.7, "temperature": 0.95, "max_length": 2048})
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"response", "history", "status", "time", "sources"}
    assert body["status"] == 200 and body["mode"] == "retrieval-only"
    assert body["history"] == [["hi", "hello"], ["Where is the Eiffel tower?", body["response"]]]
    assert body["sources"][0]["source"] == "paris.txt"
    assert time.strptime(body["time"], "%Y-%m-%d %H:%M:%S")


def test_chatglm_contract_errors(kb_client):
    r = kb_client.post("/", json={"prompt": "hello"})  # plain chat needs the LLM
    assert r.status_code == 400 and "retrieval-only" in r.json()["error"]["message"]  # a fix, not a retry
    assert kb_client.post("/", json={"prompt": "x", "knowledge_base": "nope"}).status_code == 404
    assert kb_client.post("/", json={"prompt": "x", "knowledge_base": "../kb"}).status_code == 400
    assert kb_client.post("/", json={"prompt": "x", "history": [["only one"]]}).status_code == 400
    assert kb_client.post("/", json={"history": []}).json()["error"]["param"] == "prompt"
    assert kb_client.post("/", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400


def test_models_list(kb_client):
    ids = [m["id"] for m in kb_client.get("/v1/models").json()["data"]]
    assert ids == ["kb:kb", "all-MiniLM-L6-v2"]  # no LLM configured: no plain-chat model; the embedding model


@pytest.mark.parametrize("route", [{"model": "kb:kb"}, {"model": "anything", "knowledge_base": "kb"}])
def test_openai_completion_with_sources(kb_client, route):
    r = kb_client.post("/v1/chat/completions", json={
        **route, "messages": [{"role": "system", "content": "be brief"},
                              {"role": "user", "content": [{"type": "text", "text": "How long do cats sleep?"}]}],
        "temperature": 0.1, "top_p": 0.5, "max_tokens": 64})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == route["model"]
    assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["finish_reason"] == "stop"
    assert body["sources"][0]["source"] == "cats.md" and body["mode"] == "retrieval-only"


def test_openai_stream(kb_client):
    r = kb_client.post("/v1/chat/completions", json={
        "model": "kb:kb", "stream": True, "messages": [{"role": "user", "content": "长城有多长？"}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == chunks[0]["id"] for e in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in chunks)
    assert "长城" in text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["sources"][0]["source"] == "长城.txt"


def test_openai_errors(kb_client):
    def post(body):
        return kb_client.post("/v1/chat/completions", json=body)

    user = [{"role": "user", "content": "hi"}]
    r = post({"model": "chatglm2-6b", "messages": user})  # plain chat, no LLM: a configuration to fix, not retry
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "llm.model_path" in r.json()["error"]["message"] and r.json()["error"]["param"] == "model"
    assert post({"model": "kb:nope", "messages": user}).status_code == 404
    assert post({"model": "kb:../../etc", "messages": user}).status_code == 400
    assert post({"model": "kb:kb", "messages": []}).json()["error"]["param"] == "messages"
    assert post({"model": "kb:kb", "messages": [{"role": "assistant", "content": "x"}]}).status_code == 400
    assert post({"model": "kb:kb", "messages": user, "temperature": 3}).json()["error"]["param"] == "temperature"
    r = post({"model": "chatglm2-6b", "messages": user, "stream": True})
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"


# -- errors are JSON, the process survives ---------------------------------------------------------------------
def test_errors_are_json(kb_client, monkeypatch):
    for r in (kb_client.get("/nowhere"), kb_client.put("/knowledge_bases"), kb_client.post("/", json={})):
        assert r.headers["content-type"] == "application/json" and r.json()["error"]["message"]
    engine = kb_client.app.state.ctx.engine

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "search", broken)
    r = kb_client.post("/knowledge_bases/kb/search", json={"query": "x"})
    assert r.status_code == 500 and r.json()["error"]["message"].startswith("internal error (RuntimeError)")
    monkeypatch.undo()
    assert kb_client.post("/knowledge_bases/kb/search", json={"query": "x"}).status_code == 200


# -- auth ------------------------------------------------------------------------------------------------------
def all_operations(client):
    for path, item in client.app.openapi()["paths"].items():
        for method in item:
            yield method.upper(), path.replace("{name}", "kb").replace("{source}", "a.txt")


def test_api_key_guards_every_endpoint_but_health(settings, embedder):
    from kb_qa.app import App

    app = App(with_api(settings, api_key="s3cret"))
    app.__dict__["embeddings"] = embedder
    c = make_client(app)
    assert c.get("/health").status_code == 200
    ops = list(all_operations(c)) + [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/nowhere")]
    assert len(ops) >= 12
    for method, path in ops:
        if path == "/health":
            continue
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                        {"Authorization": "s3cret"}):
            r = c.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["error"]["message"]
    ok = {"Authorization": "Bearer s3cret"}
    assert c.post("/knowledge_bases", json={"name": "k"}, headers=ok).status_code == 201
    assert c.get("/knowledge_bases", headers=ok).json()[0]["name"] == "k"
    assert c.get("/openapi.json", headers=ok).json()["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# -- CORS ------------------------------------------------------------------------------------------------------
def test_cors_off_by_default(client):
    r = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = client.options("/knowledge_bases", headers={"Origin": "http://evil.example",
                                                      "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


def test_cors_when_configured(settings, embedder):
    from kb_qa.app import App

    app = App(with_api(settings, cors_origins=["http://ui.example"], api_key="k"))
    app.__dict__["embeddings"] = embedder
    c = make_client(app)
    pre = c.options("/knowledge_bases", headers={"Origin": "http://ui.example",
                                                 "Access-Control-Request-Method": "GET",
                                                 "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ui.example"
    r = c.get("/knowledge_bases", headers={"Origin": "http://ui.example"})  # no key: 401, still readable by the UI
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://ui.example"
    other = c.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# -- size limits -----------------------------------------------------------------------------------------------
def test_request_and_upload_size_limits(settings, embedder):
    from kb_qa.app import App

    settings = with_api(settings, max_request_mb=0.5)
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"max_file_mb": 0.1})})
    app = App(settings)
    app.__dict__["embeddings"] = embedder
    c = make_client(app)
    big = b"x" * (600 * 1024)
    r = c.post("/knowledge_bases", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "api.max_request_mb" in r.json()["error"]["message"]

    def chunked():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b"y" * (100 * 1024)

    r = c.post("/knowledge_bases/kb/documents", content=chunked(),
               headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert r.status_code == 413 and r.json()["error"]["message"].startswith("request body over the limit")
    r = c.post("/knowledge_bases/kb/documents", files=[("files", ("ok.txt", b"fine")),
                                                       ("files", ("big.txt", b"z" * (200 * 1024)))])
    assert r.status_code == 413 and "ingest.max_file_mb" in r.json()["error"]["message"]
    assert not (app.docs_root / "kb").exists()  # nothing stored
    assert c.get("/health").status_code == 200


# -- generation capacity ---------------------------------------------------------------------------------------
def test_gate_queue_bound_and_order():
    gate = GenerationGate("m", max_queue=2, wait_timeout_s=5)
    log = []

    async def user(i, hold):
        async with gate.slot():
            log.append(("in", i))
            await anyio.sleep(hold)
            log.append(("out", i))

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(user, 0, 0.3)
            await anyio.sleep(0.05)
            tg.start_soon(user, 1, 0.05)
            tg.start_soon(user, 2, 0.05)
            await anyio.sleep(0.05)
            assert gate.status().waiting == 2
            with pytest.raises(Overloaded, match="max_queue"):
                await gate.acquire()

    anyio.run(main)
    # one at a time: every "in" is followed by its own "out"
    assert [e for e, _ in log] == ["in", "out"] * 3
    assert gate.status() == type(gate.status())("m", False, 0, 2)


def test_gate_wait_timeout():
    gate = GenerationGate("m", max_queue=4, wait_timeout_s=0.1)
    assert gate.try_acquire()

    async def main():
        with pytest.raises(Overloaded, match="waited"):
            await gate.acquire()

    anyio.run(main)
    gate.release()
    assert gate.status().waiting == 0 and not gate.status().busy


class SlowLLM:
    """Test double for the plumbing only (the real model is tested in test_api_server.py): generates slowly and
    records how many generations overlap."""

    name = "m"
    max_new_tokens = 16

    def __init__(self, delay=0.15):
        self.delay, self.active, self.peak, self.calls = delay, 0, 0, 0
        self.lock = threading.Lock()

    def describe(self):
        return "slow test double"

    def count_prompt_tokens(self, question, history=()):
        return len(question)

    def stream_chat(self, question, history=(), **overrides):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        try:
            for word in ("slow ", "answer"):
                time.sleep(self.delay)
                yield word
        finally:
            with self.lock:
                self.active -= 1


def test_one_generation_at_a_time_and_503_beyond_the_queue(settings, embedder):
    from kb_qa.app import App

    llm = SlowLLM()
    app = App(with_api(settings, max_queue=2), embeddings=embedder, llm=llm)
    c = make_client(app)
    results = []

    def ask(stream):
        r = c.post("/v1/chat/completions", json={"model": "m", "stream": stream,
                                                 "messages": [{"role": "user", "content": "q"}]})
        results.append((r.status_code, r.headers.get("retry-after"), r.text))

    threads = [threading.Thread(target=ask, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(30)
    codes = sorted(code for code, _, _ in results)
    assert codes == [200, 200, 200, 429, 429, 429], results  # the waiting room (max_queue) is full: come back
    assert all(retry == "1" for code, retry, _ in results if code == 429)
    assert all(json.loads(text)["error"]["code"] == "server_busy" for code, _, text in results if code == 429)
    assert llm.peak == 1 and llm.calls == 3
    assert c.get("/health").json()["generation"] == {"model": "m", "busy": False, "waiting": 0, "max_queue": 2}
    # the slot was given back after every kind of request: another one goes straight through
    r = c.post("/", json={"prompt": "again", "max_length": 100, "temperature": 0})
    assert r.status_code == 200 and r.json()["response"] == "slow answer" and r.json()["mode"] == "chat"
    assert c.post("/", json={"prompt": "x" * 200, "max_length": 100}).status_code == 400


def test_stream_closed_early_frees_the_model(settings, embedder):
    from kb_qa.app import App

    llm = SlowLLM(delay=0.05)
    c = make_client(App(settings, embeddings=embedder, llm=llm))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "q"}]}
    with c.stream("POST", "/v1/chat/completions", json=body) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    deadline = time.time() + 5
    while time.time() < deadline:
        status = c.app.state.ctx.gates["m"].status()
        if not status.busy and llm.active == 0:
            break
        time.sleep(0.02)
    assert not c.app.state.ctx.gates["m"].status().busy and llm.active == 0
    assert c.post("/v1/chat/completions", json={**body, "stream": False}).status_code == 200


class RecordingHandle:
    """Test double for the plumbing only: an LLM handle whose LangChain side records the keywords it gets."""

    name = "rec"
    tokenizer = None
    max_new_tokens = 1024

    def __init__(self):
        self.calls, self.questions = [], []
        handle = self

        class LC:
            def stream(self, prompt, **kwargs):
                handle.calls.append(("stream", kwargs))
                yield "recorded"

            def invoke(self, prompt, **kwargs):
                handle.calls.append(("invoke", kwargs))
                return "How long do cats sleep?"  # the rewritten, standalone question

        self.langchain_llm = LC()

    def describe(self):
        return "recording test double"

    def count_prompt_tokens(self, question, history=()):
        return len(question)

    def stream_chat(self, question, history=(), **overrides):
        self.calls.append(("stream_chat", overrides))
        self.questions.append(question)
        yield "recorded"


def test_sampling_parameters_reach_the_model(kb_client):
    rec = RecordingHandle()
    kb_client = with_llm(kb_client, rec)
    msgs = [{"role": "user", "content": "How long do cats sleep?"}]
    sampling = {"temperature": 0.3, "top_p": 0.4, "max_tokens": 7, "stop": ["\n\n"], "seed": 5}
    system = [{"role": "system", "content": "Answer like a pirate."}]
    r = kb_client.post("/v1/chat/completions", json={"model": "kb:kb", "messages": system + msgs, **sampling})
    assert r.status_code == 200 and r.json()["mode"] == "llm" and r.json()["sources"]
    kind, kwargs = rec.calls[-1]
    assert kind == "stream_chat"  # the packed turn, answered with the request's sampling
    assert kwargs == {"temperature": 0.3, "top_p": 0.4, "max_new_tokens": 7, "stop": ["\n\n"], "seed": 5}
    # the system text is honoured in knowledge-base mode: in front of the packed turn, which holds the passages
    assert rec.questions[-1].startswith("Answer like a pirate.\n\n") and "cats" in rec.questions[-1].lower()
    assert "fifteen hours" in rec.questions[-1]
    r = kb_client.post("/v1/chat/completions", json={"model": "rec", "messages": msgs, **sampling, "stop": "END"})
    assert r.json()["choices"][0]["message"]["content"] == "recorded"
    assert rec.calls[-1] == ("stream_chat", {"temperature": 0.3, "top_p": 0.4, "max_new_tokens": 7,
                                             "stop": ("END",), "seed": 5})
    # a vanishing temperature (logits / 1e-300 overflow) is greedy
    kb_client.post("/v1/chat/completions", json={"model": "rec", "messages": msgs, "temperature": 1e-300})
    assert rec.calls[-1] == ("stream_chat", {"temperature": 0.0})
    # top_p 0 (allowed by OpenAI, not by nucleus sampling) means greedy
    kb_client.post("/v1/chat/completions", json={"model": "rec", "messages": msgs, "top_p": 0})
    assert rec.calls[-1] == ("stream_chat", {"temperature": 0.0})
    # ChatGLM2's max_length (prompt + answer) caps the answer
    r = kb_client.post("/", json={"prompt": "x" * 10, "max_length": 15, "top_p": 0.9, "temperature": 0.5})
    assert rec.calls[-1] == ("stream_chat", {"temperature": 0.5, "top_p": 0.9, "max_new_tokens": 5})
    # a knowledge-base answer with history: the follow-up is rewritten (invoke), then answered (stream)
    r = kb_client.post("/", json={"prompt": "and dogs?", "history": [["How long do cats sleep?", "15 hours"]],
                                  "knowledge_base": "kb", "max_length": 4096, "temperature": 0.1})
    assert r.status_code == 200 and [c[0] for c in rec.calls[-2:]] == ["invoke", "stream_chat"]
    assert rec.calls[-1][1]["temperature"] == 0.1 and rec.calls[-1][1]["max_new_tokens"] <= 2048


def test_error_mid_stream_is_reported_in_band_and_frees_the_model(client):
    class Failing(SlowLLM):
        def stream_chat(self, question, history=(), **overrides):
            yield "partial "
            raise RuntimeError("GPU fell off the bus")

    client = with_llm(client, Failing(delay=0))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "q"}]}
    r = client.post("/v1/chat/completions", json=body)
    events = sse_events(r.text)
    assert r.status_code == 200 and events[-1] == "[DONE]"
    assert events[1]["choices"][0]["delta"]["content"] == "partial "
    assert "GPU fell off the bus" in events[-2]["error"]["message"]
    assert not client.app.state.ctx.gates["m"].status().busy
    r = client.post("/v1/chat/completions", json={**body, "stream": False})  # non-streaming: a JSON 500
    assert r.status_code == 500 and r.json()["error"]["message"].startswith("internal error")
    assert not client.app.state.ctx.gates["m"].status().busy


# -- issue 18.6: edges that must be 400s ------------------------------------------------------------------------
def test_infinite_number_and_lone_surrogate_are_400(kb_client):
    raw = b'{"query": "x", "top_k": 1e400}'  # json.loads gives inf: not an int
    r = kb_client.post("/knowledge_bases/kb/search", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_k"
    for path, raw in [("/knowledge_bases/kb/search", b'{"query": "\\ud800 cats"}'),
                      ("/v1/chat/completions", b'{"model": "kb:kb", "messages": [{"role": "user", '
                                               b'"content": "\\udfff"}]}'),
                      ("/v1/embeddings", b'{"model": "all-MiniLM-L6-v2", "input": ["ok", "\\ud83d"]}')]:
        r = kb_client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, r.text)
        message = r.json()["error"]["message"]
        assert "surrogate" in message or "unicode" in message, message


def test_refused_document_removal_removes_nothing(kb_client, app, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me", encoding="utf-8")
    stored = app.docs_root / "kb" / "paris.txt"
    stored.unlink()
    stored.symlink_to(outside)  # an indexed document's file swapped for a link out of the KB after ingest
    before = {d["source"] for d in kb_client.get("/knowledge_bases/kb/documents").json()}
    r = kb_client.delete("/knowledge_bases/kb/documents/paris.txt")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert outside.read_text(encoding="utf-8") == "keep me" and stored.is_symlink()
    assert {d["source"] for d in kb_client.get("/knowledge_bases/kb/documents").json()} == before


def test_api_generates_under_the_apps_one_lock(settings, embedder):
    """The API holds no model or lock of its own: while another front end of the same App generates (holds
    app.generation_lock), an API answer waits for it."""
    from kb_qa.app import App

    llm = SlowLLM(delay=0)
    app = App(settings, embeddings=embedder, llm=llm)
    c = make_client(app)
    assert c.app.state.ctx.engine.llm() is app.llm
    done = threading.Event()

    def ask():
        c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "q"}]})
        done.set()

    with app.generation_lock:  # e.g. the web page answering in the same process
        worker = threading.Thread(target=ask)
        worker.start()
        assert not done.wait(0.5) and llm.calls == 0
    worker.join(10)
    assert done.is_set() and llm.calls == 1


# -- the wire-format bullets that the live tests do not reach ---------------------------------------------
def test_every_unsupported_parameter_is_a_400_naming_it_and_the_harmless_forms_pass(kb_client):
    user = [{"role": "user", "content": "How long do cats sleep?"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    refused = [({"n": 3}, "n"), ({"tools": [tool]}, "tools"), ({"functions": [tool["function"]]}, "functions"),
               ({"tool_choice": "required"}, "tool_choice"),
               ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
               ({"response_format": {"type": "json_object"}}, "response_format"),
               ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
                "response_format"),
               ({"logprobs": True}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs")]
    for extra, param in refused:
        for stream in (False, True):  # a stream is refused before its status line, as JSON
            r = kb_client.post("/v1/chat/completions",
                               json={"model": "kb:kb", "messages": user, "stream": stream, **extra})
            assert r.status_code == 400 and r.headers["content-type"] == "application/json", (extra, r.text)
            error = r.json()["error"]
            assert error["param"] == param and error["code"] == "unsupported_parameter", (extra, error)
            assert param in error["message"] or "not supported" in error["message"], error
    image = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]
    r = kb_client.post("/v1/chat/completions", json={"model": "kb:kb", "messages": image})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[1]"
    assert "image_url" in r.json()["error"]["message"]
    harmless = [{"n": 1}, {"tools": []}, {"tool_choice": "none"}, {"tool_choice": "auto"},
                {"response_format": {"type": "text"}}, {"logprobs": False}, {"top_logprobs": 0}]
    for extra in harmless:
        r = kb_client.post("/v1/chat/completions", json={"model": "kb:kb", "messages": user, **extra})
        assert r.status_code == 200 and r.json()["sources"][0]["source"] == "cats.md", (extra, r.text)


def test_sources_block_on_request_or_by_setting_streamed_or_not(kb_client):
    body = {"model": "kb:kb", "messages": [{"role": "user", "content": "How long do cats sleep?"}]}

    def text_of(client, **extra):
        plain = client.post("/v1/chat/completions", json={**body, **extra}).json()
        events = sse_events(client.post("/v1/chat/completions", json={**body, **extra, "stream": True}).text)
        streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
        assert plain["sources"][0]["source"] == "cats.md"  # the extra field is there either way
        return plain["choices"][0]["message"]["content"], streamed

    plain, streamed = text_of(kb_client)
    assert "**Sources**" not in plain and "**Sources**" not in streamed
    plain, streamed = text_of(kb_client, include_sources=True)
    assert plain == streamed
    answer, block = plain.rsplit("\n\n**Sources**\n\n", 1)  # after the answer, numbered as it cites them
    assert "fifteen hours" in answer and "[1] kb: cats.md" in answer
    lines = block.splitlines()
    assert lines[0] == "1. kb: cats.md § Cats" and [line.split(".")[0] for line in lines] == \
        [str(n) for n in range(1, len(lines) + 1)]
    app = kb_client.app.state.ctx.app
    app.settings.api.sources_block = True  # for clients that cannot send an extra field (Open WebUI)
    try:
        by_setting, _ = text_of(kb_client)
        assert by_setting == plain
        opted_out, _ = text_of(kb_client, include_sources=False)
        assert "**Sources**" not in opted_out
    finally:
        app.settings.api.sources_block = False


def test_system_message_reaches_plain_chat(kb_client):
    rec = RecordingHandle()
    client = with_llm(kb_client, rec)
    r = client.post("/v1/chat/completions", json={"model": "rec", "messages": [
        {"role": "system", "content": "Answer like a pirate."}, {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    assert rec.questions[-1] == "Answer like a pirate.\n\nBe brief.\n\nhi"


def test_a_wait_that_times_out_is_503_with_retry_after(settings, embedder):
    from kb_qa.app import App

    c = make_client(App(settings, embeddings=embedder, llm=SlowLLM()), wait_timeout_s=0.2)
    gate = c.app.state.ctx.gate("m")
    assert gate.try_acquire()  # the model is busy for longer than a request may wait
    try:
        for stream in (False, True):
            r = c.post("/v1/chat/completions", json={"model": "m", "stream": stream,
                                                     "messages": [{"role": "user", "content": "q"}]})
            assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text
            error = r.json()["error"]
            assert error["code"] == "server_busy" and error["type"] == "server_error" and "waited" in error["message"]
    finally:
        gate.release()
    assert c.post("/v1/chat/completions", json={"model": "m", "messages": [
        {"role": "user", "content": "q"}]}).status_code == 200


def test_embeddings_dimensions_and_inputs(kb_client):
    def post(**body):
        return kb_client.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", **body})

    assert len(post(input="cats", dimensions=384).json()["data"][0]["embedding"]) == 384
    r = post(input="cats", dimensions=256)  # never a silent 200 with other-sized vectors
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions" and "384" in r.json()["error"]["message"]
    r = post(input=["a", "b", "c"])
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and body["usage"]["prompt_tokens"] >= 3 * 3
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] and body["model"] == "all-MiniLM-L6-v2"
    assert kb_client.post("/v1/embeddings", json={"model": "kb:kb", "input": "x"}).status_code == 200
    assert kb_client.post("/v1/embeddings", json={"model": "kb:nope", "input": "x"}).status_code == 404
    assert post(input=[]).status_code == 400
