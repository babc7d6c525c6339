"""Generation on the tiny ChatGLM2: streamed == non-streamed, sampling settings, the window, the NaN guard, the lock,
out-of-memory recovery, and the LangChain wrapper (invoke, stream, callbacks)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler

from kb_qa.llm.generation import (
    ChatGLM2Generator,
    GenerationOOMError,
    InvalidScoreGuard,
    PromptTooLongError,
    SamplingParams,
)
from kb_qa.llm.langchain_llm import ChatGLM2LLM
from kb_qa.llm.tokenizer import build_chat_prompt

pytest_plugins = ["tiny_chatglm2"]  # the tiny checkpoint fixtures: tiny_dir, tiny_loaded, ...

GREEDY = SamplingParams(max_new_tokens=24, temperature=0)


@pytest.fixture
def generator(tiny_loaded):
    return ChatGLM2Generator(tiny_loaded.model, tiny_loaded.tokenizer, params=GREEDY)


def _spy_tokens(generator):
    """Record the token ids each generate call returns (beyond the prompt)."""
    calls = []
    run = generator._run_generate

    def spy(kwargs):
        out = run(kwargs)
        calls.append(out[:, kwargs["input_ids"].shape[1]:])
        return out

    generator._run_generate = spy
    return calls


@pytest.mark.parametrize("question", ["你好", "What is a knowledge base?", "讲个故事"])
def test_streamed_text_equals_generated_text(generator, question):
    prompt = build_chat_prompt(question)
    pieces = list(generator.stream(prompt))
    whole = generator.generate(prompt)
    assert len(pieces) > 3 and whole
    assert "".join(pieces) == whole


def test_stop_strings_cut_both_paths_the_same(generator):
    prompt = build_chat_prompt("你好")
    whole = generator.generate(prompt)
    stop = whole[-3:-1]
    cut = generator.generate(prompt, stop=[stop])
    assert cut == whole[: whole.index(stop)].rstrip() and len(cut) > 5
    assert "".join(generator.stream(prompt, stop=[stop])) == cut


def test_history_changes_the_prompt(generator, tiny_loaded):
    history = [("你好", "你好👋！")]
    assert "".join(generator.stream_chat("hello", history)) == generator.generate(build_chat_prompt("hello", history))


def test_max_new_tokens_and_window_are_honoured(tiny_loaded):
    generator = ChatGLM2Generator(tiny_loaded.model, tiny_loaded.tokenizer, params=GREEDY, max_context_tokens=40)
    calls = _spy_tokens(generator)
    prompt = build_chat_prompt("你好")  # ~ 17 tokens
    generator.generate(prompt, max_new_tokens=5)
    assert calls[-1].shape[1] == 5
    generator.generate(prompt, max_new_tokens=1000)  # capped by the 40-token window
    assert calls[-1].shape[1] == 40 - tiny_loaded.tokenizer.count_tokens(prompt)
    with pytest.raises(PromptTooLongError, match="window is 40"):
        generator.generate(build_chat_prompt("你好" * 60))


def test_top_p_tiny_samples_the_greedy_token(generator):
    prompt = build_chat_prompt("hello")
    torch.manual_seed(0)
    assert generator.generate(prompt, temperature=0.9, top_p=1e-6) == generator.generate(prompt)


def test_sampling_and_repetition_penalty_run(generator):
    torch.manual_seed(0)
    prompt = build_chat_prompt("hello")
    sampled = {generator.generate(prompt, temperature=1.5, top_p=1.0) for _ in range(3)}
    assert len(sampled) > 1  # it samples
    greedy, penalised = generator.generate(prompt), generator.generate(prompt, repetition_penalty=2.0)
    assert greedy != penalised  # the greedy answer repeats "技"; the penalty changes it


def test_batch_generation_equals_one_by_one(generator):
    prompts = [build_chat_prompt("你好"), build_chat_prompt("What is a knowledge base? Answer briefly.")]
    assert generator.generate_batch(prompts) == [generator.generate(p) for p in prompts]


# -- guards ------------------------------------------------------------------------------------------------------------
def test_invalid_score_guard_like_the_original():
    scores = torch.tensor([[0.1, float("nan"), 0.3, 0.0, 0.0, 0.0, 1.0],
                           [0.1, 0.2, float("-inf"), 0.0, 0.0, 0.0, 1.0],
                           [float("inf"), 0.2, 0.3, 0.0, 0.0, 0.0, 1.0]])
    out = InvalidScoreGuard()(torch.zeros(3, 1, dtype=torch.long), scores.clone())
    expected_bad = torch.zeros(7)
    expected_bad[5] = 5e4
    assert torch.equal(out[0], expected_bad) and torch.equal(out[2], expected_bad)
    assert torch.equal(out[1], scores[1])  # -inf alone is a filtered token, left alone


def test_nan_logits_do_not_crash_sampling(generator, tiny_loaded):
    hook = tiny_loaded.model.lm_head.register_forward_hook(lambda module, args, output: output * float("nan"))
    try:
        calls = _spy_tokens(generator)
        generator.generate(build_chat_prompt("你好"), temperature=0.8, max_new_tokens=4)
        assert calls[-1].tolist() == [[5, 5, 5, 5]]
    finally:
        hook.remove()


def test_out_of_memory_becomes_a_clear_error_and_the_next_request_works(generator, tiny_loaded, monkeypatch):
    real = tiny_loaded.model.generate
    state = {"failures": 1}

    def flaky(**kwargs):
        if state["failures"]:
            state["failures"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(**kwargs)

    monkeypatch.setattr(tiny_loaded.model, "generate", flaky)
    prompt = build_chat_prompt("你好")
    with pytest.raises(GenerationOOMError, match="out of GPU memory"):
        list(generator.stream(prompt))
    assert not generator.lock.locked()
    assert "".join(generator.stream(prompt)) == generator.generate(prompt)


# -- one generation at a time ------------------------------------------------------------------------------------------
def test_lock_serialises_generations_and_is_released_on_early_close(generator):
    prompt = build_chat_prompt("你好")
    stream = generator.stream(prompt, max_new_tokens=200)
    next(stream)
    assert generator.lock.locked()
    acquired = threading.Event()

    def other():
        with generator.lock:
            acquired.set()

    waiter = threading.Thread(target=other)
    waiter.start()
    time.sleep(0.2)
    assert not acquired.is_set()  # waits while the first generation holds the model
    stream.close()  # the reader walks away: generation is cancelled, the lock released
    waiter.join(timeout=10)
    assert acquired.is_set() and not generator.lock.locked()


def test_concurrent_callers_each_get_their_own_answer(generator):
    prompts = [build_chat_prompt(q) for q in ("你好", "hello", "讲个故事", "什么是向量数据库？")]
    expected = [generator.generate(p) for p in prompts]
    results: dict[int, str] = {}

    def ask(i):
        results[i] = "".join(generator.stream(prompts[i]))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [results[i] for i in range(len(prompts))] == expected


# -- LangChain ---------------------------------------------------------------------------------------------------------
class Collect(BaseCallbackHandler):
    def __init__(self):
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs) -> None:
        self.tokens.append(token)


def test_langchain_invoke_stream_and_callbacks(generator):
    llm = ChatGLM2LLM(generator=generator)
    expected = generator.chat("你好")
    collect = Collect()
    assert llm.invoke("你好", config={"callbacks": [collect]}) == expected
    assert len(collect.tokens) > 3 and "".join(collect.tokens) == expected
    collect = Collect()
    chunks = list(llm.stream("你好", config={"callbacks": [collect]}))
    assert "".join(chunks) == expected and collect.tokens == chunks


def test_langchain_history_overrides_and_raw_prompts(generator):
    llm = ChatGLM2LLM(generator=generator)
    history = [("你好", "你好👋！")]
    assert llm.invoke("hello", history=history) == generator.chat("hello", history)
    assert llm.invoke("hello", max_new_tokens=3) == generator.chat("hello", max_new_tokens=3)
    raw = ChatGLM2LLM(generator=generator, chat_format=False)
    assert raw.invoke("plain text prompt") == generator.generate("plain text prompt")
    assert llm.invoke("你好", stop=["技技"]) == ""  # the greedy answer starts with it
    with pytest.raises(TypeError, match="bogus"):
        llm.invoke("hi", bogus=1)


def test_static_cache_path_gives_the_same_answers(tiny_loaded, generator):
    """The GPU speed path (a reused, pre-allocated cache of the whole window) on CPU without compiling."""
    static = ChatGLM2Generator(tiny_loaded.model, tiny_loaded.tokenizer, params=GREEDY, max_context_tokens=128,
                               static_cache=True, compile=False)
    for question in ("你好", "hello there"):  # the second call reuses (resets) the cache
        expected = generator.chat(question)
        assert static.chat(question) == expected
        assert "".join(static.stream_chat(question)) == expected
