"""ChatGLM2 checkpoint -> one GGUF file in the layout llama.cpp's `chatglm` architecture reads (F16, Q8_0 or Q4_0).

Facts followed (llama.cpp's convert_hf_to_gguf.py ChatGLMModel and the `gguf` package's CHATGLM tensor map):
- tensors: the ChatGLM2 names without "transformer." mapped by `gguf.TensorNameMap(MODEL_ARCH.CHATGLM)`:
  token_embd, blk.N.attn_norm, blk.N.attn_qkv (fused, with bias), blk.N.attn_output, blk.N.ffn_norm, blk.N.ffn_up
  (dense_h_to_4h: both SwiGLU halves, first = gate), blk.N.ffn_down, output_norm, output; inv_freq dropped.
  1-D tensors (norms, the QKV bias) stay F32, 2-D ones take the requested type.
- metadata: context/embedding/feed-forward lengths, block count, head count, head_count_kv =
  multi_query_group_num, rms eps, rope dimension count = head_dim/2 (ChatGLM2 rotates half of each head), rope
  freq base 10000 x rope_ratio, add_bos_token false.
- vocabulary (as for chatglm3's sentencepiece tokenizer): tokenizer model "llama", pre "chatglm-spm", every
  sentencepiece piece with its score and type, then [MASK] [gMASK] [sMASK] sop eop as CONTROL, then "[PAD<id>]"
  UNUSED up to padded_vocab_size.
Sources read: an original folder (float or the official int4/int8, dequantized) or a converted `glm` folder (its
q/k/v are fused back). kb_qa's llamacpp backend tokenizes with its own sentencepiece tokenizer and hands llama.cpp
ids, so prompts are the exact ids the transformers path sees.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from kb_qa.llm.config import SPECIAL_TOKENS, parse_chatglm2_config, read_config
from kb_qa.llm.tokenizer import TOKENIZER_FILE

log = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "q8_0", "q4_0")
_GLM_BACK = {  # converted (glm) names -> ChatGLM2 names (q/k/v are fused separately)
    "model.embed_tokens.weight": "embedding.word_embeddings.weight",
    "model.norm.weight": "encoder.final_layernorm.weight",
    "lm_head.weight": "output_layer.weight",
}
_GLM_LAYER_BACK = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attn.o_proj.weight": "self_attention.dense.weight",
    "mlp.gate_up_proj.weight": "mlp.dense_h_to_4h.weight",
    "mlp.down_proj.weight": "mlp.dense_4h_to_h.weight",
}


def gguf_file_name(kind: str) -> str:
    return f"chatglm2-{kind}.gguf"


def _chatglm2_tensors(src: Path, raw: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """(ChatGLM2 name without "transformer.", float tensor) from any source folder kb_qa loads."""
    from kb_qa.llm.weights import find_weight_files, iter_raw_tensors

    tensors = iter_raw_tensors(find_weight_files(src))
    if raw.get("model_type") == "glm":
        yield from _fused_from_glm(tensors)
        return
    cfg = parse_chatglm2_config(raw)
    if cfg.quantization_bit:
        from kb_qa.llm.quantized import dequantize_weight, pair_quantized

        for name, tensor, scale in pair_quantized(tensors, cfg.quantization_bit):
            weight = tensor if scale is None else dequantize_weight(tensor, scale, cfg.quantization_bit)
            yield name.removeprefix("transformer."), weight
        return
    for name, tensor in tensors:
        yield name.removeprefix("transformer."), tensor


def _fused_from_glm(tensors) -> Iterator[tuple[str, torch.Tensor]]:
    pending: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, tensor in tensors:
        if name in _GLM_BACK:
            yield _GLM_BACK[name], tensor
            continue
        parts = name.split(".")  # model.layers.N.rest
        layer, rest = int(parts[2]), ".".join(parts[3:])
        if rest in _GLM_LAYER_BACK:
            yield f"encoder.layers.{layer}.{_GLM_LAYER_BACK[rest]}", tensor
            continue
        proj, kind = parts[4], parts[5]  # self_attn.{q,k,v}_proj.{weight,bias}
        slot = pending.setdefault((layer, kind), {})
        slot[proj] = tensor
        if len(slot) == 3:
            del pending[(layer, kind)]
            yield (f"encoder.layers.{layer}.self_attention.query_key_value.{kind}",
                   torch.cat([slot["q_proj"], slot["k_proj"], slot["v_proj"]], dim=0))
    if pending:
        raise ValueError(f"converted checkpoint lacks part of q/k/v for layer {next(iter(pending))[0]}")


def _vocabulary(model_file: Path, padded_vocab_size: int):
    import gguf
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(model_file))
    types = gguf.TokenType
    tokens, scores, toktypes = [], [], []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        kind = (types.UNKNOWN if sp.is_unknown(i) else types.CONTROL if sp.is_control(i)
                else types.UNUSED if sp.is_unused(i) else types.BYTE if sp.is_byte(i) else types.NORMAL)
        tokens.append(piece.encode("utf-8"))
        scores.append(sp.get_score(i))
        toktypes.append(kind)
    for name in SPECIAL_TOKENS:
        tokens.append(name.encode("utf-8"))
        scores.append(0.0)
        toktypes.append(types.CONTROL)
    while len(tokens) < padded_vocab_size:
        tokens.append(f"[PAD{len(tokens)}]".encode())
        scores.append(0.0)
        toktypes.append(types.UNUSED)
    return tokens, scores, toktypes


def _glm_shape(raw: dict) -> dict:
    """The ChatGLM2 hyper-parameters, from an original config.json or a converted one."""
    if raw.get("model_type") == "glm":
        head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
        rope = raw.get("rope_parameters") or {}
        return dict(seq=raw["max_position_embeddings"], hidden=raw["hidden_size"], ffn=raw["intermediate_size"],
                    layers=raw["num_hidden_layers"], heads=raw["num_attention_heads"],
                    kv_heads=raw["num_key_value_heads"], eps=raw["rms_norm_eps"], head_dim=head_dim,
                    rope_theta=rope.get("rope_theta", raw.get("rope_theta", 10000.0)), vocab=raw["vocab_size"])
    cfg = parse_chatglm2_config(raw)
    return dict(seq=cfg.seq_length, hidden=cfg.hidden_size, ffn=cfg.ffn_hidden_size, layers=cfg.num_layers,
                heads=cfg.num_attention_heads, kv_heads=cfg.num_kv_heads, eps=cfg.layernorm_epsilon,
                head_dim=cfg.kv_channels, rope_theta=cfg.rope_theta, vocab=cfg.padded_vocab_size)


def write_gguf(src: str | os.PathLike, dst: str | os.PathLike, kind: str = "q8_0") -> Path:
    """Write DST/chatglm2-<kind>.gguf (+ a copy of tokenizer.model) and return the .gguf path."""
    import gguf
    from gguf import quants

    if kind not in GGUF_TYPES:
        raise ValueError(f"--gguf {kind!r}: expected one of {', '.join(GGUF_TYPES)}")
    src, dst = Path(src), Path(dst)
    raw = read_config(src)
    shape = _glm_shape(raw)
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
             "q4_0": gguf.GGMLQuantizationType.Q4_0}[kind]
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[kind]
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / gguf_file_name(kind)
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.CHATGLM])
    writer.add_name(src.name)
    writer.add_context_length(shape["seq"])
    writer.add_embedding_length(shape["hidden"])
    writer.add_feed_forward_length(shape["ffn"])
    writer.add_block_count(shape["layers"])
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_layer_norm_rms_eps(shape["eps"])
    writer.add_file_type(file_type)
    writer.add_rope_dimension_count(shape["head_dim"] // 2)
    writer.add_rope_freq_base(float(shape["rope_theta"]))
    writer.add_add_bos_token(False)
    tokens, scores, toktypes = _vocabulary(src / TOKENIZER_FILE, shape["vocab"])
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("chatglm-spm")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(toktypes)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.CHATGLM, shape["layers"])
    for name, tensor in _chatglm2_tensors(src, raw):
        if name.endswith("rotary_pos_emb.inv_freq"):
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ValueError(f"{src}: no GGUF name for tensor {name!r}")
        data = tensor.float().numpy()
        if data.ndim == 1:
            writer.add_tensor(target, data.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(target, data.astype(np.float16))
        else:
            # numpy block quantization (32 values per block along the input dimension)
            packed = quants.quantize(data.astype(np.float32), qtype)
            writer.add_tensor(target, packed, raw_shape=packed.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    import shutil

    shutil.copyfile(src / TOKENIZER_FILE, dst / TOKENIZER_FILE)
    log.info("wrote %s (%.1f MiB)", out, out.stat().st_size / 2**20)
    return out
