"""`python -m kb_qa.api --workers N` (issue 14, "the model past one GPU"): N uvicorn worker processes, each with
its own App, in front of one server that owns the model and its queue (`llm.backend: openai`; in production
`vllm serve`, here a kb_qa API on the tiny ChatGLM2 checkpoint standing in for it). Concurrent clients of the
workers all get the upstream model's answers; a local model with several workers is refused with the fix."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from test_api_server import serve
from tiny_chatglm2 import tiny_dir, tiny_tokenizer_model  # noqa: F401 (fixtures)

openai = pytest.importorskip("openai")

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _workers(pid: int) -> list[int]:
    """uvicorn's worker processes under supervisor `pid`: its children started by multiprocessing's spawn (the
    other child, multiprocessing's resource tracker, is not a worker). Linux /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat, cmdline = (entry / "stat").read_text(), (entry / "cmdline").read_bytes()
            except OSError:  # the process ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def upstream(tiny_dir, tmp_path_factory):  # noqa: F811
    """The stand-in for `vllm serve`: one kb_qa API holding the tiny model (base URL of its /v1)."""
    from kb_qa.api import create_app
    from kb_qa.app import App
    from kb_qa.settings import load_settings

    root = tmp_path_factory.mktemp("upstream")
    settings = load_settings(overrides={
        "paths": {"knowledge_base_root": str(root / "kb"), "vector_store_root": str(root / "vs")},
        "llm": {"backend": "chatglm2", "model_path": str(tiny_dir), "device": "cpu", "dtype": "float32",
                "max_context_tokens": 2048, "max_new_tokens": 12},
    })
    api = create_app(App(settings), preload=True, wait_timeout_s=60)
    with serve(api) as url:
        deadline = time.monotonic() + 60
        while httpx.get(url + "/health").json()["llm"]["state"] != "loaded":
            assert time.monotonic() < deadline, "the upstream model did not load"
            time.sleep(0.1)
        yield url


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts worker processes through /proc")
def test_two_workers_in_front_of_one_model_server(upstream, tmp_path):
    config = tmp_path / "workers.yaml"
    config.write_text(yaml.safe_dump({
        "paths": {"knowledge_base_root": str(tmp_path / "kb"), "vector_store_root": str(tmp_path / "vs")},
        "llm": {"backend": "openai", "openai_base_url": upstream + "/v1", "openai_model": "chatglm2",
                "max_new_tokens": 12},
    }), encoding="utf-8")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "kb_qa.api", "--workers", "2", "--port", str(port), "--config", str(config),
         "--log-level", "warning"],
        cwd=REPO, env={**os.environ, "KB_QA_HOME": str(tmp_path)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200 and len(_workers(server.pid)) == 2:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the two workers did not come up"
            time.sleep(0.3)

        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        direct = openai.OpenAI(base_url=upstream + "/v1", api_key="unused", max_retries=0, timeout=120)
        question = [{"role": "user", "content": "你好"}]
        expected = direct.chat.completions.create(model="chatglm2", messages=question, temperature=0,
                                                  max_tokens=8).choices[0].message.content
        answers: list[object] = []

        def ask() -> None:
            try:
                reply = client.chat.completions.create(model="chatglm2", messages=question, temperature=0,
                                                       max_tokens=8)
                answers.append(reply.choices[0].message.content)
            except Exception as exc:  # noqa: BLE001 - collected and shown by the assertion
                answers.append(exc)

        callers = [threading.Thread(target=ask) for _ in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(180)
        assert answers == [expected] * 4, answers  # greedy: every worker relays the one model's answer
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_a_local_model_with_several_workers_is_refused_with_the_fix(tmp_path, tiny_dir):  # noqa: F811
    config = tmp_path / "local.yaml"
    config.write_text(yaml.safe_dump({"llm": {"backend": "chatglm2", "model_path": str(tiny_dir)}}),
                      encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "kb_qa.api", "--workers", "3", "--config", str(config)], cwd=REPO,
        env={**os.environ, "KB_QA_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--workers 3" in result.stderr and "llm.backend: openai" in result.stderr
