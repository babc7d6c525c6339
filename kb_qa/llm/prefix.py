"""P-tuning v2 checkpoints of the official ChatGLM2-6B `ptuning` scripts, run as the past key/values prefix they are.

A checkpoint folder holds config.json with `pre_seq_len` (P) and optionally `prefix_projection`, and weights with
`transformer.prefix_encoder.embedding.weight` [P, L*2*G*D] (L layers, G KV groups, D head dim), plus
`transformer.prefix_encoder.trans.{0,2}.{weight,bias}` when prefix_projection (Linear(L*2*G*D, hidden), tanh,
Linear(hidden, L*2*G*D)). The original views the encoder output as [P, L*2, G, D]: layer l's key is slice 2l, its
value 2l+1, used as-is (no RoPE) as a P-token past, every prompt token attending to it, positions counting from 0.

Native form: a DynamicCache pre-filled with those keys/values. transformers' generate then places the prompt at
positions P.., not 0..; with RoPE, R(p+P)q . R(P)k = R(p)q . k (rotations compose, and are orthogonal), and
prompt-to-prompt attention depends on relative positions only, so the prefix keys are stored rotated by +P and the
result is the original's.
Does not train, and does not merge (a prefix cannot be folded into weights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from kb_qa.errors import UsageError

PREFIX = "transformer.prefix_encoder."


class PrefixError(UsageError):
    """The P-tuning checkpoint cannot be used (the message names the folder and the reason)."""


def is_ptuning_folder(folder: str | Path) -> bool:
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    with open(config, encoding="utf-8") as handle:
        return bool(json.load(handle).get("pre_seq_len"))


class PrefixKV:
    """Per-layer prefix keys/values in the native cache layout: [1, G, P, D] each, keys pre-rotated by +P."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = keys, values
        self.length = keys[0].shape[2]

    def cache(self, batch_size: int):
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            cache.update(k.expand(batch_size, -1, -1, -1).contiguous(),
                         v.expand(batch_size, -1, -1, -1).contiguous(), layer)
        return cache


def _encoder_output(tensors: dict[str, torch.Tensor], projection: bool, folder: Path) -> torch.Tensor:
    try:
        out = tensors["embedding.weight"].float()
        if projection:
            out = torch.tanh(out @ tensors["trans.0.weight"].float().t() + tensors["trans.0.bias"].float())
            out = out @ tensors["trans.2.weight"].float().t() + tensors["trans.2.bias"].float()
    except KeyError as missing:
        raise PrefixError(f"{folder}: P-tuning weights lack {PREFIX}{missing.args[0]}") from None
    return out  # [P, L*2*G*D]


def load_prefix(folder: str | os.PathLike, model) -> PrefixKV:
    """The prefix of the P-tuning checkpoint at `folder`, shaped and rotated for the loaded GlmForCausalLM."""
    from transformers.models.glm.modeling_glm import apply_rotary_pos_emb

    from kb_qa.llm.weights import find_weight_files, iter_raw_tensors

    folder = Path(folder)
    with open(folder / "config.json", encoding="utf-8") as handle:
        raw = json.load(handle)
    length = int(raw["pre_seq_len"])
    tensors = {name.removeprefix(PREFIX): t for name, t in iter_raw_tensors(find_weight_files(folder))
               if name.startswith(PREFIX)}
    if not tensors:
        raise PrefixError(f"{folder}: no {PREFIX}* weights (expected a ChatGLM2 ptuning checkpoint)")
    c = model.config
    layers, groups = c.num_hidden_layers, c.num_key_value_heads
    head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
    out = _encoder_output(tensors, bool(raw.get("prefix_projection")), folder)
    if tuple(out.shape) != (length, layers * 2 * groups * head_dim):
        raise PrefixError(f"{folder}: prefix encoder gives {tuple(out.shape)}, the model needs "
                          f"({length}, {layers * 2 * groups * head_dim}) for pre_seq_len={length}")
    kv = out.view(length, layers * 2, groups, head_dim).permute(1, 2, 0, 3)  # [L*2, G, P, D]
    device, dtype = model.get_input_embeddings().weight.device, model.get_input_embeddings().weight.dtype
    # cos/sin for position +P, from the model's own rotary embedding (same partial, interleaved convention)
    position = torch.full((1, length), length, dtype=torch.long, device=device)
    cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.float32, device=device), position)
    keys, values = [], []
    for layer in range(layers):
        k = kv[2 * layer].unsqueeze(0).to(device)  # [1, G, P, D] fp32
        rotated, _ = apply_rotary_pos_emb(k, k, cos, sin)
        keys.append(rotated.to(dtype))
        values.append(kv[2 * layer + 1].unsqueeze(0).to(device=device, dtype=dtype))
    return PrefixKV(keys, values)
