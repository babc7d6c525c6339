"""PEFT LoRA adapters trained on ChatGLM2, merged exactly into the native GlmForCausalLM (no `peft` import).

A PEFT adapter folder holds `adapter_config.json` (peft_type LORA, r, lora_alpha, use_rslora, target_modules...) and
`adapter_model.safetensors` (or `adapter_model.bin`, read with weights_only=True) with tensors named
`base_model.model.<module>.lora_A[.default].weight` [r, in] and `.lora_B[.default].weight` [out, r].
Merged: W += scaling * B @ A, scaling = lora_alpha / r (lora_alpha / sqrt(r) with rslora), per module
alpha_pattern honoured. Modules under ChatGLM2's names (`query_key_value`, `dense`, `dense_h_to_4h`, `dense_4h_to_h`)
go through the same conversion as the base weights (weights.convert_tensor): the fused QKV delta is split by rows
into q/k/v exactly like the fused weight. Adapters trained on the native names (q_proj ...) apply as they are.
Refused, with the reason: DoRA, trained biases, modules_to_save, fan_in_fan_out, non-LoRA PEFT types.
Does not run P-tuning prefixes or write merged checkpoints (convert.py --merge-adapter does, through this module).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch

from kb_qa.errors import UsageError

CONFIG_FILE = "adapter_config.json"
_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$")


class AdapterError(UsageError):
    """The adapter cannot be applied (the message names the file and the reason)."""


def read_adapter_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise AdapterError(f"{folder}: no {CONFIG_FILE} (expected a PEFT LoRA adapter folder)")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        raise AdapterError(f"{path}: peft_type {config.get('peft_type')!r} is not supported (LoRA only)")
    for flag, why in (("use_dora", "DoRA magnitudes"), ("fan_in_fan_out", "Conv1D-style (fan_in_fan_out) weights"),
                      ("modules_to_save", "fully trained extra modules")):
        if config.get(flag):
            raise AdapterError(f"{path}: {flag}={config[flag]!r} is not supported ({why})")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{path}: bias={config['bias']!r} is not supported (only bias 'none')")
    return config


def _adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    safetensors_file, bin_file = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_file))
    if bin_file.is_file():
        state = torch.load(bin_file, map_location="cpu", weights_only=True)  # never a full unpickle
        if isinstance(state, dict):
            return state
        raise AdapterError(f"{bin_file}: expected a state dict")
    raise AdapterError(f"{folder}: no adapter_model.safetensors or adapter_model.bin")


def _alpha_for(module: str, config: dict) -> float:
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            return float(alpha)
    return float(config.get("lora_alpha", 8))


def lora_deltas(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """{base weight name (as in the adapter, e.g. transformer.encoder.layers.0.self_attention.query_key_value.weight):
    scaling * B @ A} in fp32."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in _adapter_tensors(folder).items():
        match = _LORA.match(name)
        if match is None:
            raise AdapterError(f"{folder}: unexpected adapter tensor {name!r} (LoRA A/B weights only)")
        pairs.setdefault(match["module"], {})[match["ab"]] = tensor
    deltas = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{folder}: {module} has lora_{next(iter(ab))} without its partner")
        a, b = ab["A"].float(), ab["B"].float()
        rank = a.shape[0]
        if b.shape[1] != rank:
            raise AdapterError(f"{folder}: {module} lora_B is {tuple(b.shape)}, lora_A {tuple(a.shape)}")
        alpha = _alpha_for(module, config)
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        deltas[module + ".weight"] = (b @ a) * scaling
    if not deltas:
        raise AdapterError(f"{folder}: the adapter holds no LoRA weights")
    return deltas


def native_deltas(folder: str | os.PathLike, cfg) -> dict[str, torch.Tensor]:
    """The deltas under GlmForCausalLM's names: ChatGLM2-named ones converted (QKV split) like the base weights."""
    from kb_qa.llm.config import UnsupportedCheckpointError
    from kb_qa.llm.weights import convert_tensor

    out: dict[str, torch.Tensor] = {}
    for name, delta in lora_deltas(folder).items():
        if name.startswith("model.layers."):
            out[name] = delta
            continue
        bare = name if name.startswith("transformer.") else "transformer." + name
        try:
            out.update(convert_tensor(bare, delta, cfg))
        except UnsupportedCheckpointError as error:
            raise AdapterError(f"{folder}: {error}") from None
    return out


def merge_into_model(model: torch.nn.Module, folder: str | Path, cfg) -> int:
    """Add the adapter's deltas to the loaded model's weights in place; returns how many weights changed."""
    params = dict(model.named_parameters())
    changed = 0
    for name, delta in native_deltas(folder, cfg).items():
        param = params.get(name)
        if param is None:
            raise AdapterError(f"{folder}: adapter targets {name}, which the model does not have")
        if param.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise AdapterError(f"{folder}: cannot merge into {name} stored as {param.dtype} (quantized); load the "
                               "full-precision model, or merge with `convert --merge-adapter` first")
        if tuple(param.shape) != tuple(delta.shape):
            raise AdapterError(f"{folder}: {name} delta {tuple(delta.shape)} vs weight {tuple(param.shape)}")
        with torch.no_grad():
            # Sum in fp32, then one rounding to the weight's dtype (as PEFT's merge does in the weight dtype).
            param.copy_((param.float() + delta.to(param.device)).to(param.dtype))
        changed += 1
    return changed


def layout_of(glm_config):
    """What the name conversion needs (rows of q and of k/v, layer count) from a GlmConfig."""
    from types import SimpleNamespace

    head_dim = glm_config.head_dim or glm_config.hidden_size // glm_config.num_attention_heads
    return SimpleNamespace(q_size=glm_config.num_attention_heads * head_dim,
                           kv_size=glm_config.num_key_value_heads * head_dim,
                           num_layers=glm_config.num_hidden_layers)


def apply_adapter(model: torch.nn.Module, folder: str | os.PathLike) -> int:
    """`llm.adapter`: merge the LoRA adapter at `folder` into a loaded GlmForCausalLM."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise AdapterError(f"llm.adapter {folder}: not a folder")
    return merge_into_model(model, folder, layout_of(model.config))
