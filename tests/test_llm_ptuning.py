"""P-tuning v2 checkpoints as ChatGLM2's ptuning scripts save them, built here, against the restated original math
(test_llm_equivalence.Reference) run with the prefix as its past key/values and positions from 0."""

from __future__ import annotations

import json

import pytest
import torch
from test_llm_equivalence import Reference
from tiny_chatglm2 import load_original_state_dict

from kb_qa.llm.config import read_config
from kb_qa.llm.generation import ChatGLM2Generator, SamplingParams
from kb_qa.llm.loader import load_chatglm2
from kb_qa.llm.prefix import PrefixError
from kb_qa.llm.tokenizer import build_chat_prompt

pytest_plugins = ["tiny_chatglm2"]
PRE_SEQ_LEN = 6


def build_ptuning(directory, base_config: dict, *, projection: bool, seed: int = 2) -> dict:
    """config.json (the base config + pre_seq_len, prefix_projection) and pytorch_model.bin holding only the
    prefix encoder, as the ptuning trainer saves it. Returns the encoder output [P, L*2*G*D]."""
    g = torch.Generator().manual_seed(seed)
    layers, groups, d = base_config["num_layers"], base_config["multi_query_group_num"], base_config["kv_channels"]
    kv_size, hidden = layers * 2 * groups * d, base_config["hidden_size"]
    sd = {"transformer.prefix_encoder.embedding.weight": torch.randn(PRE_SEQ_LEN, kv_size, generator=g)}
    out = sd["transformer.prefix_encoder.embedding.weight"]
    if projection:
        w0, b0 = torch.randn(hidden, kv_size, generator=g) * kv_size**-0.5, torch.randn(hidden, generator=g) * 0.1
        w2, b2 = torch.randn(kv_size, hidden, generator=g) * 2 * hidden**-0.5, torch.randn(kv_size, generator=g)
        sd.update({"transformer.prefix_encoder.trans.0.weight": w0, "transformer.prefix_encoder.trans.0.bias": b0,
                   "transformer.prefix_encoder.trans.2.weight": w2, "transformer.prefix_encoder.trans.2.bias": b2})
        out = torch.tanh(out @ w0.t() + b0) @ w2.t() + b2
    directory.mkdir(parents=True)
    config = {**base_config, "pre_seq_len": PRE_SEQ_LEN, "prefix_projection": projection}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    torch.save(sd, directory / "pytorch_model.bin")
    return {"out": out, "layers": layers, "groups": groups, "d": d}


def reference_past(enc: dict, batch: int = 1):
    """The original's get_prompt(): view [b, P, L*2, G, D], permute [2, 1, 0, 3, 4], split(2) -> (k, v) per layer."""
    kv = enc["out"].unsqueeze(0).expand(batch, -1, -1)
    kv = kv.reshape(batch, PRE_SEQ_LEN, enc["layers"] * 2, enc["groups"], enc["d"]).permute([2, 1, 0, 3, 4])
    return [(pair[0], pair[1]) for pair in kv.split(2)]  # each [P, b, G, D]


def reference_logits(ref: Reference, enc: dict, ids: list[int]) -> torch.Tensor:
    s = len(ids)
    logits, _ = ref.forward(torch.tensor([ids]), position_ids=torch.arange(s)[None],
                            attention_mask=torch.ones(1, PRE_SEQ_LEN + s, dtype=torch.long),
                            cache=reference_past(enc))
    return logits[0]


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_logits_and_greedy_equal_the_original(tmp_path, tiny_dir, projection):
    enc = build_ptuning(tmp_path / "ptuning", read_config(tiny_dir), projection=projection)
    loaded = load_chatglm2(tiny_dir, device="cpu", dtype="float32", adapter=tmp_path / "ptuning")
    assert loaded.describe().endswith("(p-tuning ptuning)")
    ref = Reference(load_original_state_dict(tiny_dir), read_config(tiny_dir))
    ids = loaded.tokenizer.encode(build_chat_prompt("知识库问答系统"))
    prefix = loaded.model.kb_qa_prefix
    with torch.no_grad():
        ours = loaded.model(input_ids=torch.tensor([ids]), past_key_values=prefix.cache(1),
                            attention_mask=torch.ones(1, PRE_SEQ_LEN + len(ids), dtype=torch.long)).logits[0]
    expected = reference_logits(ref, enc, ids)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    without = load_chatglm2(tiny_dir, device="cpu", dtype="float32").model(input_ids=torch.tensor([ids])).logits[0]
    assert (without - expected).abs().max() > 0.1  # the prefix matters

    generator = ChatGLM2Generator(loaded.model, loaded.tokenizer, params=SamplingParams(temperature=0))
    row = list(ids)
    for _ in range(12):  # the original's greedy loop, recomputed in full each step
        row.append(int(reference_logits(ref, enc, row)[-1].argmax()))
    expected_text = generator.generate(build_chat_prompt("知识库问答系统"), max_new_tokens=12)
    assert loaded.tokenizer.decode(row[len(ids):]).strip() == expected_text
    assert "".join(generator.stream(build_chat_prompt("知识库问答系统"), max_new_tokens=12)) == expected_text


def test_wrong_prefix_size_is_refused(tmp_path, tiny_dir):
    config = read_config(tiny_dir)
    build_ptuning(tmp_path / "p", {**config, "num_layers": 3}, projection=False)
    with pytest.raises(PrefixError, match="pre_seq_len"):
        load_chatglm2(tiny_dir, device="cpu", dtype="float32", adapter=tmp_path / "p")
