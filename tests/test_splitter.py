"""The Chinese-aware splitter: sizes, offsets, overlap, boundary preference, and properties over random text."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb_qa.ingest.splitter import split_sections, split_text
from kb_qa.schema import Chunk, Section

SHARED_DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "docs"

# Chinese prose written for this test: 12 sentences of 20-40 characters, one paragraph, no newlines.
ZH_SENTENCES = [
    "知识库问答系统先把文档切分成小段。",
    "每一段都会被编码成一个向量，并保存在向量索引中。",
    "用户提问时，系统会把问题也编码成向量！",
    "然后在索引里找出与问题最接近的若干段落，作为回答的依据。",
    "这些段落连同问题一起交给大模型？",
    "大模型根据给出的材料生成答案，并标注引用的来源。",
    "如果检索不到相关内容，系统应当直接说明不知道；",
    "而不是凭空编造一个看似合理的回答。",
    "切分时要尽量保持句子完整，避免把一句话拆成两半。",
    "相邻的段落之间保留少量重叠，可以减少信息在边界处丢失。",
    "中文没有空格分词，所以标点符号是最重要的边界。",
    "最后，每个片段都记录它在原文中的位置，方便定位出处。",
]
ZH_TEXT = "".join(ZH_SENTENCES)
SENTENCE_END = "。！？；"


def spans_ok(text: str, spans: list[tuple[int, int]], size: int, overlap: int) -> None:
    """The invariants every split must satisfy."""
    assert spans or not text.strip()
    for start, end in spans:
        piece = text[start:end]
        assert 0 < end - start <= size
        assert piece == piece.strip() and piece.strip()
    for (s1, e1), (s2, e2) in zip(spans, spans[1:], strict=False):
        assert s2 > s1 and e2 > e1
        assert e1 - s2 <= overlap  # overlap never exceeds the budget
    covered = set()
    for start, end in spans:
        covered.update(range(start, end))
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and i not in covered]
    assert not missing, f"characters not in any chunk: {[text[i] for i in missing[:10]]}"


def test_chunks_are_exact_substrings_with_offsets_and_metadata():
    sections = [Section("第一节内容。" * 80, page=1, heading="第一节"), Section("   \n  "),
                Section("Second section. " * 40, page=2, heading="Two")]
    chunks = split_sections(sections, "docs/a.md", chunk_size=100, chunk_overlap=20)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert {c.source for c in chunks} == {"docs/a.md"}
    for chunk in chunks:
        assert isinstance(chunk, Chunk)
        section = sections[0] if chunk.page == 1 else sections[2]
        assert section.text[chunk.start:chunk.end] == chunk.text
        assert chunk.heading == section.heading
        assert 0 < len(chunk.text) <= 100 and chunk.text.strip() == chunk.text
    assert {c.page for c in chunks} == {1, 2}  # the whitespace-only section produced nothing
    first_of_two = next(c for c in chunks if c.page == 2)
    assert first_of_two.start == 0  # offsets are per section


def test_chinese_sentences_end_chunks():
    spans = split_text(ZH_TEXT, chunk_size=100, chunk_overlap=30)
    spans_ok(ZH_TEXT, spans, 100, 30)
    assert len(spans) >= 4
    for start, end in spans:
        piece = ZH_TEXT[start:end]
        assert piece[-1] in SENTENCE_END, f"chunk does not end a sentence: …{piece[-15:]!r}"
        assert piece[0] not in SENTENCE_END + "，、：", f"punctuation carried into the next chunk: {piece[:10]!r}"


def test_overlap_is_present_and_starts_at_a_boundary():
    spans = split_text(ZH_TEXT, chunk_size=100, chunk_overlap=30)
    overlaps = [e1 - s2 for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False)]
    assert all(0 < o <= 30 for o in overlaps), overlaps
    for start, _ in spans[1:]:  # overlap begins after a sentence or clause mark, not mid-phrase
        assert ZH_TEXT[start - 1] in SENTENCE_END + "，、："
    no_overlap = split_text(ZH_TEXT, chunk_size=100, chunk_overlap=0)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(no_overlap, no_overlap[1:], strict=False))


def test_paragraphs_then_lines_are_preferred_to_sentences():
    paragraphs = ["第一段。" + "这是第一段的内容，" * 6 + "结束。", "第二段。" + "第二段的句子。" * 12,
                  "第三段。" + "短句。" * 20]  # 61, 88, 64 characters: no two fit in one chunk
    text = "\n\n".join(paragraphs)
    spans = split_text(text, chunk_size=120, chunk_overlap=0)
    spans_ok(text, spans, 120, 0)
    assert [text[s:e] for s, e in spans] == paragraphs
    spans = split_text(text, chunk_size=120, chunk_overlap=30)  # overlap where it fits, same paragraph ends
    spans_ok(text, spans, 120, 30)
    assert [text[s:e][-len(p):] for (s, e), p in zip(spans, paragraphs, strict=False)] == paragraphs
    assert text[spans[1][0]:spans[1][1]].startswith("这是第一段的内容，") and len(spans) == 3
    short = "\n\n".join(["甲段。" * 5, "乙段。" * 5, "丙段。" * 30])
    spans = split_text(short, chunk_size=120, chunk_overlap=0)
    assert short[spans[0][0]:spans[0][1]] == "甲段。" * 5 + "\n\n" + "乙段。" * 5  # paragraphs packed
    lines = "\n".join(["第一行是一个列表项目", "第二行：" + "内容。" * 30, "- 第三行"])
    spans = split_text(lines, chunk_size=90, chunk_overlap=0)
    assert lines[spans[0][0]:spans[0][1]].startswith("第一行是一个列表项目\n第二行")  # no tiny first chunk
    assert any(lines[s:e].endswith("。") for s, e in spans)


def test_clauses_then_characters_when_sentences_are_too_long():
    clauses = "，".join(["这是一个很长的分句"] * 30) + "。"
    spans = split_text(clauses, chunk_size=50, chunk_overlap=10)
    spans_ok(clauses, spans, 50, 10)
    assert all(clauses[s:e][-1] in "，。" for s, e in spans)
    solid = "字" * 257
    spans = split_text(solid, chunk_size=50, chunk_overlap=10)
    spans_ok(solid, spans, 50, 10)
    assert [e - s for s, e in spans[:-1]] == [50] * (len(spans) - 1)


def test_english_sentences_and_numbers():
    text = ("Version 3.14 of the tool was released. It fixes bugs, e.g. crashes. Does it work? Yes! "
            "The price is $1,299.00 and stays so; nothing else changes. ") * 6
    spans = split_text(text, chunk_size=120, chunk_overlap=25)
    spans_ok(text, spans, 120, 25)
    for start, end in spans:
        piece = text[start:end]
        assert piece[-1] in ".!?;", piece
        assert not piece.endswith("3.") and not piece.endswith("1,299.")


def test_ascii_marks_inside_tokens_are_not_boundaries_but_before_chinese_they_are():
    text = "Open https://example.com/search.php?id=12&lang=en,zh for details, or ask in the forum: " * 5
    spans = split_text(text, chunk_size=70, chunk_overlap=15)
    spans_ok(text, spans, 70, 15)
    for start, end in spans:
        assert not text[start:end].endswith(("search.php?", "search.", "lang=en,", "https:")), text[start:end]
        assert text[end - 1] in ",:s" or end == len(text)  # clause marks or a word end before a space
    mixed = "你好!我是知识库助手?有什么可以帮你;请直接提问." * 8
    spans = split_text(mixed, chunk_size=50, chunk_overlap=10)
    spans_ok(mixed, spans, 50, 10)
    assert all(mixed[s:e][-1] in "!?;." for s, e in spans)


def test_hard_wrapped_lines_do_not_cut_sentences():
    sentence = ("Retrieval augmented generation grounds each answer in passages that were "
                "retrieved from the knowledge base for the question at hand.")
    import textwrap

    text = "\n".join(textwrap.wrap(" ".join([sentence] * 8), 70))
    spans = split_text(text, chunk_size=300, chunk_overlap=40)
    spans_ok(text, spans, 300, 40)
    assert all(text[s:e].endswith("hand.") for s, e in spans[:-1])


@pytest.mark.parametrize(("size", "overlap"), [(60, 20), (100, 30), (300, 50)])
def test_no_chunk_is_a_sliver_behind_its_overlap(size, overlap):
    heron = " ".join(f"Sentence {i} says the blue heron nests near river bend number {i}." for i in range(8))
    for text in (heron, ZH_TEXT * 3):
        spans = split_text(text, chunk_size=size, chunk_overlap=overlap)
        spans_ok(text, spans, size, overlap)
        for (_, e1), (_, e2) in zip(spans, spans[1:-1], strict=False):
            assert e2 - e1 >= size // 5, "a chunk that adds almost nothing new"


def test_a_markdown_heading_does_not_end_a_chunk():
    blocks = [f"## 第{i}节\n\n" + "这一节的内容写在这里。" * (4 + i % 3) for i in range(12)]
    text = "\n\n".join(blocks)
    spans = split_text(text, chunk_size=120, chunk_overlap=20)
    spans_ok(text, spans, 120, 20)
    for start, end in spans:
        last_line = text[start:end].rsplit("\n", 1)[-1]
        assert not last_line.startswith("#"), text[start:end]


def test_real_markdown_article():
    path = SHARED_DOCS / "chatchat_zh" / "分布式训练技术原理.md"
    if not path.exists():
        pytest.skip(f"{path} not present")
    from kb_qa.ingest.loaders import load_document

    sections = load_document(path)
    chunks = split_sections(sections, path.name)
    assert len(chunks) > 10
    for chunk in chunks:
        section = next(s for s in sections if s.heading == chunk.heading)
        assert section.text[chunk.start:chunk.end] == chunk.text
        assert len(chunk.text) <= 300
    ends = sum(1 for c in chunks[:-1] if c.text[-1] in "。！？；.!?;)）" or c.end == len(section.text)
               or section.text[c.end:c.end + 1] == "\n")
    assert ends >= 0.8 * (len(chunks) - 1), "most chunks should end at a line or sentence end"


def test_parameters_are_checked():
    with pytest.raises(ValueError):
        split_text("abc", chunk_size=10, chunk_overlap=10)
    with pytest.raises(ValueError):
        split_text("abc", chunk_size=0, chunk_overlap=0)
    with pytest.raises(ValueError):
        split_text("abc", chunk_size=10, chunk_overlap=-1)
    assert split_text("", chunk_size=10, chunk_overlap=2) == []
    assert split_text(" \n\t ", chunk_size=10, chunk_overlap=2) == []
    assert split_text("  short  ", chunk_size=10, chunk_overlap=2) == [(2, 7)]


def test_long_runs_of_blanks_are_fast():
    text = "\n".join([" " * 20000 + "尾巴"] * 5) + " " * 20000
    started = time.perf_counter()
    spans = split_text(text, chunk_size=300, chunk_overlap=50)
    assert time.perf_counter() - started < 2
    assert [text[s:e] for s, e in spans] == ["尾巴"] * 5


def test_large_text_is_fast():
    text = ("\n\n".join([ZH_TEXT, "English sentence number one. " * 10]) + "\n\n") * 150  # ~250k characters
    started = time.perf_counter()
    spans = split_text(text, chunk_size=300, chunk_overlap=50)
    assert time.perf_counter() - started < 5
    spans_ok(text, spans, 300, 50)


ALPHABET = st.sampled_from(list("知识库问答中文句子ab cdXY1.23") + [
    "。", "！", "？", "；", "，", "、", "：", "…", "\n", "\n\n", " ", "  ", "\t", ".", "!", "?", ",", "”", "\u3000"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.lists(ALPHABET, max_size=400).map("".join), size=st.integers(1, 120), data=st.data())
def test_split_properties(text, size, data):
    overlap = data.draw(st.integers(0, size - 1))
    spans = split_text(text, chunk_size=size, chunk_overlap=overlap)
    spans_ok(text, spans, size, overlap)
    chunks = split_sections([Section(text, page=3, heading="h")], "s.txt", chunk_size=size, chunk_overlap=overlap)
    assert [(c.start, c.end) for c in chunks] == spans
    assert all(text[c.start:c.end] == c.text for c in chunks)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300), size=st.integers(1, 60))
def test_split_properties_any_unicode(text, size):
    spans = split_text(text, chunk_size=size, chunk_overlap=size // 3)
    spans_ok(text, spans, size, size // 3)


def test_no_chunk_starts_with_closing_punctuation_in_real_text():
    text = "他说：“今天天气很好。”然后离开了。她问：“你去哪里？”没有人回答！" * 12
    spans = split_text(text, chunk_size=60, chunk_overlap=15)
    spans_ok(text, spans, 60, 15)
    assert not any(re.match(r"[”’。！？；，]", text[s:e]) for s, e in spans)
