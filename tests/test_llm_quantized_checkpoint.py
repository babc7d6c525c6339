"""The official pre-quantized format (THUDM/chatglm2-6b-int4, and int8): the tiny fp32 checkpoint is packed here in
that exact format (written independently of kb_qa's unpacker), loaded without remote code, and compared with a
reference: the fp32 model on the same dequantized weights."""

from __future__ import annotations

import pytest
import torch
from tiny_chatglm2 import build_tiny_chatglm2, random_state_dict, tiny_config

from kb_qa.errors import KbQaError
from kb_qa.llm.config import UnsupportedCheckpointError
from kb_qa.llm.loader import load_chatglm2
from kb_qa.llm.quantized import QUANTIZED_LINEARS, UnsupportedQuantizationError, dequantize_weight

pytest_plugins = ["tiny_chatglm2"]

PROMPT_IDS = [30, 41, 97, 12, 200, 5, 77, 64]


def official_quantize(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As the checkpoint's quantization.py: scale = absmax(row) / (2^(bits-1) - 1) in fp16, q = round(w / scale)
    as int8; 4 bit packs column 2j into the high nibble and 2j+1 into the low one (compress_int4_weight)."""
    scale = (weight.abs().max(dim=-1).values / (2 ** (bits - 1) - 1)).half()
    q = torch.round(weight / scale.float()[:, None]).to(torch.int8)
    if bits == 8:
        return q, scale
    as_bytes = ((q[:, 0::2].to(torch.int32) & 0xF) << 4) | (q[:, 1::2].to(torch.int32) & 0xF)
    return as_bytes.to(torch.uint8).view(torch.int8), scale


def reference_dequantize(packed: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Plain arithmetic, no bit tricks shared with kb_qa: nibble n in 0..15 means n - 16 when n >= 8."""
    if bits == 8:
        return packed.float() * scale.float()[:, None]
    unsigned = packed.to(torch.int32) % 256
    high, low = unsigned // 16, unsigned % 16
    high, low = torch.where(high >= 8, high - 16, high), torch.where(low >= 8, low - 16, low)
    values = torch.stack((high, low), dim=-1).reshape(packed.shape[0], -1)
    return values.float() * scale.float()[:, None]


def _is_quantized(name: str) -> bool:
    return name.endswith(".weight") and name.removesuffix(".weight").endswith(QUANTIZED_LINEARS)


@pytest.fixture(scope="module", params=[4, 8])
def checkpoints(request, tmp_path_factory, tiny_tokenizer_model):
    """(bits, quantized folder, reference fp32 folder with the dequantized weights)."""
    import sentencepiece as spm

    bits = request.param
    n = spm.SentencePieceProcessor(model_proto=tiny_tokenizer_model).vocab_size()
    base = random_state_dict(tiny_config(n), seed=5)
    packed, dequantized = {}, {}
    for name, tensor in base.items():
        if _is_quantized(name):
            q, scale = official_quantize(tensor, bits)
            packed[name], packed[name + "_scale"] = q, scale  # ".weight" and ".weight_scale"
            dequantized[name] = reference_dequantize(q, scale, bits)
        else:
            packed[name] = dequantized[name] = tensor
    root = tmp_path_factory.mktemp(f"int{bits}")
    quant_dir = build_tiny_chatglm2(root / "quantized", tokenizer_model=tiny_tokenizer_model, state_dict=packed,
                                    shards=3, quantization_bit=bits)  # 3 shards: weight and scale may split
    ref_dir = build_tiny_chatglm2(root / "reference", tokenizer_model=tiny_tokenizer_model, state_dict=dequantized)
    return bits, quant_dir, ref_dir, packed


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def _greedy(model, ids, n=20):
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def test_packing_round_trips_through_kb_qa_unpacker(checkpoints):
    bits, _quant, _ref, packed = checkpoints
    name = "transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"
    q, scale = packed[name], packed[name + "_scale"]
    assert q.dtype == torch.int8 and q.shape[1] == (64 // 2 if bits == 4 else 64)
    assert torch.equal(dequantize_weight(q, scale, bits), reference_dequantize(q, scale, bits))


def test_dequantized_forward_equals_the_reference(checkpoints):
    bits, quant_dir, ref_dir, _ = checkpoints
    quantized = load_chatglm2(quant_dir, device="cpu", dtype="float32")
    reference = load_chatglm2(ref_dir, device="cpu", dtype="float32")
    assert quantized.describe() == f"ChatGLM2 on cpu fp32 (int{bits} checkpoint dequantized)"
    torch.testing.assert_close(_logits(quantized.model, PROMPT_IDS), _logits(reference.model, PROMPT_IDS),
                               rtol=0, atol=1e-5)
    assert _greedy(quantized.model, PROMPT_IDS) == _greedy(reference.model, PROMPT_IDS)


def test_packed_linears_match_the_reference(checkpoints):
    """The GPU path (weights stay packed, dequantized per forward), run on CPU."""
    from kb_qa.llm.quantized import PackedLinear

    bits, quant_dir, ref_dir, _ = checkpoints
    packed = load_chatglm2(quant_dir, device="cpu", dtype="float32", prequantized="packed")
    assert isinstance(packed.model.model.layers[0].self_attn.q_proj, PackedLinear)
    assert packed.model.model.layers[1].mlp.down_proj.qweight.dtype == torch.int8
    assert packed.quantization == f"int{bits}"
    reference = load_chatglm2(ref_dir, device="cpu", dtype="float32")
    torch.testing.assert_close(_logits(packed.model, PROMPT_IDS), _logits(reference.model, PROMPT_IDS),
                               rtol=1e-5, atol=1e-5)
    assert _greedy(packed.model, PROMPT_IDS) == _greedy(reference.model, PROMPT_IDS)


@pytest.mark.parametrize("bits", [2, 16, "nf4", True])
def test_unknown_quantization_is_refused(tmp_path, tiny_tokenizer_model, bits):
    directory = build_tiny_chatglm2(tmp_path / "q", tokenizer_model=tiny_tokenizer_model, shards=1,
                                    quantization_bit=bits)
    with pytest.raises(UnsupportedQuantizationError, match="quantization_bit") as caught:
        load_chatglm2(directory, device="cpu")
    assert isinstance(caught.value, KbQaError) and isinstance(caught.value, UnsupportedCheckpointError)


def test_float_weights_under_a_quantized_config_are_refused(tmp_path, tiny_tokenizer_model):
    directory = build_tiny_chatglm2(tmp_path / "q", tokenizer_model=tiny_tokenizer_model, shards=1,
                                    quantization_bit=4)  # float weights, no weight_scale
    with pytest.raises(UnsupportedQuantizationError, match="weight_scale|int8"):
        load_chatglm2(directory, device="cpu")
