"""ChatGLM2ChatModel (kb_qa.llm.chat_model): LangChain messages -> ChatGLM2 rounds, on the tiny checkpoint."""

from __future__ import annotations

import functools
import operator

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from kb_qa.errors import UsageError
from kb_qa.llm.chat_model import ChatGLM2ChatModel, messages_to_rounds
from kb_qa.llm.generation import ChatGLM2Generator, SamplingParams
from kb_qa.llm.tokenizer import build_chat_prompt

pytest_plugins = ["tiny_chatglm2"]  # tiny_loaded: the tiny random ChatGLM2 checkpoint

GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def generator(tiny_loaded):
    return ChatGLM2Generator(tiny_loaded.model, tiny_loaded.tokenizer, params=GREEDY)


@pytest.fixture(scope="module")
def chat(generator):
    return ChatGLM2ChatModel(generator=generator)


DIALOGUE = [SystemMessage("Answer briefly."), HumanMessage("你好"), AIMessage("你好👋！"), HumanMessage("hello")]


def test_messages_become_rounds_with_the_system_text_first():
    assert messages_to_rounds(DIALOGUE) == ("hello", [("Answer briefly.\n\n你好", "你好👋！")])
    assert messages_to_rounds([SystemMessage("S"), HumanMessage("q")]) == ("S\n\nq", [])
    # same-role neighbours are joined; an opening AI greeting answers an empty question
    assert messages_to_rounds([AIMessage("hi"), HumanMessage("a"), HumanMessage("b")]) == ("a\n\nb", [("", "hi")])
    assert messages_to_rounds([HumanMessage([{"type": "text", "text": "x"}, "y"])]) == ("xy", [])
    for bad in ([], [SystemMessage("S")], [HumanMessage("q"), AIMessage("a")],
                [HumanMessage("q"), ToolMessage("r", tool_call_id="1"), HumanMessage("q2")],
                [HumanMessage([{"type": "image_url", "image_url": {"url": "data:,"}}])]):
        with pytest.raises(UsageError):
            messages_to_rounds(bad)


def test_invoke_answers_the_chatglm2_prompt_of_the_dialogue(chat, generator, tiny_loaded):
    message = chat.invoke(DIALOGUE, max_tokens=6)
    prompt = build_chat_prompt("hello", [("Answer briefly.\n\n你好", "你好👋！")])
    assert message.content == generator.generate(prompt, max_new_tokens=6)
    usage = message.usage_metadata
    assert usage["input_tokens"] == tiny_loaded.tokenizer.count_tokens(prompt)
    assert 0 < usage["output_tokens"] <= 6 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    if message.response_metadata["finish_reason"] == "length":
        assert usage["output_tokens"] == 6
    # a different history is a different prompt: the mapping reaches the model
    other = chat.invoke([HumanMessage("hello")], max_tokens=6)
    assert other.content == generator.generate(build_chat_prompt("hello"), max_new_tokens=6)


def test_max_tokens_stops_at_length(chat):
    one = chat.invoke([HumanMessage("你好")], max_tokens=1)
    assert one.usage_metadata["output_tokens"] <= 1
    longer = chat.invoke([HumanMessage("你好")], max_tokens=12)
    assert longer.usage_metadata["output_tokens"] > 1  # the tiny random model does not stop at once
    assert one.response_metadata["finish_reason"] == "length"


def test_stream_yields_the_same_answer_in_pieces(chat):
    full = chat.invoke(DIALOGUE)
    chunks = list(chat.stream(DIALOGUE))
    assert len([c for c in chunks if c.content]) > 1
    assert "".join(c.content for c in chunks) == full.content
    total = functools.reduce(operator.add, chunks)  # LangChain merges the chunks as a streaming caller would
    assert total.usage_metadata == full.usage_metadata
    assert total.response_metadata["finish_reason"] == full.response_metadata["finish_reason"]


def test_stop_strings_cut_the_answer(chat):
    full = chat.invoke([HumanMessage("hello")]).content
    assert len(full) > 3
    cut = full[2:4]
    answer = chat.invoke([HumanMessage("hello")], stop=[cut]).content
    assert cut not in answer and full.startswith(answer.rstrip()) and len(answer) < len(full)


def test_unknown_keyword_is_refused(chat):
    with pytest.raises(TypeError, match="frequency_penalty"):
        chat.invoke([HumanMessage("q")], frequency_penalty=1.0)


def test_from_app_without_a_model_says_why(settings):
    from kb_qa.app import App
    from kb_qa.errors import UnavailableError

    with pytest.raises(UnavailableError, match="no local ChatGLM2"):
        ChatGLM2ChatModel.from_app(App(settings))


def test_from_app_generates_under_the_apps_lock(settings, generator):
    import threading

    from kb_qa.app import App
    from kb_qa.llm.factory import LLMHandle

    app = App(settings, llm=LLMHandle(backend="chatglm2", tokenizer=generator.tokenizer, generator=generator,
                                      max_context_tokens=8192, max_new_tokens=12, description="tiny"))
    chat = ChatGLM2ChatModel.from_app(app, max_tokens=2)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (chat.invoke([HumanMessage("q")]), done.set()))
    with app.generation_lock:  # another front end of this App is generating
        worker.start()
        assert not done.wait(0.5)
    worker.join(30)
    assert done.is_set()
