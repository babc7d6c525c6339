"""GGUF export in llama.cpp's ChatGLM layout (always: read back with the gguf package), and the llamacpp backend
(when llama-cpp-python is installed: it is an optional extra built from source, see README "llama.cpp"):
F16 greedy output equals transformers' for 24 tokens; Q8_0 agrees on the first tokens with logits within 0.15;
streaming, stop strings and the LangChain wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_chatglm2 import build_tiny_chatglm2

from kb_qa.llm.gguf_export import write_gguf
from kb_qa.llm.llamacpp_backend import INSTALL_HINT, llama_cpp_available
from kb_qa.llm.tokenizer import build_chat_prompt

pytest_plugins = ["tiny_chatglm2"]

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_available(),
                                     reason="llama-cpp-python is not installed (optional extra): " + INSTALL_HINT)
QUESTIONS = ["What is RAG?", "检索相关的段落"]  # greedy answers of the tiny model that vary (not one repeated id)
Q8_LOGIT_TOLERANCE = 0.15  # max |delta logit| Q8_0 vs fp32, tiny model (logits span about +-4;
# measured 0.084: llama.cpp also quantizes the activations to 8 bit for Q8_0 matmuls)


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("gguf")
    return {kind: write_gguf(tiny_dir, root / kind, kind) for kind in ("f16", "q8_0", "q4_0")}


def _transformers_greedy(loaded, ids, n=24):
    with torch.no_grad():
        out = loaded.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=int),
                                    max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def _logits(loaded, ids):
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor([ids])).logits[0].numpy()


def test_gguf_layout_and_vocabulary(ggufs, tiny_loaded):
    import gguf

    reader = gguf.GGUFReader(str(ggufs["q8_0"]))
    fields = {name: field for name, field in reader.fields.items()}

    def scalar(key):
        field = fields[key]
        return field.parts[field.data[0]].tolist()[0] if field.types[0] != gguf.GGUFValueType.STRING \
            else bytes(field.parts[field.data[0]]).decode()

    assert scalar("general.architecture") == "chatglm"
    assert scalar("chatglm.attention.head_count_kv") == 2 and scalar("chatglm.rope.dimension_count") == 8
    assert scalar("tokenizer.ggml.model") == "llama" and scalar("tokenizer.ggml.pre") == "chatglm-spm"
    assert scalar("tokenizer.ggml.add_bos_token") is False
    tok = tiny_loaded.tokenizer
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in fields["tokenizer.ggml.tokens"].data]
    assert len(tokens) == tiny_loaded.model.config.vocab_size
    assert tokens[tok.gmask_token_id] == "[gMASK]" and tokens[tok.sop_token_id] == "sop"
    assert tokens[100] == tok.sp.id_to_piece(100) and tokens[-1].startswith("[PAD")
    tensors = {t.name: t for t in reader.tensors}
    assert {"token_embd.weight", "blk.0.attn_qkv.weight", "blk.0.attn_qkv.bias", "blk.1.ffn_up.weight",
            "blk.1.ffn_down.weight", "output_norm.weight", "output.weight"} <= set(tensors)
    assert tensors["blk.0.attn_qkv.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert list(tensors["blk.0.ffn_up.weight"].shape) == [64, 192]  # ne order: [in, out]


def test_cli_writes_the_gguf(tmp_path, tiny_dir):
    from kb_qa.llm.convert import main

    assert main([str(tiny_dir), str(tmp_path / "g"), "--gguf", "f16"]) == 0
    assert (tmp_path / "g" / "chatglm2-f16.gguf").stat().st_size > 0 and (tmp_path / "g" / "tokenizer.model").is_file()
    assert main([str(tiny_dir), str(tmp_path / "h"), "--gguf", "f16", "--merge-adapter", str(tmp_path)]) == 2


@needs_llama_cpp
def test_f16_greedy_equals_transformers(ggufs, tiny_loaded):
    from kb_qa.llm.llamacpp_backend import LlamaCppGenerator

    generator = LlamaCppGenerator(ggufs["f16"], tiny_loaded.tokenizer, max_context_tokens=512)
    for question in QUESTIONS:
        ids = tiny_loaded.tokenizer.encode(build_chat_prompt(question))
        expected = _transformers_greedy(tiny_loaded, ids)
        assert len(set(expected)) > 10
        assert generator.generate_ids(ids, temperature=0, max_new_tokens=24) == expected


@needs_llama_cpp
def test_q8_0_first_tokens_and_logits(ggufs, tiny_loaded):
    from kb_qa.llm.llamacpp_backend import LlamaCppGenerator

    generator = LlamaCppGenerator(ggufs["q8_0"], tiny_loaded.tokenizer, max_context_tokens=512, logits_all=True)
    ids = tiny_loaded.tokenizer.encode(build_chat_prompt(QUESTIONS[0]))
    assert generator.generate_ids(ids, temperature=0, max_new_tokens=4) == _transformers_greedy(tiny_loaded, ids, 4)
    delta = np.abs(generator.prompt_logits(ids) - _logits(tiny_loaded, ids)[:, :generator.llama.n_vocab()])
    assert delta.max() < Q8_LOGIT_TOLERANCE


@needs_llama_cpp
def test_q4_0_equals_transformers_on_the_same_q4_0_weights(ggufs, tiny_dir, tiny_loaded, tiny_tokenizer_model,
                                                           tmp_path):
    """Q4_0 is coarse on a 64-wide model (max |delta logit| vs fp32 ~0.8): compare with transformers running the
    Q4_0-rounded weights instead, which leaves only llama.cpp's 8-bit activations as the difference."""
    from gguf import GGMLQuantizationType, quants
    from tiny_chatglm2 import load_original_state_dict

    from kb_qa.llm.llamacpp_backend import LlamaCppGenerator
    from kb_qa.llm.loader import load_chatglm2

    rounded = {}
    for name, tensor in load_original_state_dict(tiny_dir).items():
        if tensor.dim() == 2:
            q = quants.quantize(tensor.numpy(), GGMLQuantizationType.Q4_0)
            tensor = torch.from_numpy(quants.dequantize(q, GGMLQuantizationType.Q4_0).copy())
        rounded[name] = tensor
    reference = load_chatglm2(build_tiny_chatglm2(tmp_path / "q4", tokenizer_model=tiny_tokenizer_model,
                                                  state_dict=rounded), device="cpu", dtype="float32")
    generator = LlamaCppGenerator(ggufs["q4_0"], tiny_loaded.tokenizer, max_context_tokens=512, logits_all=True)
    ids = tiny_loaded.tokenizer.encode(build_chat_prompt(QUESTIONS[1]))
    assert np.abs(generator.prompt_logits(ids) - _logits(reference, ids)).max() < Q8_LOGIT_TOLERANCE
    # No greedy-equality check here: on this prompt the top three reference logits lie within 0.013 of each other,
    # closer than llama.cpp's 8-bit activation error, so the argmax may legitimately differ.


@needs_llama_cpp
def test_streaming_stop_and_langchain_wrapper(ggufs, tiny_dir):
    from kb_qa.llm import resolve_llm
    from kb_qa.settings import LLMSettings

    handle, description = resolve_llm(LLMSettings(backend="llamacpp", model_path=str(ggufs["f16"].parent),
                                                  temperature=0, max_new_tokens=24, max_context_tokens=512))
    assert handle.backend == "llamacpp" and description == "ChatGLM2 on llama.cpp (chatglm2-f16.gguf)"
    whole = handle.chat(QUESTIONS[0])
    assert whole and "".join(handle.stream_chat(QUESTIONS[0])) == whole
    assert handle.langchain_llm.invoke(QUESTIONS[0]) == whole
    stop = whole[len(whole) // 2:][:2]
    cut = handle.langchain_llm.invoke(QUESTIONS[0], stop=[stop])
    assert stop not in cut and whole.startswith(cut)


@needs_llama_cpp
@pytest.mark.parametrize("source", ["converted", "int4"])
def test_other_sources_convert_too(tmp_path, tiny_dir, tiny_loaded, tiny_tokenizer_model, source):
    from kb_qa.llm.llamacpp_backend import LlamaCppGenerator

    if source == "converted":
        from kb_qa.llm.convert import convert_checkpoint

        folder, reference = convert_checkpoint(tiny_dir, tmp_path / "glm", fast_tokenizer=False), tiny_loaded
    else:
        from test_llm_quantized_checkpoint import official_quantize
        from tiny_chatglm2 import load_original_state_dict

        from kb_qa.llm.loader import load_chatglm2
        from kb_qa.llm.quantized import QUANTIZED_LINEARS

        packed = {}
        for name, tensor in load_original_state_dict(tiny_dir).items():
            if name.endswith(".weight") and name.removesuffix(".weight").endswith(QUANTIZED_LINEARS):
                packed[name], packed[name + "_scale"] = official_quantize(tensor, 4)
            else:
                packed[name] = tensor
        folder = build_tiny_chatglm2(tmp_path / "int4", tokenizer_model=tiny_tokenizer_model, state_dict=packed,
                                     quantization_bit=4)
        reference = load_chatglm2(folder, device="cpu", dtype="float32")
    generator = LlamaCppGenerator(write_gguf(folder, tmp_path / "gguf", "f16"), tiny_loaded.tokenizer,
                                  max_context_tokens=512, logits_all=True)
    ids = tiny_loaded.tokenizer.encode(build_chat_prompt(QUESTIONS[0]))
    assert np.abs(generator.prompt_logits(ids) - _logits(reference, ids)).max() < 0.02
