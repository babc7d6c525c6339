"""ChatGLM2 weights -> GlmForCausalLM weights, one shard at a time.

Reads `pytorch_model-0000X-of-0000N.bin` with `torch.load(weights_only=True, mmap=True)` (never a full unpickle)
or `*.safetensors`; renames and splits each tensor as it streams past (CHATGLM2.md "Weight names"), so the peak
host memory is about one copy of the weights (the mmapped source pages are file-backed and reclaimable).
Does not build the model or choose devices (loader.py).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from kb_qa.llm.config import ChatGLM2Config, UnsupportedCheckpointError

log = logging.getLogger(__name__)

_LAYER = re.compile(r"^(?:transformer\.)?encoder\.layers\.(\d+)\.(.+)$")
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    # ChatGLM2's swiglu is chunk(2) then silu(first) * second: GLM's gate_up_proj has the same order.
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP_RENAMES = {
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "encoder.final_layernorm.weight": "model.norm.weight",
    "output_layer.weight": "lm_head.weight",
}
_DROPPED = {"rotary_pos_emb.inv_freq"}  # recomputed by the native model (in fp32)


def find_weight_files(folder: str | Path) -> list[Path]:
    """The checkpoint's weight files in shard order; safetensors preferred over .bin when both are present."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            with open(index, encoding="utf-8") as handle:
                weight_map = json.load(handle)["weight_map"]
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise FileNotFoundError(f"{folder}: {index_name} names missing shards: {', '.join(missing[:3])}")
            return [folder / n for n in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    shards = sorted(folder.glob("model-*-of-*.safetensors")) or sorted(folder.glob("pytorch_model-*-of-*.bin"))
    if shards:
        return shards
    raise FileNotFoundError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")


def iter_raw_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor, shard by shard; a shard is released before the next is opened."""
    for path in files:
        log.debug("reading %s", path.name)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            # Legacy (non-zip) serialization cannot be mmapped; still never a full unpickle.
            state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise UnsupportedCheckpointError(f"{path.name}: expected a state dict, found {type(state).__name__}")
        for name in list(state):
            yield name, state.pop(name)
        del state


def convert_tensor(name: str, tensor: torch.Tensor, cfg: ChatGLM2Config) -> list[tuple[str, torch.Tensor]]:
    """One ChatGLM2 tensor -> zero or more GlmForCausalLM tensors (query_key_value splits into q/k/v)."""
    bare = name.removeprefix("transformer.")
    if bare in _DROPPED:
        return []
    if bare in _TOP_RENAMES:
        return [(_TOP_RENAMES[bare], tensor)]
    match = _LAYER.match(name)
    if match is None:
        raise UnsupportedCheckpointError(f"unexpected weight {name!r}: not part of ChatGLM2's architecture")
    layer, rest = int(match.group(1)), match.group(2)
    if layer >= cfg.num_layers:
        raise UnsupportedCheckpointError(
            f"weight {name!r} is for layer {layer}, config has num_layers={cfg.num_layers}"
        )
    prefix = f"model.layers.{layer}."
    if rest in _LAYER_RENAMES:
        return [(prefix + _LAYER_RENAMES[rest], tensor)]
    if rest in ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias"):
        kind = rest.rsplit(".", 1)[1]
        q, kv = cfg.q_size, cfg.kv_size  # rows: [q | k | v] = [heads*d | groups*d | groups*d]
        if tensor.shape[0] != q + 2 * kv:
            raise UnsupportedCheckpointError(
                f"{name} has {tensor.shape[0]} rows, expected {q + 2 * kv} from the config's heads/groups/kv_channels"
            )
        return [
            (f"{prefix}self_attn.q_proj.{kind}", tensor[:q]),
            (f"{prefix}self_attn.k_proj.{kind}", tensor[q : q + kv]),
            (f"{prefix}self_attn.v_proj.{kind}", tensor[q + kv :]),
        ]
    raise UnsupportedCheckpointError(f"unexpected weight {name!r}: not part of ChatGLM2's architecture")


def iter_converted_tensors(folder: str | Path, cfg: ChatGLM2Config) -> Iterator[tuple[str, torch.Tensor]]:
    """GlmForCausalLM (name, tensor) pairs streamed from a ChatGLM2 checkpoint folder."""
    for name, tensor in iter_raw_tensors(find_weight_files(folder)):
        yield from convert_tensor(name, tensor, cfg)


def convert_state_dict(state: dict[str, torch.Tensor], cfg: ChatGLM2Config) -> dict[str, torch.Tensor]:
    """In-memory form of the conversion (tests, small checkpoints)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        out.update(convert_tensor(name, tensor, cfg))
    return out
