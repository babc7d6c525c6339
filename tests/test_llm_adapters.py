"""PEFT LoRA adapters on ChatGLM2's module names: built here, applied through `llm.adapter` and through
`convert --merge-adapter`, compared with a reference merged by the test itself in ChatGLM2's own (fused QKV) space."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_chatglm2 import build_tiny_chatglm2, load_original_state_dict

from kb_qa.errors import UsageError
from kb_qa.llm.adapters import AdapterError
from kb_qa.llm.loader import load_chatglm2

pytest_plugins = ["tiny_chatglm2"]

IDS = [30, 41, 97, 12, 200, 5, 77, 64, 3, 150]
TARGETS = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


def build_lora(directory, base: dict, *, r=4, alpha=16, rslora=False, fmt="safetensors", adapter_name=None,
               seed=1, **extra_config):
    """A PEFT LoRA folder for the base state dict (every layer, all four ChatGLM2 targets). Returns the reference
    merged state dict: W + scaling * B @ A on the fused weights."""
    g = torch.Generator().manual_seed(seed)
    tensors, merged = {}, dict(base)
    scaling = alpha / math.sqrt(r) if rslora else alpha / r
    for name, weight in base.items():
        module = name.removesuffix(".weight")
        if not (name.endswith(".weight") and module.endswith(TARGETS)):
            continue
        a = torch.randn(r, weight.shape[1], generator=g) * 0.2
        b = torch.randn(weight.shape[0], r, generator=g) * 0.2
        tag = f".{adapter_name}" if adapter_name else ""
        tensors[f"base_model.model.{module}.lora_A{tag}.weight"] = a
        tensors[f"base_model.model.{module}.lora_B{tag}.weight"] = b
        merged[name] = weight + scaling * (b @ a)
    directory.mkdir(parents=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.1,
              "target_modules": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"], "bias": "none",
              "use_rslora": rslora, "fan_in_fan_out": False, "base_model_name_or_path": "THUDM/chatglm2-6b",
              **extra_config}
    (directory / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(directory / "adapter_model.safetensors"))
    else:
        torch.save(tensors, directory / "adapter_model.bin")
    return merged


def _logits(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS])).logits[0]


@pytest.fixture(scope="module")
def base(tiny_dir):
    return load_original_state_dict(tiny_dir)


@pytest.mark.parametrize("variant", [
    {}, {"rslora": True, "fmt": "bin", "adapter_name": "default"}, {"r": 2, "alpha": 8, "seed": 7},
])
def test_adapter_logits_equal_the_merged_reference(tmp_path, tiny_dir, tiny_tokenizer_model, base, variant):
    merged = build_lora(tmp_path / "lora", base, **variant)
    reference = load_chatglm2(build_tiny_chatglm2(tmp_path / "ref", tokenizer_model=tiny_tokenizer_model,
                                                  state_dict=merged), device="cpu", dtype="float32")
    with_adapter = load_chatglm2(tiny_dir, device="cpu", dtype="float32", adapter=tmp_path / "lora")
    plain = load_chatglm2(tiny_dir, device="cpu", dtype="float32")
    assert with_adapter.describe().endswith("(adapter lora)")
    torch.testing.assert_close(_logits(with_adapter.model), _logits(reference.model), rtol=0, atol=2e-5)
    assert (_logits(plain.model) - _logits(reference.model)).abs().max() > 0.1  # the adapter matters


def test_convert_merge_adapter_writes_merged_weights(tmp_path, tiny_dir, tiny_tokenizer_model, base):
    from transformers import GlmForCausalLM

    from kb_qa.llm.convert import main

    merged = build_lora(tmp_path / "lora", base, seed=3)
    assert main([str(tiny_dir), str(tmp_path / "out"), "--merge-adapter", str(tmp_path / "lora"),
                 "--no-fast-tokenizer"]) == 0
    written = GlmForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    reference = load_chatglm2(build_tiny_chatglm2(tmp_path / "ref", tokenizer_model=tiny_tokenizer_model,
                                                  state_dict=merged), device="cpu", dtype="float32")
    torch.testing.assert_close(_logits(written), _logits(reference.model), rtol=0, atol=2e-5)


def test_adapter_on_a_converted_folder_splits_qkv(tmp_path, tiny_dir, tiny_tokenizer_model, base):
    from kb_qa.llm.convert import convert_checkpoint

    merged = build_lora(tmp_path / "lora", base, seed=4)
    converted = convert_checkpoint(tiny_dir, tmp_path / "glm", fast_tokenizer=False)
    with_adapter = load_chatglm2(converted, device="cpu", dtype="float32", adapter=tmp_path / "lora")
    reference = load_chatglm2(build_tiny_chatglm2(tmp_path / "ref", tokenizer_model=tiny_tokenizer_model,
                                                  state_dict=merged), device="cpu", dtype="float32")
    torch.testing.assert_close(_logits(with_adapter.model), _logits(reference.model), rtol=0, atol=2e-5)


@pytest.mark.parametrize("extra,match", [({"use_dora": True}, "use_dora"), ({"bias": "all"}, "bias"),
                                         ({"peft_type": "PREFIX_TUNING"}, "peft_type"),
                                         ({"modules_to_save": ["output_layer"]}, "modules_to_save")])
def test_unsupported_adapters_are_refused(tmp_path, tiny_dir, base, extra, match):
    build_lora(tmp_path / "lora", base, **extra)
    with pytest.raises(AdapterError, match=match) as caught:
        load_chatglm2(tiny_dir, device="cpu", dtype="float32", adapter=tmp_path / "lora")
    assert isinstance(caught.value, UsageError) and str(tmp_path / "lora") in str(caught.value)


def test_adapter_setting_reaches_the_loader(tmp_path, tiny_dir, base):
    from kb_qa.llm import resolve_llm
    from kb_qa.settings import LLMSettings

    build_lora(tmp_path / "lora", base)
    handle, description = resolve_llm(LLMSettings(model_path=str(tiny_dir), device="cpu", temperature=0,
                                                  adapter=str(tmp_path / "lora")))
    assert description == "ChatGLM2 on cpu fp32 (adapter lora)"
