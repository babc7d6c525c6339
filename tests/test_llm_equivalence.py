"""The converted GlmForCausalLM computes ChatGLM2's function: its logits equal an independent reference forward of
ChatGLM2's math written here in plain torch from the ORIGINAL checkpoint tensors (fp32; full sequence, incremental
decoding with a cache, left-padded batch), and deliberate conversion mistakes fail that comparison."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_chatglm2 import build_tiny_chatglm2, load_original_state_dict

from kb_qa.llm.config import UnsupportedCheckpointError, parse_chatglm2_config, read_config, to_glm_config
from kb_qa.llm.loader import load_chatglm2
from kb_qa.llm.tokenizer import build_chat_prompt
from kb_qa.llm.weights import convert_state_dict

pytest_plugins = ["tiny_chatglm2"]  # the tiny checkpoint fixtures: tiny_dir, tiny_loaded, ...

TOL = 1e-5


# -- the reference: ChatGLM2's modeling_chatglm.py math, restated ------------------------------------------------------
class Reference:
    """ChatGLM2 forward on its own tensor names: [s, b, h] layout as the original, RMSNorm, fused QKV with multi-query
    groups, RoPE on the first half of each head in (2i, 2i+1) pairs with base 10000*rope_ratio, SwiGLU as
    chunk(2) -> silu(first) * second, untied output layer."""

    def __init__(self, sd: dict[str, torch.Tensor], raw_config: dict):
        self.sd = {k: v.float() for k, v in sd.items()}
        c = raw_config
        self.layers = c["num_layers"]
        self.np = c["num_attention_heads"]
        self.d = c.get("kv_channels") or c["hidden_size"] // self.np
        self.ng = c["multi_query_group_num"] if c.get("multi_query_attention") else self.np
        self.eps = c["layernorm_epsilon"]
        self.base = 10000.0 * c.get("rope_ratio", 1.0)

    def rmsnorm(self, x, name):
        return self.sd[name] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def rope(self, x, position_ids):
        # x [s, b, n, d]; position_ids [b, s]
        rot = self.d // 2
        theta = 1.0 / (self.base ** (torch.arange(0, rot, 2, dtype=torch.float) / rot))  # [rot/2]
        angles = position_ids.t().float()[..., None] * theta  # [s, b, rot/2]
        cos, sin = angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        pairs = x_rot.reshape(*x_rot.shape[:-1], rot // 2, 2)
        out = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin,
                           pairs[..., 1] * cos + pairs[..., 0] * sin], dim=-1).flatten(3)
        return torch.cat([out, x_pass], dim=-1)

    def forward(self, input_ids, position_ids=None, attention_mask=None, cache=None):
        """input_ids [b, s]; attention_mask [b, past + s] (1 = token, 0 = pad); cache: list of (k, v) [t, b, ng, d].
        Returns (logits [b, s, vocab], new cache)."""
        b, s = input_ids.shape
        past = 0 if cache is None else cache[0][0].shape[0]
        if position_ids is None:
            position_ids = torch.arange(past, past + s).expand(b, s)
        if attention_mask is None:
            attention_mask = torch.ones(b, past + s, dtype=torch.long)
        sd = self.sd
        hidden = sd["transformer.embedding.word_embeddings.weight"][input_ids].transpose(0, 1)  # [s, b, h]
        q_size, kv_size = self.np * self.d, self.ng * self.d
        causal = torch.arange(past + s)[None, :] <= (past + torch.arange(s))[:, None]  # [s, t]
        allowed = causal[None] & attention_mask.bool()[:, None, :]  # [b, s, t]
        new_cache = []
        for i in range(self.layers):
            p = f"transformer.encoder.layers.{i}."
            x = self.rmsnorm(hidden, p + "input_layernorm.weight")
            qkv = x @ sd[p + "self_attention.query_key_value.weight"].t()
            qkv = qkv + sd[p + "self_attention.query_key_value.bias"]
            q = qkv[..., :q_size].reshape(s, b, self.np, self.d)
            k = qkv[..., q_size:q_size + kv_size].reshape(s, b, self.ng, self.d)
            v = qkv[..., q_size + kv_size:].reshape(s, b, self.ng, self.d)
            q, k = self.rope(q, position_ids), self.rope(k, position_ids)
            if cache is not None:
                k, v = torch.cat([cache[i][0], k], 0), torch.cat([cache[i][1], v], 0)
            new_cache.append((k, v))
            # multi-query: head j reads group j // (np / ng)
            k_all = k.unsqueeze(3).expand(-1, -1, -1, self.np // self.ng, -1).reshape(k.shape[0], b, self.np, self.d)
            v_all = v.unsqueeze(3).expand(-1, -1, -1, self.np // self.ng, -1).reshape(v.shape[0], b, self.np, self.d)
            scores = torch.einsum("sbnd,tbnd->bnst", q, k_all) / math.sqrt(self.d)
            scores = scores.masked_fill(~allowed[:, None], float("-inf"))
            probs = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)  # fully padded rows -> 0
            context = torch.einsum("bnst,tbnd->sbnd", probs, v_all).reshape(s, b, q_size)
            hidden = hidden + context @ sd[p + "self_attention.dense.weight"].t()
            x = self.rmsnorm(hidden, p + "post_attention_layernorm.weight")
            up = x @ sd[p + "mlp.dense_h_to_4h.weight"].t()
            first, second = up.chunk(2, dim=-1)
            hidden = hidden + (torch.nn.functional.silu(first) * second) @ sd[p + "mlp.dense_4h_to_h.weight"].t()
        hidden = self.rmsnorm(hidden, "transformer.encoder.final_layernorm.weight")
        logits = hidden @ sd["transformer.output_layer.weight"].t()
        return logits.transpose(0, 1), new_cache


def _reference(directory) -> Reference:
    return Reference(load_original_state_dict(directory), read_config(directory))


def _ids(loaded, text):
    return torch.tensor([loaded.tokenizer.encode(text)])


@torch.no_grad()
def _glm_logits(model, input_ids, **kwargs):
    return model(input_ids=input_ids, **kwargs).logits


PROMPTS = [
    build_chat_prompt("你好，介绍一下知识库问答。", [("hello", "Hi! 我是 ChatGLM2。")]),
    "The quick brown fox   jumps",
]


# -- full sequence, incremental, padded batch --------------------------------------------------------------------------
@pytest.mark.parametrize("text", PROMPTS)
def test_full_sequence_equals_reference(tiny_loaded, tiny_dir, text):
    ref = _reference(tiny_dir)
    ids = _ids(tiny_loaded, text)
    expected, _ = ref.forward(ids)
    got = _glm_logits(tiny_loaded.model, ids)
    assert got.shape == expected.shape
    assert expected.abs().max() > 1.0  # the logits are not trivially small
    assert (got - expected).abs().max().item() < TOL


def test_incremental_decoding_with_cache_equals_reference(tiny_loaded, tiny_dir):
    ref = _reference(tiny_dir)
    ids = _ids(tiny_loaded, PROMPTS[0])
    prefix, rest = ids[:, :-6], ids[:, -6:]
    full, _ = ref.forward(ids)
    # the reference itself, incrementally
    ref_logits, cache = ref.forward(prefix)
    steps = [ref_logits]
    for t in range(rest.shape[1]):
        step, cache = ref.forward(rest[:, t:t + 1], cache=cache)
        steps.append(step)
    assert (torch.cat(steps, 1) - full).abs().max().item() < TOL
    # the native model with its KV cache, one token at a time
    with torch.no_grad():
        out = tiny_loaded.model(input_ids=prefix, use_cache=True)
        got, past = [out.logits], out.past_key_values
        for t in range(rest.shape[1]):
            out = tiny_loaded.model(input_ids=rest[:, t:t + 1], past_key_values=past, use_cache=True)
            got.append(out.logits)
            past = out.past_key_values
    assert (torch.cat(got, 1) - full).abs().max().item() < TOL


def test_left_padded_batch_equals_reference(tiny_loaded, tiny_dir):
    ref = _reference(tiny_dir)
    texts = [PROMPTS[0], "你好", PROMPTS[1]]
    batch = tiny_loaded.tokenizer.batch_encode(texts)
    assert batch["attention_mask"][1, 0] == 0  # really padded, on the left
    got = _glm_logits(tiny_loaded.model, batch["input_ids"], attention_mask=batch["attention_mask"],
                      position_ids=batch["position_ids"])
    ref_batch, _ = ref.forward(batch["input_ids"], batch["position_ids"], batch["attention_mask"])
    for row, text in enumerate(texts):
        real = batch["attention_mask"][row].bool()
        alone, _ = ref.forward(_ids(tiny_loaded, text))  # unpadded, on its own
        assert (ref_batch[row, real] - alone[0]).abs().max().item() < TOL
        assert (got[row, real] - alone[0]).abs().max().item() < TOL


def test_left_padded_batch_with_positions_from_the_mask(tiny_loaded, tiny_dir):
    """generate() derives position ids from the attention mask (cumsum - 1): same numbers as ChatGLM2's tokenizer."""
    batch = tiny_loaded.tokenizer.batch_encode(["你好", PROMPTS[1]])
    derived = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    assert torch.equal(derived * batch["attention_mask"], batch["position_ids"])


def test_greedy_tokens_equal_reference_argmax(tiny_loaded, tiny_dir):
    from kb_qa.llm.generation import ChatGLM2Generator, SamplingParams, process_response

    ref = _reference(tiny_dir)
    prompt = build_chat_prompt("hello")
    ids = tiny_loaded.tokenizer.encode(prompt)
    expected = []
    logits, cache = ref.forward(torch.tensor([ids]))
    for _ in range(12):
        token = int(logits[0, -1].argmax())
        if token == tiny_loaded.tokenizer.eos_token_id:
            break
        expected.append(token)
        logits, cache = ref.forward(torch.tensor([[token]]), cache=cache)
    generator = ChatGLM2Generator(tiny_loaded.model, tiny_loaded.tokenizer,
                                  params=SamplingParams(max_new_tokens=12, temperature=0))
    captured = {}
    run = generator._run_generate

    def spy(kwargs):
        captured["out"] = run(kwargs)
        return captured["out"]

    generator._run_generate = spy
    text = generator.generate(prompt)
    tokens = captured["out"][0, len(ids):].tolist()
    assert tokens[:len(expected)] == expected and len(expected) >= 6
    assert text == process_response(tiny_loaded.tokenizer.decode(expected))


# -- the comparison has teeth ------------------------------------------------------------------------------------------
def _load_state(tiny_loaded, converted):
    from transformers import GlmForCausalLM

    model = GlmForCausalLM(tiny_loaded.model.config).eval()
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected and set(missing) <= {"model.rotary_emb.inv_freq", "model.rotary_emb.original_inv_freq"}
    return model


def _swap_gate_up(converted, cfg):
    out = dict(converted)
    for name, tensor in converted.items():
        if name.endswith("mlp.gate_up_proj.weight"):
            gate, up = tensor.chunk(2, dim=0)
            out[name] = torch.cat([up, gate], 0)
    return out


def _wrong_qkv_split(converted, cfg):
    out = dict(converted)
    for name in converted:
        if name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.k_proj.bias"):
            v_name = name.replace("k_proj", "v_proj")
            out[name], out[v_name] = converted[v_name], converted[name]  # k and v exchanged
    return out


def _non_interleaved_heads(converted, cfg):
    """q split per head in the wrong order (rows regrouped as if heads were interleaved)."""
    out = dict(converted)
    for name, tensor in converted.items():
        if name.endswith("self_attn.q_proj.weight"):
            heads = tensor.reshape(cfg.num_attention_heads, cfg.kv_channels, -1)
            out[name] = heads.transpose(0, 1).reshape(tensor.shape)
    return out


@pytest.mark.parametrize("mistake", [_swap_gate_up, _wrong_qkv_split, _non_interleaved_heads])
def test_deliberate_conversion_mistakes_fail_the_comparison(tiny_loaded, tiny_dir, mistake):
    raw = read_config(tiny_dir)
    cfg = parse_chatglm2_config(raw)
    original = load_original_state_dict(tiny_dir)
    converted = {k: v.clone() for k, v in convert_state_dict(original, cfg).items()}
    ids = _ids(tiny_loaded, PROMPTS[0])
    expected, _ = Reference(original, raw).forward(ids)
    right = _glm_logits(_load_state(tiny_loaded, converted), ids)
    assert (right - expected).abs().max().item() < TOL  # the harness itself is right
    wrong = _glm_logits(_load_state(tiny_loaded, mistake(converted, cfg)), ids)
    assert (wrong - expected).abs().max().item() > 1e-2


# -- other layouts of the same architecture ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", [
    {"safetensors": True, "shards": 3},
    {"shards": 1},
    {"rope_ratio": 16},  # chatglm2-6b-32k
    {"multi_query_attention": False},
])
def test_variants_equal_reference(tmp_path, tiny_tokenizer_model, variant):
    directory = build_tiny_chatglm2(tmp_path / "ckpt", tokenizer_model=tiny_tokenizer_model, seed=3, **variant)
    loaded = load_chatglm2(directory, device="cpu", dtype="float32")
    if "rope_ratio" in variant:
        assert loaded.model.config.rope_parameters["rope_theta"] == 160000.0
    ref = _reference(directory)
    ids = _ids(loaded, PROMPTS[0] * 3)  # longer: rope base differences show
    expected, _ = ref.forward(ids)
    assert (_glm_logits(loaded.model, ids) - expected).abs().max().item() < TOL


def test_config_maps_to_glm_config(tiny_dir):
    raw = read_config(tiny_dir)
    glm = to_glm_config(parse_chatglm2_config(raw))
    assert glm.model_type == "glm"
    assert glm.rms_norm_eps == raw["layernorm_epsilon"]
    assert glm.num_key_value_heads == raw["multi_query_group_num"]
    assert glm.head_dim == raw["kv_channels"] and glm.vocab_size == raw["padded_vocab_size"]
    assert glm.rope_parameters["partial_rotary_factor"] == 0.5 and glm.attention_bias is True


def test_full_size_parameter_count():
    raw = {"model_type": "chatglm", "hidden_size": 4096, "num_layers": 28, "num_attention_heads": 32,
           "kv_channels": 128, "multi_query_attention": True, "multi_query_group_num": 2, "ffn_hidden_size": 13696,
           "padded_vocab_size": 65024, "seq_length": 32768, "add_qkv_bias": True}
    assert parse_chatglm2_config(raw).num_parameters() == 6_243_584_000


# -- refused checkpoints -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value", [
    ("rmsnorm", False), ("post_layer_norm", False), ("original_rope", False), ("add_bias_linear", True),
    ("apply_residual_connection_post_layernorm", True), ("quantization_bit", 2), ("quantization_bit", "gptq"),
    ("pre_seq_len", 128),
    ("multi_query_group_num", 3),
])
def test_refused_flags_name_the_flag(tmp_path, tiny_tokenizer_model, flag, value):
    directory = build_tiny_chatglm2(tmp_path / "bad", tokenizer_model=tiny_tokenizer_model, shards=1, **{flag: value})
    with pytest.raises(UnsupportedCheckpointError, match=flag):
        load_chatglm2(directory, device="cpu")


def test_chatglm_v1_layout_is_refused():
    with pytest.raises(UnsupportedCheckpointError, match="padded_vocab_size"):
        parse_chatglm2_config({"model_type": "chatglm", "hidden_size": 4096, "num_layers": 28,
                               "num_attention_heads": 32, "ffn_hidden_size": 16384, "inner_hidden_size": 16384})


def test_unexpected_weight_is_refused(tmp_path, tiny_tokenizer_model):
    from kb_qa.llm.weights import convert_tensor

    cfg = parse_chatglm2_config(read_config(build_tiny_chatglm2(tmp_path / "c", tokenizer_model=tiny_tokenizer_model)))
    with pytest.raises(UnsupportedCheckpointError, match="prefix_encoder"):
        convert_tensor("transformer.prefix_encoder.embedding.weight", torch.zeros(1), cfg)
