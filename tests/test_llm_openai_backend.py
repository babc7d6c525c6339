"""The OpenAI-compatible backend against a stub /v1/chat/completions server on 127.0.0.1 (a random port, in a thread):
plain and streaming answers, history as messages, sampling fields, errors, and the LangChain wrapper over it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from kb_qa.llm import ApproxTokenCounter, ChatGLM2Tokenizer, load_llm
from kb_qa.llm.openai_backend import OpenAIBackendError, OpenAICompatibleClient
from kb_qa.settings import LLMSettings

pytest_plugins = ["tiny_chatglm2"]  # the tiny checkpoint fixtures: tiny_dir, tiny_loaded, ...

PIECES = ["  你好", "👋！我是", "人工智能助手", " ChatGLM2-6B", "，[[训练时间]]训练。", "\n"]
ANSWER = "你好👋！我是人工智能助手 ChatGLM2-6B，2023年训练。"


class Stub(BaseHTTPRequestHandler):
    requests: list[dict] = []
    status = 200
    failures = 10**9  # how many requests get `status` before the stub answers normally
    retry_after: str | None = None

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        if Stub.status != 200 and Stub.failures > 0:
            Stub.failures -= 1
            payload = json.dumps({"error": {"message": "model overloaded"}}).encode()
            self.send_response(Stub.status)
            if Stub.retry_after:
                self.send_header("Retry-After", Stub.retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b": keep-alive\n\n")
            first = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
            self.wfile.write(f"data: {json.dumps(first)}\n\n".encode())
            for piece in PIECES:
                event = {"id": "x", "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            return
        payload = json.dumps({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "".join(PIECES)}, "finish_reason": "stop"}]},
            ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def reset_stub():
    Stub.requests.clear()
    Stub.status, Stub.failures, Stub.retry_after = 200, 10**9, None


def _settings(base_url, **extra):
    return LLMSettings(backend="openai", openai_base_url=base_url, openai_model="chatglm2-6b",
                       openai_api_key="sk-test", temperature=0.3, top_p=0.7, max_new_tokens=64, **extra)


def test_plain_and_streaming_answers(server):
    handle = load_llm(_settings(server))
    assert handle.backend == "openai" and "chatglm2-6b" in handle.describe()
    assert handle.chat("你好") == ANSWER
    body = Stub.requests[-1]["body"]
    assert body["messages"] == [{"role": "user", "content": "你好"}]
    assert (body["model"], body["temperature"], body["top_p"], body["max_tokens"], body.get("stream", False)) == \
        ("chatglm2-6b", 0.3, 0.7, 64, False)
    assert Stub.requests[-1]["auth"] == "Bearer sk-test"
    pieces = list(handle.stream_chat("你好"))
    assert len(pieces) > 3 and "".join(pieces) == ANSWER
    assert Stub.requests[-1]["body"]["stream"] is True


def test_history_becomes_messages_and_overrides_apply(server):
    handle = load_llm(_settings(server))
    handle.chat("谢谢", [("你好", "你好👋！")], temperature=0, max_new_tokens=8)
    body = Stub.requests[-1]["body"]
    assert body["messages"] == [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好👋！"},
        {"role": "user", "content": "谢谢"},
    ]
    assert body["temperature"] == 0 and body["max_tokens"] == 8 and "top_p" not in body


class Collect(BaseCallbackHandler):
    def __init__(self):
        self.tokens = []

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)


def test_langchain_wrapper_over_the_endpoint(server):
    llm = load_llm(_settings(server)).langchain_llm
    collect = Collect()
    assert llm.invoke("你好", config={"callbacks": [collect]}) == ANSWER
    assert "".join(collect.tokens) == ANSWER
    assert "".join(llm.stream("你好", history=[("q", "a")])) == ANSWER
    assert len(Stub.requests[-1]["body"]["messages"]) == 3
    assert llm.invoke("你好", stop=["人工"]) == "你好👋！我是"
    assert Stub.requests[-1]["body"]["stop"] == ["人工"]


def test_errors_are_clear(server):
    client = OpenAICompatibleClient(server, "chatglm2-6b", max_retries=0)
    Stub.status = 503
    with pytest.raises(OpenAIBackendError, match="503: model overloaded"):
        client.chat("你好")
    with pytest.raises(OpenAIBackendError, match="503"):
        list(client.stream_chat("你好"))
    Stub.status = 400  # not retried, whatever the budget
    waits = []
    patient = OpenAICompatibleClient(server, "chatglm2-6b", max_retries=5, sleep=waits.append)
    with pytest.raises(OpenAIBackendError, match="400: model overloaded"):
        patient.chat("你好")
    assert waits == [] and len(Stub.requests) == 3
    unreachable = OpenAICompatibleClient("http://127.0.0.1:9/v1", "m", timeout_s=2, max_retries=0)
    with pytest.raises(OpenAIBackendError, match="cannot reach"):
        unreachable.chat("你好")


def test_capacity_errors_are_retried_honouring_retry_after_within_the_budget(server):
    waits = []
    Stub.status, Stub.retry_after, Stub.failures = 429, "2", 2  # two refusals, then answers
    client = OpenAICompatibleClient(server, "chatglm2-6b", max_retries=4, retry_budget_s=10, sleep=waits.append)
    assert client.chat("你好") == ANSWER
    assert waits == [2.0, 2.0] and len(Stub.requests) == 3
    Stub.status, Stub.failures = 503, 1
    waits.clear()
    assert "".join(client.stream_chat("你好")) == ANSWER  # a stream is retried before its first piece
    assert waits == [2.0]
    # the budget bounds the total wait: a server that keeps refusing fails in bounded time, saying so
    Stub.status, Stub.retry_after, Stub.failures = 503, "4", 100
    waits.clear()
    with pytest.raises(OpenAIBackendError, match=r"503: model overloaded \(after 3 attempts\)"):
        client.chat("你好")
    assert waits == [4.0, 4.0]  # a third wait would pass retry_budget_s = 10


def test_token_counts_exact_with_a_local_tokenizer_else_approximate(server, tiny_dir):
    exact = load_llm(_settings(server, model_path=str(tiny_dir)))
    assert isinstance(exact.tokenizer, ChatGLM2Tokenizer) and "over-estimated" not in exact.describe()
    approx = load_llm(_settings(server))
    assert isinstance(approx.tokenizer, ApproxTokenCounter) and "over-estimated" in approx.describe()
    text = "知识库问答 retrieval augmented generation 2023"
    assert exact.tokenizer.count_tokens(text) == len(exact.tokenizer.encode(text))
    # high on purpose (llm's counter): never under the real count, so packed prompts stay inside the window
    assert approx.tokenizer.count_tokens(text) >= exact.tokenizer.count_tokens(text)
