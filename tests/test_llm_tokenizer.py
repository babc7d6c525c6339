"""ChatGLM2 tokenizer ids = sentencepiece ids + the [gMASK] sop prefix; specials never parsed from text; the chat
prompt; streaming decode and post-processing that add up to the non-streamed text."""

from __future__ import annotations

import os
import random

import pytest
import sentencepiece as spm

from kb_qa.llm.loader import resolve_checkpoint_path
from kb_qa.llm.text import IncrementalDecoder, ResponseAssembler, apply_stop, process_response
from kb_qa.llm.tokenizer import ChatGLM2Tokenizer, build_chat_prompt

pytest_plugins = ["tiny_chatglm2"]  # the tiny checkpoint fixtures: tiny_dir, tiny_loaded, ...

TEXTS = [
    "你好",
    "知识库问答系统先从文档中检索相关的段落。",
    "Hello world, this is a test.",
    "a   b\n\n  c\t\td    ",  # whitespace runs, tabs, newlines, trailing spaces
    "    leading spaces",
    "[gMASK]",  # the literal text of a special token
    "sop eop [MASK] [sMASK] isopropyl <s> </s> <unk>",
    "龘𠀀 emoji 👋🏽 and bytes",  # characters outside the tiny vocabulary: byte fallback
    "",
]


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return ChatGLM2Tokenizer.from_folder(tiny_dir)


@pytest.fixture(scope="module")
def sp(tiny_dir):
    return spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))


def test_special_ids_follow_the_pieces(tok, sp):
    n = sp.vocab_size()
    assert tok.special_ids == {"[MASK]": n, "[gMASK]": n + 1, "[sMASK]": n + 2, "sop": n + 3, "eop": n + 4}
    assert tok.prefix_ids == [n + 1, n + 3]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.vocab_size == n + 5
    assert sp.piece_to_id("<0x0A>") == 13  # as in ChatGLM2's file: "\n" = 13


@pytest.mark.parametrize("text", TEXTS)
def test_ids_are_sentencepiece_ids_with_the_prefix(tok, sp, text):
    ids = tok.encode(text)
    assert ids == [tok.gmask_token_id, tok.sop_token_id, *sp.encode(text)]
    assert tok.encode(text, add_prefix=False) == sp.encode(text)
    assert tok.count_tokens(text) == len(ids)
    assert tok.decode(ids) == text  # lossless, prefix dropped


def test_special_text_is_never_parsed(tok):
    ids = tok.encode("[gMASK] sop")
    assert ids[:2] == tok.prefix_ids
    assert not set(ids[2:]) & set(tok.special_ids.values())


def test_decode_drops_pad_bos_eos_and_specials(tok):
    hello = tok.encode("hello", add_prefix=False)
    noisy = [0, 0, *tok.prefix_ids, 1, *hello, tok.eop_token_id, 2, tok.vocab_size + 1]
    assert tok.decode(noisy) == "hello"


def test_chat_prompt_with_history():
    assert build_chat_prompt("你好") == "[Round 1]\n\n问：你好\n\n答："
    history = [("你好", "你好👋！我是人工智能助手 ChatGLM2-6B。"),
               ("What is RAG?", "Retrieval + generation.")]
    assert build_chat_prompt("谢谢", history) == (
        "[Round 1]\n\n问：你好\n\n答：你好👋！我是人工智能助手 ChatGLM2-6B。\n\n"
        "[Round 2]\n\n问：What is RAG?\n\n答：Retrieval + generation.\n\n"
        "[Round 3]\n\n问：谢谢\n\n答："
    )


def test_batch_is_left_padded_with_positions_from_zero(tok):
    batch = tok.batch_encode(["你好", "Hello world, this is a test."])
    short, long_ = tok.encode("你好"), tok.encode("Hello world, this is a test.")
    pad = len(long_) - len(short)
    assert batch["input_ids"][0].tolist() == [0] * pad + short
    assert batch["attention_mask"][0].tolist() == [0] * pad + [1] * len(short)
    assert batch["position_ids"][0].tolist() == [0] * pad + list(range(len(short)))
    assert batch["input_ids"][1].tolist() == long_


def test_real_chatglm2_reference_ids():
    """A full THUDM/chatglm2-6b folder (KB_QA_CHATGLM2_PATH or the HF cache) loads the same tokenizer; the shared
    tokenizer.model alone is tested in test_llm_real_tokenizer.py."""
    folder = resolve_checkpoint_path(os.environ.get("KB_QA_CHATGLM2_PATH", "THUDM/chatglm2-6b"))
    if folder is None or not (folder / "tokenizer.model").is_file():
        pytest.skip("no chatglm2-6b checkpoint folder locally (KB_QA_CHATGLM2_PATH or the HF cache)")
    tok = ChatGLM2Tokenizer.from_folder(folder)
    assert tok.encode("你好") == [64790, 64792, 36474, 54591]
    assert tok.encode(build_chat_prompt("你好")) == [64790, 64792, 790, 30951, 517, 30910, 30939, 30996, 13, 13,
                                                    54761, 31211, 39701, 13, 13, 55437, 31211]


# -- streaming decode == whole decode ----------------------------------------------------------------------------------
def test_incremental_decoding_adds_up_to_the_whole(tok):
    rng = random.Random(0)
    pool = list(range(3, tok.sp_vocab_size)) + [tok.sp.piece_to_id("▁")] * 20
    for _ in range(200):
        ids = [rng.choice(pool) for _ in range(rng.randint(0, 40))]
        decoder = IncrementalDecoder(tok)
        pieces, i = [], 0
        while i < len(ids):
            step = rng.randint(1, 3)
            pieces.append(decoder.push(ids[i:i + step]))
            i += step
        pieces.append(decoder.flush())
        assert "".join(pieces) == tok.decode(ids)


def test_incremental_decoding_holds_back_partial_characters(tok):
    ids = tok.encode("龘", add_prefix=False)  # "▁" then three byte pieces
    decoder = IncrementalDecoder(tok)
    emitted = [decoder.push([i]) for i in ids]
    assert all("\ufffd" not in piece for piece in emitted) and "".join(emitted) == "龘"


@pytest.mark.parametrize("stop", [(), ("问：",), ("\n\n",), ("ab", "bc")])
def test_response_assembler_equals_processing_the_whole(stop):
    rng = random.Random(1)
    alphabet = ["a", "b", "c", " ", "\n", "[[训练时间]]", "[[训", "练时间]]", "问", "：", "你好", "\t"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 4))))
        parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assembler = ResponseAssembler(stop)
        streamed = "".join(assembler.feed(p) for p in parts) + assembler.finish()
        whole, cut = apply_stop(process_response(text), stop)
        assert streamed == (whole.rstrip() if cut else whole), (text, parts)


def test_process_response_like_the_original():
    assert process_response("  我在[[训练时间]]训练。 \n") == "我在2023年训练。"
