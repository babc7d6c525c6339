"""ChatGLM2's `config.json` -> transformers' `GlmConfig`, refusing checkpoints whose flags the conversion can't honour.

Covers THUDM/chatglm2-6b, chatglm2-6b-32k (`rope_ratio` -> `rope_theta`) and CodeGeeX2-6B (same layout).
Does not read weights (weights.py) or the tokenizer (tokenizer.py). Facts: ../../shared/CHATGLM2.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kb_qa.errors import UsageError

# ChatGLM2's special tokens follow the sentencepiece pieces in this order (ids n .. n+4, n = sp.vocab_size()).
SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
BASE_ROPE_THETA = 10000.0


class UnsupportedCheckpointError(UsageError):
    """The checkpoint is not ChatGLM2-shaped (the message names the offending flag). A ValueError too."""


# flag -> the only value the native GLM architecture reproduces. Missing keys take ChatGLM2's defaults
# (the same defaults as the checkpoint's own ChatGLMConfig).
_REQUIRED_FLAGS: dict[str, tuple[Any, Any]] = {
    # name: (required value, default when absent)
    "rmsnorm": (True, True),
    "post_layer_norm": (True, True),
    "original_rope": (True, True),
    "add_bias_linear": (False, False),
    "apply_residual_connection_post_layernorm": (False, False),
    "fp32_residual_connection": (False, False),
}
# Features of the original code that the native model does not have; refused when set.
_UNSUPPORTED_WHEN_SET = {
    "pre_seq_len": "P-tuning v2 prefix weights are not supported; merge or drop the prefix encoder first",
}
_REQUIRED_KEYS = ("hidden_size", "num_layers", "num_attention_heads", "padded_vocab_size", "ffn_hidden_size")


@dataclass(frozen=True)
class ChatGLM2Config:
    """The fields of ChatGLM2's config.json that the conversion uses (sizes in elements)."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    kv_channels: int  # head dim
    num_kv_heads: int  # multi_query_group_num when multi_query_attention, else num_attention_heads
    ffn_hidden_size: int
    padded_vocab_size: int
    seq_length: int
    layernorm_epsilon: float
    add_qkv_bias: bool
    rope_ratio: float
    tie_word_embeddings: bool
    eos_token_id: int
    pad_token_id: int
    torch_dtype: str | None
    quantization_bit: int | None = None  # 4 or 8: the official pre-quantized format (quantized.py)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.kv_channels

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.kv_channels

    @property
    def rope_theta(self) -> float:
        return BASE_ROPE_THETA * self.rope_ratio

    def num_parameters(self) -> int:
        """Parameter count of the converted model (6,243,584,000 for chatglm2-6b)."""
        h, i, v = self.hidden_size, self.ffn_hidden_size, self.padded_vocab_size
        qkv = h * (self.q_size + 2 * self.kv_size) + (self.q_size + 2 * self.kv_size if self.add_qkv_bias else 0)
        per_layer = qkv + self.q_size * h + h * 2 * i + i * h + 2 * h  # attn + dense + mlp + 2 norms
        head = 0 if self.tie_word_embeddings else v * h
        return v * h + self.num_layers * per_layer + h + head


def is_chatglm2_config(raw: dict[str, Any]) -> bool:
    return raw.get("model_type") == "chatglm"


def parse_chatglm2_config(raw: dict[str, Any]) -> ChatGLM2Config:
    """Validate ChatGLM2's config dict; raise `UnsupportedCheckpointError` naming the first flag that does not fit."""
    model_type = raw.get("model_type")
    if model_type != "chatglm":
        raise UnsupportedCheckpointError(f"model_type is {model_type!r}, expected 'chatglm' (ChatGLM2-6B format)")
    for key in _REQUIRED_KEYS:
        if key not in raw:
            raise UnsupportedCheckpointError(
                f"config.json lacks {key!r}: not a ChatGLM2-family checkpoint (ChatGLM-6B v1 has another layout)"
            )
    for flag, (required, default) in _REQUIRED_FLAGS.items():
        value = raw.get(flag, default)
        if value is None:
            value = default
        if bool(value) != required:
            raise UnsupportedCheckpointError(
                f"unsupported checkpoint flag {flag}={value!r}: ChatGLM2's architecture (and GlmForCausalLM) "
                f"needs {flag}={required}"
            )
    for flag, why in _UNSUPPORTED_WHEN_SET.items():
        if raw.get(flag):
            raise UnsupportedCheckpointError(f"unsupported checkpoint flag {flag}={raw[flag]!r}: {why}")

    heads = int(raw["num_attention_heads"])
    hidden = int(raw["hidden_size"])
    kv_channels = int(raw.get("kv_channels") or hidden // heads)
    if raw.get("multi_query_attention", False):
        groups = int(raw.get("multi_query_group_num", 1))
    else:
        groups = heads
    if groups < 1 or heads % groups:
        raise UnsupportedCheckpointError(
            f"unsupported checkpoint flag multi_query_group_num={groups}: must divide num_attention_heads={heads}"
        )
    if kv_channels % 4:
        # RoPE rotates kv_channels/2 dims in interleaved pairs.
        raise UnsupportedCheckpointError(
            f"unsupported checkpoint flag kv_channels={kv_channels}: must be a multiple of 4"
        )
    quantization_bit = None
    if raw.get("quantization_bit"):  # absent, null or 0: full precision
        from kb_qa.llm.quantized import check_quantization_bit

        quantization_bit = check_quantization_bit(raw["quantization_bit"])
    rope_ratio = float(raw.get("rope_ratio") or 1.0)
    eos = raw.get("eos_token_id", 2)
    if isinstance(eos, list):
        eos = eos[0]
    pad = raw.get("pad_token_id", 0)
    return ChatGLM2Config(
        hidden_size=hidden,
        num_layers=int(raw["num_layers"]),
        num_attention_heads=heads,
        kv_channels=kv_channels,
        num_kv_heads=groups,
        ffn_hidden_size=int(raw["ffn_hidden_size"]),
        padded_vocab_size=int(raw["padded_vocab_size"]),
        seq_length=int(raw.get("seq_length", 32768)),
        layernorm_epsilon=float(raw.get("layernorm_epsilon", 1e-5)),
        add_qkv_bias=bool(raw.get("add_qkv_bias", False)),
        rope_ratio=rope_ratio,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        eos_token_id=int(eos if eos is not None else 2),
        pad_token_id=int(pad if pad is not None else 0),
        torch_dtype=raw.get("torch_dtype"),
        quantization_bit=quantization_bit,
    )


def to_glm_config(cfg: ChatGLM2Config):
    """The equivalent `GlmConfig` (see CHATGLM2.md "Config mapping")."""
    from transformers import GlmConfig

    return GlmConfig(
        vocab_size=cfg.padded_vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.kv_channels,
        hidden_act="silu",
        max_position_embeddings=cfg.seq_length,
        rms_norm_eps=cfg.layernorm_epsilon,  # GlmConfig's default (1.5625e-7) is not ChatGLM2's
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": 0.5},
        attention_bias=cfg.add_qkv_bias,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=cfg.pad_token_id,
        eos_token_id=cfg.eos_token_id,
        bos_token_id=None,
        use_cache=True,
    )


def read_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected a ChatGLM2 checkpoint folder)")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def glm_num_parameters(glm_config) -> int:
    """Parameter count from a `GlmConfig` (for converted folders); same formula as ChatGLM2Config's."""
    c = glm_config
    head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
    q, kv, h, i, v = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim, c.hidden_size, \
        c.intermediate_size, c.vocab_size
    bias = q + 2 * kv if c.attention_bias else 0
    per_layer = h * (q + 2 * kv) + bias + q * h + h * 2 * i + i * h + 2 * h
    return v * h + c.num_hidden_layers * per_layer + h + (0 if c.tie_word_embeddings else v * h)
