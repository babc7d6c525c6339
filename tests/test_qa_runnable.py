"""The QA chain as a LangChain Runnable: invoke -> Answer, stream -> AnswerChunks adding up to it, batch, ainvoke,
astream, LCEL composition (`prompt | chain | RunnableLambda`), `.with_config` callbacks and run names, `.bind`.
The model is the tiny random ChatGLM2 checkpoint loaded through the real loader (greedy, so invoke and stream
must agree token for token), a prompt-echoing LangChain LLM where the test reads the prompt, and no model at all
for the retrieval-only path."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder, PromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda
from test_qa import with_docs

from kb_qa.qa.chain import QAChain, as_request
from kb_qa.schema import Answer, AnswerChunk

pytest_plugins = ["tiny_chatglm2"]

GREEDY = {"llm.max_new_tokens": 6, "llm.temperature": 0.0}


@pytest.fixture
def kb_app(app, tmp_path):
    return with_docs(app, tmp_path)  # test_qa.DOCS (tea.txt, santi.txt, paris.txt) as the default KB "kb"


@pytest.fixture(scope="module")
def tiny_handle(tiny_dir):
    from kb_qa.llm.factory import load_llm
    from kb_qa.settings import LLMSettings

    handle = load_llm(LLMSettings(model_path=str(tiny_dir), device="cpu", dtype="float32", max_new_tokens=6,
                                  temperature=0.0))
    assert handle is not None
    return handle


@pytest.fixture
def tiny_chain(kb_app, tiny_handle):
    return QAChain(kb_app, tiny_handle)


def summed(chunks: list[AnswerChunk]) -> AnswerChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


# -- the real (tiny) model ----------------------------------------------------------------------------------------
def test_invoke_returns_the_answer_with_its_sources(tiny_chain):
    assert isinstance(tiny_chain, Runnable)
    result = tiny_chain.invoke({"question": "龙井茶产于哪里？", "kb": "kb", "overrides": GREEDY})
    assert isinstance(result, Answer) and result.mode == "llm"
    assert result.sources and result.sources[0].source == "tea.txt" and result.sources[0].kb == "kb"
    assert result.text and {"generation", "total"} <= set(result.timings_ms)


def test_stream_yields_text_deltas_then_the_answer_and_agrees_with_invoke(tiny_chain):
    request = {"question": "龙井茶产于哪里？", "overrides": GREEDY}
    chunks = list(tiny_chain.stream(request))
    assert all(isinstance(c, AnswerChunk) for c in chunks)
    *deltas, last = chunks
    assert deltas and all(c.text and c.answer is None for c in deltas)  # pieces as they are generated
    assert last.text == "" and isinstance(last.answer, Answer)
    assert "".join(c.text for c in deltas) == last.answer.text
    whole = summed(chunks)  # what LangChain accumulates for on_chain_end and for a following step
    assert whole.text == last.answer.text and whole.sources == last.answer.sources and whole.mode == "llm"
    invoked = tiny_chain.invoke(request)  # greedy: the same tokens either way
    assert invoked.text == last.answer.text and [s.chunk_id for s in invoked.sources] == \
        [s.chunk_id for s in last.answer.sources]


def test_a_question_arriving_in_pieces_is_added_up_before_answering(tiny_chain):
    # LangChain's default `transform` (what a preceding streaming step calls) sums the pieces, then streams.
    pieces = list(tiny_chain.bind(overrides=GREEDY).transform(iter(["龙井茶", "产于哪里？"])))
    whole = list(tiny_chain.bind(overrides=GREEDY).stream("龙井茶产于哪里？"))
    assert summed(pieces).text == summed(whole).text and summed(pieces).sources[0].source == "tea.txt"


def test_lcel_prompt_chain_lambda_invoke_and_stream(tiny_chain):
    prompt = PromptTemplate.from_template("{drink}产于哪里？")
    pipeline = prompt | tiny_chain.bind(overrides=GREEDY) | RunnableLambda(
        lambda a: {"text": a.text, "cited": [s.source for s in a.sources]})
    out = pipeline.invoke({"drink": "龙井茶"})
    assert out["cited"][0] == "tea.txt" and out["text"]
    streamed = list(pipeline.stream({"drink": "龙井茶"}))
    assert streamed == [out]  # the lambda sees the summed chunks: same text and sources as with invoke


def test_batch_and_async(tiny_chain):
    questions = ["龙井茶产于哪里？", "How tall is the Eiffel Tower?"]
    answers = tiny_chain.batch([{"question": q, "overrides": GREEDY} for q in questions])
    assert [a.sources[0].source for a in answers] == ["tea.txt", "paris.txt"]

    async def run():
        one = await tiny_chain.ainvoke({"question": questions[1], "overrides": GREEDY})
        chunks = [c async for c in tiny_chain.astream({"question": questions[1], "overrides": GREEDY})]
        many = await tiny_chain.abatch([{"question": q, "overrides": GREEDY} for q in questions])
        longer = {**GREEDY, "llm.max_new_tokens": 64}
        async for _ in tiny_chain.astream({"question": questions[0], "overrides": longer}):
            break  # leaving early neither hangs nor leaves the model held
        return one, chunks, many

    one, chunks, many = asyncio.run(run())
    assert one.sources[0].source == "paris.txt"
    assert len(chunks) >= 2 and chunks[-1].answer is not None and chunks[-1].answer.text == one.text
    assert "".join(c.text for c in chunks) == one.text
    assert [a.text for a in many] == [a.text for a in answers]
    assert not tiny_chain.llm.generator.lock.locked()  # the model is free again


def test_with_config_reaches_callbacks_with_the_run_name(tiny_chain):
    events: list[tuple[str, object]] = []

    class Recorder(BaseCallbackHandler):
        def on_chain_start(self, serialized, inputs, **kwargs):
            events.append(("start", kwargs.get("name")))

        def on_chain_end(self, outputs, **kwargs):
            events.append(("end", outputs))

        def on_llm_start(self, serialized, prompts, **kwargs):
            events.append(("llm", prompts[0]))

    configured = tiny_chain.with_config(run_name="kb-answer", callbacks=[Recorder()])
    result = configured.invoke({"question": "龙井茶产于哪里？", "overrides": GREEDY})
    assert events[0] == ("start", "kb-answer") and events[-1] == ("end", result)
    assert any(kind == "llm" and "西湖" in str(text) for kind, text in events)  # the model's run is a child
    events.clear()
    chunks = list(configured.stream({"question": "龙井茶产于哪里？", "overrides": GREEDY}))
    assert events[0] == ("start", "kb-answer")
    end = events[-1][1]
    assert isinstance(end, AnswerChunk) and end.text == chunks[-1].answer.text


# -- the prompt the model gets (echo LLM) ------------------------------------------------------------------------
def test_a_chat_prompt_becomes_system_history_and_question(kb_app, echo_llm):
    chain = QAChain(kb_app, echo_llm)
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer in one short sentence."), MessagesPlaceholder("history"), ("human", "{question}")])
    history = [HumanMessage("《三体》是谁写的？"), AIMessage("刘慈欣。")]
    result = (prompt | chain).invoke({"question": "龙井茶产于哪里？", "history": history})
    turn, kwargs = echo_llm.calls[-1]
    assert turn.startswith("Answer in one short sentence.\n\n") and "问题：龙井茶产于哪里？" in turn
    assert "[1] 出处：kb: tea.txt" in turn
    assert kwargs["history"] == [("《三体》是谁写的？", "刘慈欣。")]
    assert result.sources[0].source == "tea.txt"
    assert "Answer in one short sentence" not in result.query  # the system text stays out of retrieval


def test_a_system_text_too_long_for_the_window_is_refused(kb_app, echo_llm):
    from kb_qa.qa.packing import ContextTooLong

    chain = QAChain(kb_app, echo_llm)
    with pytest.raises(ContextTooLong):
        chain.invoke({"question": "龙井茶产于哪里？", "system": "长" * 20000})
    assert echo_llm.calls == []


def test_input_forms_and_mistakes():
    assert as_request("问题")["question"] == "问题"
    dialogue = as_request([SystemMessage("s1"), SystemMessage("s2"), HumanMessage("q1"), AIMessage("a1"),
                           HumanMessage("q2")], {"kb": "kb"})
    assert dialogue == {"question": "q2", "history": [("q1", "a1")], "kbs": "kb", "overrides": None,
                        "files": None, "system": "s1\n\ns2"}
    assert as_request({"question": "q", "kbs": ["a", "b"]}, {"kb": "bound"})["kbs"] == ["a", "b"]
    with pytest.raises(ValueError, match="unknown key"):
        as_request({"question": "q", "knowledge_base": "kb"})
    with pytest.raises(ValueError, match="last message"):
        as_request([HumanMessage("q"), AIMessage("a")])
    with pytest.raises(ValueError, match="'question'"):
        as_request({"kb": "kb"})
    with pytest.raises(TypeError):
        as_request(42)


# -- no model: retrieval only ------------------------------------------------------------------------------------
def test_retrieval_only_runnable(kb_app):
    chain = QAChain(kb_app, None)
    result = chain.invoke("龙井茶产于哪里？")
    assert result.mode == "retrieval-only" and result.sources[0].source == "tea.txt" and "西湖" in result.text
    chunks = list(chain.stream({"question": "Eiffel Tower height", "overrides": {"retrieval.top_k": 1}}))
    assert [c.answer is None for c in chunks] == [True, False]
    assert "330 metres" in chunks[0].text and chunks[-1].answer.sources[0].source == "paris.txt"
    assert len(chunks[-1].answer.sources) == 1
    names = (PromptTemplate.from_template("{q}") | chain | RunnableLambda(lambda a: a.sources[0].source)).batch(
        [{"q": "龙井茶产于哪里？"}, {"q": "《三体》是谁写的？"}])
    assert names == ["tea.txt", "santi.txt"]
    assert chain.bind(kb="nope").invoke  # binding is lazy; the unknown KB fails when asked
    from kb_qa.store import KnowledgeBaseNotFound

    with pytest.raises(KnowledgeBaseNotFound):
        chain.bind(kb="nope").invoke("龙井茶产于哪里？")
