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
    assert ids == ["chatglm2", "kb:docs", "all-MiniLM-L6-v2"]
    assert client.models.retrieve("kb:docs").id == "kb:docs"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4")
    assert caught.value.code == "model_not_found"


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
    assert "".join(pieces) == text and finish == "length"  # 6 tokens, all of max_tokens
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
    assert last.choices[0].finish_reason in ("stop", "length")
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
        assert json.loads(body)["error"]["message"]
    assert sorted(p.name for p in (live[1].state.ctx.app.docs_root / "docs").iterdir()) == before
    assert httpx.get(live[0] + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_over_capacity_is_429_and_the_server_keeps_serving(live):
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
        assert sorted(results) == [429, 429], results  # two over the queue of one
        assert gate.status().waiting == 1
    finally:
        gate.release()
    for t in threads:
        t.join(60)
    assert sorted(results) == [200, 429, 429]
    h = httpx.get(live[0] + "/health").json()["generation"]
    assert h == {"model": "chatglm2", "busy": False, "waiting": 0, "max_queue": 1}


# -- the wire format as OpenAI clients read it ---------------------------------------------------------------------
def test_error_shapes_through_the_sdk(client):
    user = [{"role": "user", "content": "你好"}]
    cases = [
        (openai.NotFoundError, {"model": "gpt-4o", "messages": user}, "model", "model_not_found"),
        (openai.BadRequestError, {"model": "chatglm2", "messages": user, "n": 2}, "n", "unsupported_parameter"),
        (openai.BadRequestError, {"model": "chatglm2", "messages": user, "logprobs": True}, "logprobs", None),
        (openai.BadRequestError, {"model": "chatglm2", "messages": user, "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools", None),
        (openai.BadRequestError, {"model": "chatglm2", "messages": user, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
         "response_format", None),
        (openai.BadRequestError, {"model": "chatglm2", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
         "messages[0].content[0]", None),
        (openai.BadRequestError, {"model": "chatglm2", "messages": user, "temperature": 5}, "temperature", None),
        (openai.NotFoundError, {"model": "kb:missing", "messages": user}, None, "knowledge_base_not_found"),
    ]
    for error, kwargs, param, code in cases:
        with pytest.raises(error) as caught:
            client.chat.completions.create(**kwargs)
        body = caught.value.body  # the SDK hands the `error` object
        assert body["message"] and body["type"] and caught.value.param == param, (kwargs, body)
        if code:
            assert caught.value.code == code, body


def test_finish_reason_length_and_usage(client, live):
    kwargs = {"model": "chatglm2", "messages": [{"role": "user", "content": "讲一个很长的故事"}], "temperature": 0}
    short = client.chat.completions.create(max_tokens=3, **kwargs)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert short.id.startswith("chatcmpl-") and short.system_fingerprint.startswith("fp_") and short.created > 0
    tokenizer = live[1].state.ctx.engine.llm().tokenizer
    assert short.usage.prompt_tokens == tokenizer.count_tokens("[Round 1]\n\n问：讲一个很长的故事\n\n答：")
    chunks = list(client.chat.completions.create(max_tokens=3, stream=True,
                                                 stream_options={"include_usage": True}, **kwargs))
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == short.usage.model_dump()
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])


def test_seed_makes_sampling_reproducible(client):
    kwargs = {"model": "chatglm2", "messages": [{"role": "user", "content": "你好"}], "temperature": 1.0,
              "top_p": 1.0, "max_tokens": 12}
    a = [client.chat.completions.create(seed=s, **kwargs).choices[0].message.content for s in (7, 7, 8, 9, 10)]
    assert a[0] == a[1]
    assert len(set(a[1:])) > 1  # other seeds sample other answers (a random model: they differ)


def test_sources_block_and_system_in_kb_mode(client):
    answer = client.chat.completions.create(
        model="kb:docs", temperature=0, max_tokens=4, extra_body={"include_sources": True},
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "When was the Eiffel tower finished?"}])
    assert "**Sources**" in answer.choices[0].message.content and "paris.txt" in answer.choices[0].message.content


def test_knowledge_base_answers_have_usage_length_and_the_system_text_in_their_prompt(client, live):
    question = [{"role": "user", "content": "When was the Eiffel tower finished?"}]
    kwargs = {"model": "kb:docs", "temperature": 0, "max_tokens": 2}
    full = client.chat.completions.create(messages=question, **kwargs)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 2
    tokenizer = live[1].state.ctx.engine.llm().tokenizer
    bare = tokenizer.count_tokens(f"[Round 1]\n\n问：{question[0]['content']}\n\n答：")
    assert full.usage.prompt_tokens > bare + 20  # the passages and the template are in the counted prompt
    assert full.usage.total_tokens == full.usage.prompt_tokens + 2
    chunks = list(client.chat.completions.create(messages=question, stream=True,
                                                 stream_options={"include_usage": True}, **kwargs))
    assert chunks[-1].usage.model_dump() == full.usage.model_dump() and chunks[-2].choices[0].finish_reason == "length"
    system = [{"role": "system", "content": "Answer in one word."}]
    with_system = client.chat.completions.create(messages=system + question, **kwargs)
    assert with_system.model_extra["sources"] == full.model_extra["sources"]  # not part of the retrieval query
    assert with_system.usage.prompt_tokens > full.usage.prompt_tokens  # but in front of the model's turn


def test_embeddings_equal_the_knowledge_base_vectors(client, live, embedder):  # noqa: F811
    import numpy as np

    texts = ["The capital of France is Paris.", "猫喜欢睡觉。"]
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
    b64 = client.embeddings.create(model="kb:docs", input=texts)  # the SDK asks for base64 by default
    assert floats.usage.prompt_tokens > 0 and len(floats.data) == 2
    own = embedder.encode(texts)
    for item in (floats, b64):
        got = np.array([d.embedding for d in item.data], dtype=np.float32)
        assert got.shape == own.shape == (2, 384)
        cos = (got * own).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(own, axis=1)
        assert np.allclose(cos, 1.0, atol=1e-5)
    kb = live[1].state.ctx.app.kb("docs")  # the vectors the knowledge base itself stored for its chunks
    ids = kb.chunk_ids()
    chunks, stored = kb.get_chunks(ids), kb.chunk_vectors(ids)
    served = client.embeddings.create(model="kb:docs", input=[chunks[i].text for i in ids], encoding_format="float")
    got = np.array([d.embedding for d in served.data], dtype=np.float32)
    want = np.stack([stored[i] for i in ids]).astype(np.float32)
    assert got.shape == want.shape and np.allclose((got * want).sum(1), 1.0, atol=1e-4)
    one = client.embeddings.create(model="all-MiniLM-L6-v2", input="hello", encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="all-MiniLM-L6-v2", input=[[1, 2, 3]])
    assert caught.value.param == "input[0]"


def test_async_client_streams(live):
    import asyncio

    async def run():
        async with openai.AsyncOpenAI(base_url=live[0] + "/v1", api_key=KEY, max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(
                model="chatglm2", stream=True, temperature=0, max_tokens=5,
                messages=[{"role": "user", "content": "你好"}])
            return [c async for c in stream]

    chunks = asyncio.run(run())
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "length"


def test_langchain_openai_clients(live, embedder):  # noqa: F811
    lc = pytest.importorskip("langchain_openai")
    import numpy as np

    chat = lc.ChatOpenAI(model="chatglm2", base_url=live[0] + "/v1", api_key=KEY, temperature=0, max_tokens=5,
                         max_retries=0)
    reply = chat.invoke("你好")
    assert isinstance(reply.content, str) and reply.usage_metadata["output_tokens"] == 5
    assert reply.response_metadata["finish_reason"] == "length"
    assert "".join(c.content for c in chat.stream("你好")) == reply.content
    kb_chat = lc.ChatOpenAI(model="kb:docs", base_url=live[0] + "/v1", api_key=KEY, temperature=0, max_tokens=4,
                            max_retries=0, extra_body={"include_sources": True})
    cited = kb_chat.invoke("When was the Eiffel tower finished?").content  # langchain drops the `sources` field
    assert "\n\n**Sources**\n\n1. docs: paris.txt" in cited
    emb = lc.OpenAIEmbeddings(model="all-MiniLM-L6-v2", base_url=live[0] + "/v1", api_key=KEY,
                              check_embedding_ctx_length=False)  # strings, not tiktoken ids (and no download)
    vectors = np.array(emb.embed_documents(["Cats sleep a lot.", "Paris"]))
    assert vectors.shape == (2, 384) and np.allclose(vectors, embedder.encode(["Cats sleep a lot.", "Paris"]),
                                                     atol=1e-5)


def test_retrying_backend_under_max_queue_one(live):
    """kb_qa's own openai backend pointed at this API (api.max_queue = 1): three concurrent callers all get
    answers; the ones refused with 429 come back after Retry-After."""
    from kb_qa.llm.openai_backend import OpenAICompatibleClient
    from kb_qa.llm.text import SamplingParams

    client = OpenAICompatibleClient(live[0] + "/v1", "chatglm2", api_key=KEY, max_retries=20, retry_budget_s=60,
                                    params=SamplingParams(max_new_tokens=12, temperature=0))
    gate = live[1].state.ctx.gate("chatglm2")
    results = []

    def ask():
        try:
            results.append("".join(client.stream_chat("讲一个故事")))
        except Exception as exc:  # noqa: BLE001
            results.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    assert gate.try_acquire()  # busy, so the three arrive together and one of them is refused
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
    finally:
        gate.release()
    for t in threads:
        t.join(90)
    assert len(results) == 3 and all(isinstance(r, str) for r in results), results
