"""Packing passages + history + question into the window, counted with a real ChatGLM2-format tokenizer."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from kb_qa.llm.tokenizer import ChatGLM2Tokenizer, build_chat_prompt
from kb_qa.qa.packing import ContextTooLong, estimate_tokens, pack, sentence_cuts, token_counter
from kb_qa.qa.prompts import load_prompts

pytest_plugins = ["tiny_chatglm2"]  # tiny_tokenizer_model: a real sentencepiece model in ChatGLM2's layout


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_model):
    return ChatGLM2Tokenizer(model_proto=tiny_tokenizer_model)


PROMPTS = load_prompts("zh")


def render(question, chosen):
    return PROMPTS.rag(question, PROMPTS.context(chosen))


def do_pack(tokenizer, question, passages, history=(), window=600, reserve=100):
    count, estimated = token_counter(tokenizer)
    return pack(question, passages, history, render=render, count_tokens=count, max_context_tokens=window,
                max_new_tokens=reserve, estimated=estimated)


def test_everything_fits_in_rank_order(tokenizer):
    passages = [("a.txt", "第一段。内容很短。"), ("b.txt", "Second passage. Short too."), ("c.txt", "第三段。")]
    packed = do_pack(tokenizer, "问题是什么？", passages, [("上一个问题", "上一个回答")], window=4000)
    assert packed.included == 3 and not packed.truncated and packed.dropped_history == 0
    assert packed.passages == passages
    assert packed.prompt == build_chat_prompt(packed.user_turn, packed.history)
    assert packed.tokens == tokenizer.count_tokens(packed.prompt) <= packed.budget
    assert packed.prompt.index("[1] 出处：a.txt") < packed.prompt.index("[2] 出处：b.txt") < packed.prompt.index("[3]")
    assert packed.prompt.startswith("[Round 1]\n\n问：上一个问题\n\n答：上一个回答\n\n[Round 2]\n\n问：")
    assert packed.prompt.endswith("问题：问题是什么？\n\n答：")


def test_last_passage_is_cut_at_a_sentence_boundary_and_later_ones_dropped(tokenizer):
    long = "".join(f"这是第{i}句话，用来填满上下文窗口。" for i in range(60))
    passages = [("a.txt", "短的第一段。"), ("b.txt", long), ("c.txt", "第三段不会被放进去。")]
    bare = do_pack(tokenizer, "问题？", passages[:1], window=10_000).tokens
    packed = do_pack(tokenizer, "问题？", passages, window=bare + 150 + 100, reserve=100)
    assert packed.included == 2 and packed.truncated
    cut = packed.passages[1][1]
    assert long.startswith(cut) and cut.endswith("。") and len(cut) < len(long)
    assert "第三段" not in packed.prompt
    assert packed.tokens <= packed.budget


def test_a_passage_with_no_sentence_that_fits_is_dropped(tokenizer):
    passages = [("a.txt", "x" * 3000)]
    bare = do_pack(tokenizer, "q?", [], window=10_000).tokens
    packed = do_pack(tokenizer, "q?", passages, window=bare + 40 + 50, reserve=50)
    assert packed.included == 0 and packed.passages == []
    assert packed.tokens <= packed.budget


def test_oldest_history_goes_first(tokenizer):
    history = [(f"问题{i}" * 20, f"回答{i}" * 20) for i in range(6)]
    passages = [("a.txt", "资料。" * 10)]
    full = do_pack(tokenizer, "最后的问题？", passages, history, window=100_000)
    assert full.dropped_history == 0
    window = full.tokens - 60 + 100  # too small by a bit more than the oldest round needs
    packed = do_pack(tokenizer, "最后的问题？", passages, history, window=window, reserve=100)
    assert packed.dropped_history >= 1 and packed.included == 1
    assert packed.history == history[packed.dropped_history:]  # the most recent rounds are the ones kept
    assert packed.tokens <= packed.budget


def test_question_alone_too_long_is_a_clear_error(tokenizer):
    with pytest.raises(ContextTooLong, match="question is too long"):
        do_pack(tokenizer, "很长的问题" * 500, [("a.txt", "资料。")], window=1000, reserve=100)


def test_budget_counts_the_prefix_tokens(tokenizer):
    count, _ = token_counter(tokenizer)
    assert count("你好") == len(tokenizer.encode("你好", add_prefix=False)) + 2


def test_estimate_without_tokenizer():
    count, estimated = token_counter(None)
    assert estimated and count is estimate_tokens
    # prefix 2 + dummy '▁' 1 + per character: 1 for ASCII and common hanzi, the UTF-8 length otherwise
    assert estimate_tokens("") == 2
    assert estimate_tokens("你好") == 2 + 1 + 2
    assert estimate_tokens("hello world") == 2 + 1 + 11
    assert estimate_tokens("😀") == 2 + 1 + 4
    assert estimate_tokens("毖") == 2 + 1 + 3  # a level-1 hanzi ChatGLM2's vocabulary lacks: byte fallback


def test_estimate_is_not_below_chatglm2s_reference_counts():
    # Reference ids of the real tokenizer.model (CHATGLM2.md, from chatglm.cpp's tests), prefix included.
    assert estimate_tokens("你好") >= 4
    assert estimate_tokens("[Round 1]\n\n问：你好\n\n答：") >= 17


def test_sentence_cuts():
    assert sentence_cuts("一。二！三") == [2, 4]
    assert sentence_cuts("A. B? C") == [2, 5]
    assert sentence_cuts("3.14 is pi") == []  # a decimal point is not a sentence end


# -- property: never over budget, never splits a character ---------------------------------------------------
_ALPHABET = st.sampled_from(list("知识库问答模型检索段落。！？，；abcdefXYZ 0123456789.!?\n") + ["😀", "𠀋", "é", "ﬁ"])
_TEXT = st.text(_ALPHABET, min_size=0, max_size=300)


@given(
    question=st.text(_ALPHABET, min_size=1, max_size=40),
    passages=st.lists(_TEXT, min_size=0, max_size=6),
    history=st.lists(st.tuples(_TEXT, _TEXT), max_size=4),
    extra=st.integers(-30, 1200),
    reserve=st.integers(1, 200),
)
@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_never_exceeds_budget_never_splits_a_character(tokenizer, question, passages, history, extra,
                                                                reserve):
    # window: around what the bare question needs, from a little too small to room for several passages
    window = tokenizer.count_tokens(build_chat_prompt(render(question, []), [])) + reserve + extra
    labelled = [(f"doc{i}.txt", text) for i, text in enumerate(passages)]
    try:
        packed = do_pack(tokenizer, question, labelled, history, window=window, reserve=reserve)
    except ContextTooLong:
        bare = tokenizer.count_tokens(build_chat_prompt(render(question, []), []))
        assert bare > window - reserve  # raised only when the question really cannot fit
        return
    # The budget holds, recounted independently on the exact prompt string.
    assert tokenizer.count_tokens(build_chat_prompt(packed.user_turn, packed.history)) <= window - reserve
    assert packed.tokens <= packed.budget == window - reserve
    # Passages: a prefix of the given ones, in order; only the last may be shortened, and only to whole characters
    # ending at a sentence boundary (the prefix is a real prefix of the original string, code point by code point).
    assert packed.included <= len(labelled)
    for i, (label, text) in enumerate(packed.passages):
        original = labelled[i][1]
        assert label == labelled[i][0]
        if i < packed.included - 1 or not packed.truncated:
            assert text == original
        else:
            assert original.startswith(text) and len(text) < len(original)
            # cut just after a sentence end (trailing spaces stripped), never inside a sentence
            assert any(original[:c].rstrip() == text for c in sentence_cuts(original)), (original, text)
    assert "\ufffd" not in packed.prompt
    # History: the most recent rounds, unchanged.
    assert packed.history == [(q, a) for q, a in history][len(history) - len(packed.history):]
