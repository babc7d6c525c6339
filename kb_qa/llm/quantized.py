"""The official pre-quantized checkpoints (THUDM/chatglm2-6b-int4, and the int8 form the same code writes), read
without their remote code.

Format (the checkpoint's own quantization.py and its CPU/CUDA kernels): config.json `quantization_bit` 4 or 8; in
every layer the four Linear weights `self_attention.query_key_value`, `self_attention.dense`, `mlp.dense_h_to_4h`,
`mlp.dense_4h_to_h` are stored as
- `.weight`: int8 [out, in] (8 bit) or int8 [out, in/2] (4 bit, two values per byte: column 2j in the HIGH nibble,
  column 2j+1 in the LOW nibble, each a signed two's-complement nibble in -8..7; quantized values are -7..7),
- `.weight_scale`: [out] (fp16), one per output row: absmax(row) / (2^(bits-1) - 1);
  weight = q * scale. Biases, norms, the embedding and output_layer stay in floating point.

Two ways to run them:
- `dequantize_weight` -> the native GlmForCausalLM in float (CPU default: exact to the stored values).
- `PackedLinear`: keeps the packed bytes on the device and dequantizes to the compute dtype per forward, then one
  GEMM. That is the same two steps as the checkpoint's cpm_kernels path (W8A16Linear: extract_weight_to_half, then a
  cuBLAS matmul), in plain torch, so it needs no nvrtc-compiled kernels shipped as compressed blobs in remote code;
  memory: 0.5 (int4) / 1 (int8) byte per weight plus one layer's transient float weight.
Does not quantize a float model (bitsandbytes does that in loader.py) and does not read files (weights.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch

from kb_qa.llm.config import UnsupportedCheckpointError

SUPPORTED_BITS = (4, 8)
QUANTIZED_LINEARS = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h",
                     "mlp.dense_4h_to_h")
SCALE_SUFFIX = ".weight_scale"


class UnsupportedQuantizationError(UnsupportedCheckpointError):
    """config.json asks for a quantization this loader does not read (the message names it)."""


def check_quantization_bit(value) -> int:
    if value not in SUPPORTED_BITS or isinstance(value, bool):
        raise UnsupportedQuantizationError(
            f"unsupported checkpoint flag quantization_bit={value!r}: kb_qa reads the official ChatGLM2 int4/int8 "
            f"format (quantization_bit 4 or 8); use the full-precision checkpoint otherwise"
        )
    return int(value)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int8 [out, in/2] -> int8 [out, in]: high nibble first, each nibble sign-extended."""
    if packed.dtype != torch.int8:
        raise UnsupportedQuantizationError(f"packed int4 weight has dtype {packed.dtype}, expected int8")
    high = packed >> 4  # arithmetic shift: sign-extends
    low = (packed << 4) >> 4  # int8 shift left drops the high nibble, arithmetic right sign-extends
    return torch.stack((high, low), dim=-1).reshape(packed.shape[0], packed.shape[1] * 2)


def dequantize_weight(qweight: torch.Tensor, scale: torch.Tensor, bits: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q * scale per row, computed in `dtype` (fp32 on CPU: exact for int values times an fp16 scale)."""
    values = unpack_int4(qweight) if bits == 4 else qweight
    if values.dtype != torch.int8:
        raise UnsupportedQuantizationError(f"quantized weight has dtype {values.dtype}, expected int8")
    if scale.dim() != 1 or scale.shape[0] != values.shape[0]:
        raise UnsupportedQuantizationError(
            f"weight_scale has shape {tuple(scale.shape)}, expected [{values.shape[0]}] (one per output row)"
        )
    return values.to(dtype) * scale.to(dtype)[:, None]


def is_quantized_name(name: str) -> bool:
    stem = name.removesuffix(SCALE_SUFFIX).removesuffix(".weight")
    return stem.endswith(QUANTIZED_LINEARS) and (name.endswith(SCALE_SUFFIX) or name.endswith(".weight"))


def pair_quantized(tensors: Iterator[tuple[str, torch.Tensor]], bits: int,
                   ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """(name, tensor, None) for float tensors and (".weight" name, int8 weight, scale) for quantized ones, pairing
    each weight with its `weight_scale` whichever comes first (they may sit in different shards)."""
    waiting: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors:
        if not is_quantized_name(name):
            yield name, tensor, None
            continue
        stem = name.removesuffix(SCALE_SUFFIX).removesuffix(".weight")
        slot = waiting.setdefault(stem, {})
        slot["scale" if name.endswith(SCALE_SUFFIX) else "weight"] = tensor
        if len(slot) == 2:
            del waiting[stem]
            weight, scale = slot["weight"], slot["scale"]
            if weight.dtype != torch.int8:
                raise UnsupportedQuantizationError(
                    f"{stem}.weight has dtype {weight.dtype}, but quantization_bit={bits} stores int8"
                )
            yield stem + ".weight", weight, scale
    if waiting:
        stem, slot = next(iter(waiting.items()))
        lacking = "weight_scale" if "weight" in slot else "weight"
        raise UnsupportedQuantizationError(f"{stem}: quantized checkpoint lacks {stem}.{lacking}")


class PackedLinear(torch.nn.Module):
    """A bias-free or biased Linear whose weight stays packed int4/int8 with per-row scales (see module doc)."""

    qweight: torch.Tensor  # buffers registered in __init__ (declared so the checker knows they are tensors)
    scale: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bits: int, *, bias: bool, dtype: torch.dtype,
                 device=None):
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, check_quantization_bit(bits)
        packed_in = in_features // 2 if bits == 4 else in_features
        self.register_buffer("qweight", torch.empty(out_features, packed_in, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(out_features, dtype=dtype, device=device))
        self.bias = torch.nn.Parameter(torch.empty(out_features, dtype=dtype, device=device),
                                       requires_grad=False) if bias else None

    @property
    def weight(self) -> torch.Tensor:
        """The float weight, rebuilt on demand (for code that reads `.weight`, e.g. dtype checks)."""
        return dequantize_weight(self.qweight, self.scale, self.bits, self.scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize_weight(self.qweight, self.scale, self.bits, x.dtype)
        return torch.nn.functional.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


def replace_linears(model: torch.nn.Module, bits: int, dtype: torch.dtype) -> None:
    """Swap the converted model's attention and MLP Linears (q/k/v/o, gate_up, down) for PackedLinear (meta-free,
    empty: the loader fills qweight/scale/bias)."""
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
    for layer in cast(torch.nn.ModuleList, model.get_submodule("model.layers")):
        for parent in (layer.self_attn, layer.mlp):
            for attr in targets:
                linear = getattr(parent, attr, None)
                if isinstance(linear, torch.nn.Linear):
                    setattr(parent, attr, PackedLinear(linear.in_features, linear.out_features, bits,
                                                       bias=linear.bias is not None, dtype=dtype, device="meta"))


def load_prequantized(folder, cfg, tokenizer, *, device: torch.device,
                      dtype: torch.dtype, quantization: str, mode: str, context_tokens: int,
                      free_memory):
    """THUDM/chatglm2-6b-int4 (or int8): packed weights kept packed (PackedLinear) or dequantized to `dtype`."""
    from kb_qa.llm.config import glm_num_parameters, to_glm_config
    from kb_qa.llm.loader import LoadedModel, ModelLoadError, _check_tokenizer, _empty_model, _set_tensor, check_memory
    from kb_qa.llm.weights import convert_tensor, find_weight_files, iter_raw_tensors

    bits = cfg.quantization_bit
    if quantization not in ("none", f"int{bits}"):
        raise ModelLoadError(f"{folder} is already quantized (quantization_bit={bits}); set llm.quantization=none")
    if mode == "auto":
        mode = "packed" if device.type == "cuda" else "dequantize"
    if mode not in ("packed", "dequantize"):
        raise ModelLoadError(f"prequantized={mode!r}: expected 'auto', 'packed' or 'dequantize'")
    glm_config = to_glm_config(cfg)
    _check_tokenizer(tokenizer, glm_config.vocab_size, folder)
    check_memory(glm_config, device=device, dtype=dtype, quantization=f"int{bits}" if mode == "packed" else "none",
                 context_tokens=context_tokens, free_bytes=free_memory(device))
    model = _empty_model(glm_config, dtype)
    if mode == "packed":
        replace_linears(model, bits, dtype)
    for name, tensor, scale in pair_quantized(iter_raw_tensors(find_weight_files(folder)), bits):
        if scale is None:
            for new_name, part in convert_tensor(name, tensor, cfg):
                _set_tensor(model, new_name, part.to(device=device, dtype=dtype).contiguous())
        elif mode == "dequantize":
            # fp32 first: int values x an fp16 scale are exact there; then one cast to the compute dtype.
            weight = dequantize_weight(tensor, scale, bits, torch.float32)
            for new_name, part in convert_tensor(name, weight, cfg):
                _set_tensor(model, new_name, part.to(device=device, dtype=dtype).contiguous())
        else:
            # q/k/v split by rows, like the float weights: packing runs along the input dimension only.
            for (new_name, part), (_, part_scale) in zip(convert_tensor(name, tensor, cfg),
                                                         convert_tensor(name, scale, cfg), strict=True):
                module = model.get_submodule(new_name.removesuffix(".weight"))
                if not isinstance(module, PackedLinear) or tuple(module.qweight.shape) != tuple(part.shape):
                    raise ModelLoadError(f"{folder}: quantized weight {name} does not fit {new_name}")
                module.qweight = part.to(device).contiguous()
                module.scale = part_scale.to(device=device, dtype=dtype).contiguous()
    missing = sorted(n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta)
    if missing:
        raise ModelLoadError(f"{folder}: checkpoint lacks {len(missing)} weights, e.g. {', '.join(missing[:3])}")
    for owner in model.modules():
        for key, buffer in list(owner._buffers.items()):
            if buffer is not None and buffer.device != device:
                owner._buffers[key] = buffer.to(device)
    model.eval().requires_grad_(False)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype,
                       quantization=f"int{bits}" if mode == "packed" else "none", source=folder,
                       num_parameters=glm_num_parameters(model.config), devices=[str(device)],
                       checkpoint_note=f"int{bits} checkpoint" + (" dequantized" if mode == "dequantize" else ""))
