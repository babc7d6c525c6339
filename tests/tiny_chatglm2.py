"""A tiny random checkpoint in ChatGLM2's ORIGINAL format, loaded by the tests through the same path as a user's
THUDM/chatglm2-6b folder: config.json with ChatGLM2's keys, weights under ChatGLM2's names in sharded
`pytorch_model-0000X-of-0000N.bin` (+ index) or `.safetensors`, and a `tokenizer.model` trained with sentencepiece
on tests/fixtures/chatglm2_tiny_corpus.txt (mixed Chinese/English, a few KB).

Sizes: hidden 64, 4 heads x 16 dims, 2 KV groups, ffn 96, 2 layers, ~650 ids: builds in about a second.
(PYTEST_DONT_REWRITE: test modules import helpers from here before pytest loads it as the fixtures plugin.)
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

CORPUS = Path(__file__).resolve().parent / "fixtures" / "chatglm2_tiny_corpus.txt"
SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")


def train_tiny_tokenizer(vocab_size: int = 640) -> bytes:
    """A sentencepiece BPE model shaped like ChatGLM2's: <unk>=0 <s>=1 </s>=2, byte pieces from 3 (so "\\n" = 13),
    byte fallback, identity normalization, whitespace runs kept, digits split."""
    import sentencepiece as spm

    text = CORPUS.read_text(encoding="utf-8")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in text.splitlines() if line.strip()] * 4),
        model_writer=model, vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, hard_vocab_limit=False, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1,
    )
    return model.getvalue()


def tiny_config(n_pieces: int, **overrides) -> dict:
    padded = ((n_pieces + len(SPECIALS) + 7) // 8) * 8  # >= n + 5, like 65024 >= 64794
    config = {
        "_name_or_path": "tiny-chatglm2",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": 96,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": 64,
        "kv_channels": 16,
        "layernorm_epsilon": 1e-05,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "num_attention_heads": 4,
        "num_layers": 2,
        "original_rope": True,
        "padded_vocab_size": padded,
        "post_layer_norm": True,
        "rmsnorm": True,
        "seq_length": 2048,
        "use_cache": True,
        "torch_dtype": "float32",
        "transformers_version": "4.27.1",
        "tie_word_embeddings": False,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    config.update(overrides)
    return config


def random_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """ChatGLM2-named weights, scaled so activations and logits are far from trivial (differences show)."""
    g = torch.Generator().manual_seed(seed)
    h, ffn, heads, d = config["hidden_size"], config["ffn_hidden_size"], config["num_attention_heads"], \
        config["kv_channels"]
    groups = config["multi_query_group_num"] if config.get("multi_query_attention") else heads
    qkv = heads * d + 2 * groups * d
    vocab = config["padded_vocab_size"]

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    sd = {"transformer.embedding.word_embeddings.weight": randn(vocab, h),
          "transformer.rotary_pos_emb.inv_freq": 1.0 / (10000 ** (torch.arange(0, d // 2, 2).float() / (d // 2)))}
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        sd[p + "input_layernorm.weight"] = 1.0 + randn(h, std=0.1)
        sd[p + "self_attention.query_key_value.weight"] = randn(qkv, h, std=h**-0.5)
        sd[p + "self_attention.query_key_value.bias"] = randn(qkv, std=0.1)
        sd[p + "self_attention.dense.weight"] = randn(h, heads * d, std=(heads * d) ** -0.5)
        sd[p + "post_attention_layernorm.weight"] = 1.0 + randn(h, std=0.1)
        sd[p + "mlp.dense_h_to_4h.weight"] = randn(2 * ffn, h, std=h**-0.5)
        sd[p + "mlp.dense_4h_to_h.weight"] = randn(h, ffn, std=ffn**-0.5)
    sd["transformer.encoder.final_layernorm.weight"] = 1.0 + randn(h, std=0.1)
    out = randn(vocab, h, std=h**-0.5)
    out[config["eos_token_id"]] = 0.0  # eos logit 0 while the best of ~650 others is ~+3: greedy answers run long
    sd["transformer.output_layer.weight"] = out
    return sd


def build_tiny_chatglm2(directory: Path, *, shards: int = 2, safetensors: bool = False, seed: int = 0,
                        tokenizer_model: bytes | None = None, state_dict: dict | None = None,
                        **config_overrides) -> Path:
    """Write the checkpoint into `directory` (created) and return it. `config_overrides` change config.json keys
    (e.g. rope_ratio=16, rmsnorm=False); `tokenizer_model` reuses an already trained tokenizer; `state_dict`
    replaces the random weights (e.g. a packed int4 form of them)."""
    import sentencepiece as spm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    proto = tokenizer_model or train_tiny_tokenizer()
    (directory / "tokenizer.model").write_bytes(proto)
    n_pieces = spm.SentencePieceProcessor(model_proto=proto).vocab_size()
    config = tiny_config(n_pieces, **config_overrides)
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "name_or_path": "THUDM/chatglm2-6b", "remove_space": False, "do_lower_case": False,
        "tokenizer_class": "ChatGLMTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
    }, indent=2), encoding="utf-8")

    # the random weights' shapes follow the overrides too (hidden_size, num_layers, ...)
    sd = state_dict if state_dict is not None else random_state_dict(config, seed=seed)
    names = list(sd)
    per_shard = -(-len(names) // shards)
    suffix = "safetensors" if safetensors else "bin"
    stem = "model" if safetensors else "pytorch_model"
    weight_map, total = {}, 0
    for s in range(shards):
        part = {n: sd[n].contiguous() for n in names[s * per_shard:(s + 1) * per_shard]}
        file = f"{stem}-{s + 1:05d}-of-{shards:05d}.{suffix}"
        if safetensors:
            from safetensors.torch import save_file

            save_file(part, str(directory / file), metadata={"format": "pt"})
        else:
            torch.save(part, directory / file)
        for n, t in part.items():
            weight_map[n] = file
            total += t.numel() * t.element_size()
    index = f"{stem}.{suffix}.index.json"
    (directory / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                              indent=2), encoding="utf-8")
    return directory


def load_original_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under ChatGLM2's names (test helper; .bin read with weights_only=True)."""
    from kb_qa.llm.weights import find_weight_files, iter_raw_tensors

    return dict(iter_raw_tensors(find_weight_files(directory)))


# -- pytest fixtures: a test module declares `pytest_plugins = ["tiny_chatglm2"]` to use them ---------------------
try:
    import pytest
except ImportError:  # the benchmark imports this module without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def tiny_tokenizer_model() -> bytes:
        return train_tiny_tokenizer()

    @pytest.fixture(scope="session")
    def tiny_dir(tmp_path_factory, tiny_tokenizer_model) -> Path:
        return build_tiny_chatglm2(tmp_path_factory.mktemp("tiny") / "chatglm2", tokenizer_model=tiny_tokenizer_model)

    @pytest.fixture(scope="session")
    def tiny_loaded(tiny_dir):
        from kb_qa.llm.loader import load_chatglm2

        return load_chatglm2(tiny_dir, device="cpu", dtype="float32")
