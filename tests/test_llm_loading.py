"""Loading: the handle and retrieval-only mode, device/dtype choice, the memory check, the local HF cache by repo id,
the convert CLI (output loadable by plain transformers, no remote code), and the ask/chat command lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_chatglm2 import build_tiny_chatglm2

from kb_qa.llm import build_chat_prompt, load_llm, resolve_llm
from kb_qa.llm.config import parse_chatglm2_config, to_glm_config
from kb_qa.llm.loader import (
    GiB,
    InsufficientMemoryError,
    ModelLoadError,
    check_memory,
    estimate_for,
    load_chatglm2,
    pick_dtype,
    resolve_checkpoint_path,
)
from kb_qa.settings import LLMSettings

pytest_plugins = ["tiny_chatglm2"]  # the tiny checkpoint fixtures: tiny_dir, tiny_loaded, ...

REPO = Path(__file__).resolve().parents[1]
CHATGLM2_6B = {"model_type": "chatglm", "hidden_size": 4096, "num_layers": 28, "num_attention_heads": 32,
               "kv_channels": 128, "multi_query_attention": True, "multi_query_group_num": 2, "ffn_hidden_size": 13696,
               "padded_vocab_size": 65024, "seq_length": 32768, "add_qkv_bias": True}


def _env() -> dict:
    # conftest.py has cleared the developer's KB_QA_* variables and set this test's own (KB_QA_HOME: no settings
    # file, no data of the repository's), and PYTHONPATH (this checkout + the subprocess network guard).
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


# -- handle / retrieval-only -------------------------------------------------------------------------------------------
def test_handle_for_a_checkpoint_folder(tiny_dir):
    handle, description = resolve_llm(LLMSettings(model_path=str(tiny_dir), device="cpu", temperature=0,
                                                  max_new_tokens=8))
    assert description == handle.describe() == "ChatGLM2 on cpu fp32"
    prompt = build_chat_prompt("你好")
    assert handle.tokenizer.count_tokens(prompt) == len(handle.tokenizer.encode(prompt))
    assert handle.count_prompt_tokens("你好") == handle.tokenizer.count_tokens(prompt)
    assert "".join(handle.stream_chat("你好")) == handle.chat("你好") == handle.langchain_llm.invoke("你好")


@pytest.mark.parametrize("settings,reason", [
    (LLMSettings(model_path=None), "retrieval-only: no model_path configured"),
    (LLMSettings(model_path="/nonexistent/chatglm2-6b"), "not found"),
    (LLMSettings(model_path="nobody/not-cached-model"), "not found"),
    (LLMSettings(backend="none", model_path="/anything"), "llm.backend is 'none'"),
])
def test_retrieval_only_when_no_model(settings, reason):
    handle, why = resolve_llm(settings)
    assert handle is None and reason in why and why.startswith("retrieval-only")
    assert load_llm(settings) is None


def test_repo_id_from_the_local_hf_cache(tmp_path, tiny_tokenizer_model, monkeypatch):
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--THUDM--tiny-chatglm2"
    build_tiny_chatglm2(repo / "snapshots" / commit, tokenizer_model=tiny_tokenizer_model, shards=1)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_checkpoint_path("THUDM/tiny-chatglm2") == repo / "snapshots" / commit
    assert resolve_checkpoint_path("THUDM/other") is None
    handle = load_llm(LLMSettings(model_path="THUDM/tiny-chatglm2", device="cpu"))
    assert handle is not None and handle.describe() == "ChatGLM2 on cpu fp32"


# -- device, dtype, memory ---------------------------------------------------------------------------------------------
def test_dtype_choice_and_bf16_on_cpu(tiny_dir, tiny_loaded):
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(ModelLoadError, match="float16"):
        pick_dtype("float16", torch.device("cpu"))
    bf16 = load_chatglm2(tiny_dir, device="cpu", dtype="bfloat16")
    assert bf16.model.lm_head.weight.dtype == torch.bfloat16 and bf16.describe() == "ChatGLM2 on cpu bf16"
    assert bf16.model.model.rotary_emb.inv_freq.dtype == torch.float32  # RoPE frequencies stay exact
    ids = bf16.tokenizer.encode(build_chat_prompt("你好"))
    assert (_logits(bf16.model, ids).float() - _logits(tiny_loaded.model, ids)).abs().max() < 0.25


def test_memory_check_fails_early_with_needed_and_free(tiny_dir):
    with pytest.raises(InsufficientMemoryError, match=r"needs about .* GiB, 0\.0 GiB free") as info:
        load_chatglm2(tiny_dir, device="cpu", free_memory=lambda device: 1024)
    assert info.value.needed_bytes > info.value.free_bytes == 1024


def test_memory_estimate_for_chatglm2_6b_and_the_hint():
    glm = to_glm_config(parse_chatglm2_config(CHATGLM2_6B))
    bf16 = estimate_for(glm, torch.bfloat16, "none", 8192)
    assert 12.0 * GiB < bf16 < 14.0 * GiB  # official minimum: 13.1 GB (fp16)
    int8, int4 = estimate_for(glm, torch.bfloat16, "int8", 8192), estimate_for(glm, torch.bfloat16, "int4", 8192)
    assert 6.5 * GiB < int8 < 8.5 * GiB and 4.0 * GiB < int4 < 5.5 * GiB  # official: 8.2 / 5.5 GB
    with pytest.raises(InsufficientMemoryError) as info:
        check_memory(glm, device=torch.device("cuda", 0), dtype=torch.bfloat16, quantization="none",
                     context_tokens=8192, free_bytes=int(7.8 * GiB))
    message = str(info.value)
    assert "ChatGLM2 (6.24B parameters) in bfloat16 on cuda:0 needs about" in message
    assert "7.8 GiB free" in message and "llm.quantization=int4" in message and "int8" not in message
    check_memory(glm, device=torch.device("cuda", 0), dtype=torch.bfloat16, quantization="int4",
                 context_tokens=8192, free_bytes=int(7.8 * GiB))  # fits: no error


def test_quantization_needs_cuda(tiny_dir):
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        load_chatglm2(tiny_dir, device="cpu", quantization="int4")


# -- convert -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tiny_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("converted") / "glm"
    command = [sys.executable, "-m", "kb_qa.llm.convert", str(tiny_dir), str(dst), "--shard-gb", "0.0002"]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return dst


def test_convert_writes_a_plain_transformers_folder(converted, tiny_loaded):
    from transformers import AutoModelForCausalLM, GlmForCausalLM

    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "glm" and config["architectures"] == ["GlmForCausalLM"]
    assert "auto_map" not in config
    shards = sorted(converted.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not list(converted.glob("*.bin"))
    model = GlmForCausalLM.from_pretrained(converted).eval()
    assert type(AutoModelForCausalLM.from_pretrained(converted)) is GlmForCausalLM  # no remote code involved
    ids = tiny_loaded.tokenizer.encode(build_chat_prompt("你好", [("a", "b")]))
    assert (_logits(model, ids) - _logits(tiny_loaded.model, ids)).abs().max().item() < 1e-6


def test_converted_tokenizer_matches_chatglm2_ids(converted, tiny_loaded):
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(converted)
    ours = tiny_loaded.tokenizer
    for text in ["你好", "Hello world, this is a test.", "a   b\n\n  c\t\td    ", "    leading", "isopropyl sop",
                 "龘𠀀 emoji 👋🏽", build_chat_prompt("你好", [("q", "a")])]:
        assert fast(text)["input_ids"] == ours.encode(text), text
        assert fast.decode(ours.encode(text), skip_special_tokens=True) == text
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "谢谢"}]
    rendered = fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "[gMASK]<sop>" + build_chat_prompt("谢谢", [("你好", "hi")])
    expected = ours.encode(build_chat_prompt("谢谢", [("你好", "hi")]))
    assert fast(rendered, add_special_tokens=False)["input_ids"] == expected


def test_converted_folder_loads_through_kb_qa(converted, tiny_loaded):
    loaded = load_chatglm2(converted, device="cpu")
    assert loaded.describe() == "ChatGLM2 on cpu fp32"
    ids = loaded.tokenizer.encode("你好")
    assert (_logits(loaded.model, ids) - _logits(tiny_loaded.model, ids)).abs().max().item() < 1e-6


def test_convert_refuses_unsupported_flags(tmp_path, tiny_tokenizer_model):
    from kb_qa.llm.convert import main

    src = build_tiny_chatglm2(tmp_path / "src", tokenizer_model=tiny_tokenizer_model, shards=1, original_rope=False)
    assert main([str(src), str(tmp_path / "dst")]) == 2


# -- command lines -----------------------------------------------------------------------------------------------------
def test_ask_no_kb_json(tiny_dir):
    result = subprocess.run(
        [sys.executable, "-m", "kb_qa.ask", "你好", "--no-kb", "--llm", str(tiny_dir), "--temperature", "0",
         "--max-new-tokens", "12", "--json"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["sources"] == [] and isinstance(out["answer"], str) and out["answer"]
    expected = load_llm(LLMSettings(model_path=str(tiny_dir), device="cpu", temperature=0, max_new_tokens=12))
    assert out["answer"] == expected.chat("你好")


def test_ask_streams_to_the_terminal(tiny_dir, capsys):
    from kb_qa.ask import main

    assert main(["你好", "--no-kb", "--llm", str(tiny_dir), "--temperature", "0", "--max-new-tokens", "6",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    handle = load_llm(LLMSettings(model_path=str(tiny_dir), device="cpu", temperature=0, max_new_tokens=6))
    assert printed == handle.chat("你好") + "\n"


def test_ask_without_a_model_or_without_no_kb_exits_unavailable(monkeypatch, capsys):
    from kb_qa.ask import main
    from kb_qa.errors import EXIT_UNAVAILABLE

    # KB_QA_HOME (conftest.py) is this test's empty folder: no settings file, no knowledge bases of the repository's.
    assert main(["你好", "--no-kb"]) == EXIT_UNAVAILABLE
    assert "there is no model" in capsys.readouterr().err
    assert main(["你好", "--no-kb", "--llm", "/nonexistent/model"]) == EXIT_UNAVAILABLE
    assert "not found" in capsys.readouterr().err
    assert main(["你好", "--kb", "no-such-kb-here"]) != 0  # without --no-kb it answers from a knowledge base
    assert "does not exist" in capsys.readouterr().err


def test_help_has_examples(capsys):
    from kb_qa.ask import build_parser as ask_parser
    from kb_qa.chat import build_parser as chat_parser

    assert "examples:" in ask_parser().format_help() and "--no-kb" in ask_parser().format_help()
    assert "clear" in chat_parser().format_help() and "stop" in chat_parser().format_help()


def test_chat_keeps_history_clear_resets_stop_quits(tiny_dir):
    from kb_qa.chat import run_chat

    handle = load_llm(LLMSettings(model_path=str(tiny_dir), device="cpu", temperature=0, max_new_tokens=6))
    seen_histories = []
    real = handle.stream_chat

    def spy(question, history=()):
        seen_histories.append(list(history))
        return real(question, history)

    handle.stream_chat = spy
    lines = iter(["你好", "hello", "clear", "again", "stop", "never read"])
    out: list[str] = []
    run_chat(handle, read=lambda prompt: next(lines), write=out.append)
    first = handle.chat("你好")
    assert seen_histories == [[], [("你好", first)], []]
    assert "(history cleared)\n" in out and "".join(out).count("ChatGLM2：") == 3
