"""Loaders and encoding detection, on small documents made for these tests (tests/fixtures/docs) and on every
real document in the shared corpus (../shared/docs), each with its expected outcome."""

from __future__ import annotations

import codecs
import importlib.util
from pathlib import Path

import pytest

from kb_qa.ingest.encoding import DecodeError, decode_text
from kb_qa.ingest.loaders import SUPPORTED_EXTENSIONS, LoadError, clean_text, load_bytes, load_document

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "tests" / "fixtures" / "docs"
SHARED_DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "docs"
HAS_CRYPTOGRAPHY = importlib.util.find_spec("cryptography") is not None

ZH_1 = "知识库问答系统先把文档切分成小段，再为每一段计算向量。"
EN_1 = "The quick brown fox jumps over the lazy dog."
MOJIBAKE = ("Ã", "â€", "锟斤拷", "\ufffd", "\ufeff", "\x00")


def text_of(sections) -> str:
    return "\n".join(s.text for s in sections)


def assert_clean(text: str) -> None:
    for marker in MOJIBAKE:
        assert marker not in text, f"{marker!r} in text: mojibake, a BOM or a NUL survived"


# ---------------------------------------------------------------------------------------------------------------
# Fixture documents, one or more per format

FORMATS = [
    # file, phrases that must appear, headings that must appear (subset, in order), pages (None = no pages)
    ("sample.txt", [EN_1, ZH_1], [], None),
    ("sample.md", [ZH_1, "# 这一行是代码注释，不是标题", "最后一段。"],
     ["知识库简介", "安装步骤", "English Setext Heading", "三级标题"], None),
    ("sample.pdf", ["Page one of the sample PDF.", "知识库问答系统先把文档切分成小段", "Page three closes the sample"],
     ["Introduction", "中文章节"], [1, 2, 3]),
    ("sample.docx", [ZH_1, "文档开头的说明段落。", "名称 | 数量 | 备注", "苹果 | 3 | red", "梨 | 5 合并单元格"],
     ["知识库示例文档", "第一章 简介", "1.1 English section", "第二章 总结"], None),
    ("sample.pptx", ["目标：搭建本地知识库问答", "准确率 | 0.92", "Speaker notes mention latency.", "没有标题的幻灯片"],
     ["项目概览", "Results"], [1, 2, 3]),
    ("sample.xlsx", ["员工名单", "姓名: 王五\n部门: 研发部\n入职日期: 2023-03-01\n工号: 1001", "工号: 1002",
                     "metric: ratio\nvalue: 0.25"], ["员工", "Summary"], None),
    ("sample.csv", ["姓名: 张三\n部门: 研发部\n城市: 北京", "部门: 市场部, 华东"], [], None),
    ("sample.tsv", ["product: Widget\nprice: 9.99\nnote: comma, inside", "product: Gadget\nprice: 12"], [], None),
    ("semicolon.csv", ["name: Alice\nrole: engineer\ncity: Paris"], [], None),
    ("sample.json", ["title: 产品手册", "version: 2", "- 知识库", "- name: 安装", "enabled: true"], [], None),
    ("sample.jsonl", ["q: 什么是向量检索？\na: 用向量相似度查找段落。", "q: What is BM25?"], [], None),
    ("sample.html", ["页面开头的导语，没有标题。", ZH_1, "- 列表项一", "- List item two stays on one line",
                     "名称 | 数量\n苹果 | 3", "After a line break."],
     ["示例网页", "第一部分", "Table section", "Third level"], None),
    ("cp1252.html", ["Café crème brûlée costs 5 € — naïve façade, “smart quotes” and Œuvre."], ["Dessert"], None),
    ("gb2312-declared.html", ["中文编码测试：这是一段用GBK编码保存的文本。", "《书名号》"], ["声明了字符集"], None),
    ("sample.xml", ["title: 红楼梦", "author: 曹雪芹", "summary: A monk travels west with four companions."], [], None),
    ("sample.odt", [ZH_1, "Two spaces\tand a tab.", "- 列表第一项", "cell A1 | 单元格 B1"],
     ["开放文档标题", "Table heading"], None),
    ("sample.epub", [ZH_1, EN_1], ["第一章 开端", "Chapter Two"], None),
    ("sample.eml", ["Subject: 知识库周报", "From: KB Bot <bot@example.com>", ZH_1, "Regards,"], ["知识库周报"], None),
    ("gbk.eml", ["Subject: 编码周报\nFrom: 张三 <a@example.com>", "中文编码测试：这是一段用GBK编码保存的文本。"], ["编码周报"],
     None),
    ("sample.rtf", ["中文段落", "统一码", "Café “quoted”\ttabbed\nnext line", "R1C1 | R1C2"], ["RTF Heading"], None),
    ("gbk.txt", ["中文编码测试：这是一段用GBK编码保存的文本。", "第二行：简体中文，标点符号“引号”与《书名号》。"], [], None),
    ("big5.txt", ["繁體中文測試：這是一段用Big5編碼保存的文字。", "臺灣與香港常用繁體字"], [], None),
    ("utf16le-bom.txt", ["UTF-16 样例：双字节编码的中文文本。\nSecond line in English with a euro sign €."], [], None),
    ("utf16be-bom.txt", ["UTF-16 样例：双字节编码的中文文本。\nSecond line in English with a euro sign €."], [], None),
    ("utf16le-nobom.txt", ["UTF-16 样例：双字节编码的中文文本。"], [], None),
    ("utf32le-bom.txt", ["UTF-16 样例：双字节编码的中文文本。"], [], None),
    ("cp1252.txt", ["Café crème brûlée costs 5 € — naïve façade, “smart quotes” and Œuvre.\nWindows line ends."], [],
     None),
    ("crlf-bom.txt", ["第一行\n第二行\n\n第三段 有全角空格。"], [], None),
]


@pytest.mark.parametrize(("name", "phrases", "headings", "pages"), FORMATS, ids=[f[0] for f in FORMATS])
def test_fixture_formats(name, phrases, headings, pages):
    sections = load_document(DOCS / name)
    text = text_of(sections)
    assert_clean(text)
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not found in {name}"
    found = [s.heading for s in sections if s.heading]
    it = iter(found)
    assert all(h in it for h in headings), f"headings {headings} not in order in {found}"
    if pages is None:
        assert all(s.page is None for s in sections)
    else:
        assert [s.page for s in sections] == pages
    assert all(s.text == s.text.strip() and s.text for s in sections)
    assert load_bytes((DOCS / name).read_bytes(), name) == sections


def test_pdf_text_stays_on_its_page():
    sections = load_document(DOCS / "sample.pdf")
    by_page = {s.page: s.text for s in sections}
    assert "知识库" not in by_page[1] and "quick brown fox" in by_page[1]
    assert "知识库问答系统" in by_page[2] and "Page three" not in by_page[2]
    assert by_page[3].startswith("Page three")
    assert [s.heading for s in sections] == ["Introduction", "中文章节", "中文章节"]  # page 3: heading in force


def test_things_that_must_not_be_loaded():
    html = text_of(load_document(DOCS / "sample.html"))
    for hidden in ("secretScript", "secret-style", "NavLinkText", "HiddenDivText"):
        assert hidden not in html
    assert "PageHeaderText" not in text_of(load_document(DOCS / "sample.docx"))  # page furniture
    rtf = text_of(load_document(DOCS / "sample.rtf"))
    for hidden in ("HiddenInfoTitle", "HiddenGenerator", "HiddenHeader", "SimSun", "fcharset"):
        assert hidden not in rtf
    xml = text_of(load_document(DOCS / "sample.xml"))
    assert "root:" not in xml and "passwd" not in xml  # the external entity was not resolved
    assert "HTML version" not in text_of(load_document(DOCS / "sample.eml"))  # plain part preferred
    assert "=B2*2" not in text_of(load_document(DOCS / "sample.xlsx"))  # formula source is not text


def test_markdown_sections_keep_the_text_as_written():
    raw = (DOCS / "sample.md").read_bytes().decode("utf-8-sig")
    sections = load_document(DOCS / "sample.md")
    assert sections[0].text.startswith("# 知识库简介")
    for section in sections:
        assert section.text in raw
    code = next(s for s in sections if s.heading == "安装步骤")
    assert "```bash\n# 这一行是代码注释，不是标题\npip install" in code.text


@pytest.mark.parametrize("name", ["sample.pdf", "owner-only-aes.pdf"])
def test_pdf_that_opens_without_a_password(name):
    if name == "owner-only-aes.pdf" and not HAS_CRYPTOGRAPHY:
        with pytest.raises(LoadError, match="cryptography"):
            load_document(DOCS / name)
        return
    text = text_of(load_document(DOCS / name))
    assert "知识库问答系统先把文档切分成小段" in text


ERRORS = [
    ("empty.txt", "empty document"),
    ("whitespace.txt", "empty document"),
    ("encrypted.pdf", "encrypted PDF: a password is needed"),
    ("truncated.pdf", "corrupt or truncated PDF"),
    ("fake-exe.pdf", "not a PDF: the content does not match the .pdf extension (it looks like a Windows executable)"),
    ("scanned.pdf", "no text layer (scanned?): OCR is not configured"),
    ("truncated.docx", "corrupt or truncated DOCX"),
    ("zip-renamed.txt", "does not match the .txt extension"),
    ("invalid.json", "invalid JSON"),
]


@pytest.mark.parametrize(("name", "reason"), ERRORS, ids=[e[0] for e in ERRORS])
def test_fixture_errors(name, reason):
    path = DOCS / name
    with pytest.raises(LoadError) as info:
        load_document(path)
    assert reason in info.value.reason
    assert info.value.path == path
    assert str(info.value) == f"{path}: {info.value.reason}"
    with pytest.raises(LoadError) as info:
        load_bytes(path.read_bytes(), name)
    assert reason in info.value.reason and info.value.path == name


@pytest.mark.parametrize("name", sorted(p.name for p in DOCS.iterdir() if p.suffix != ".py"))
def test_damaged_files_fail_with_load_error_only(name):
    """Truncated or bit-flipped bytes either still load or raise LoadError, never another exception."""
    import random

    data = (DOCS / name).read_bytes()
    rng = random.Random(name)
    variants = [data[:k] for k in {1, len(data) // 3, len(data) - 1} if 0 < k < len(data)]
    for _ in range(3):
        flipped = bytearray(data)
        for _ in range(max(1, len(flipped) // 200)):
            if flipped:
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        variants.append(bytes(flipped))
    for variant in variants:
        try:
            sections = load_bytes(variant, name)
        except LoadError as exc:
            assert exc.reason and exc.path == name
        else:
            assert sections and all(s.text.strip() for s in sections)


# ---------------------------------------------------------------------------------------------------------------
# The entry points' contract

def test_load_error_shape():
    err = LoadError(Path("a/b.pdf"), "encrypted PDF: a password is needed")
    assert str(err) == "a/b.pdf: encrypted PDF: a password is needed"
    assert err.path == Path("a/b.pdf") and err.reason == "encrypted PDF: a password is needed"
    assert isinstance(err, Exception)


def test_missing_file_folder_and_size_limit(tmp_path):
    with pytest.raises(LoadError, match="file not found"):
        load_document(tmp_path / "nope.txt")
    with pytest.raises(LoadError, match="is a folder"):
        load_document(tmp_path)
    big = tmp_path / "big.txt"
    big.write_text("x" * 2000)
    with pytest.raises(LoadError, match="over the limit") as info:
        load_document(big, max_bytes=1000)
    assert info.value.path == big
    assert text_of(load_document(big, max_bytes=2000)) == "x" * 2000


@pytest.mark.parametrize(("name", "reason"), [
    ("old.doc", "unsupported file type .doc (Word 97-2003 binary format): save it as .docx"),
    ("old.xls", "save it as .xlsx"),
    ("program.exe", "unsupported file type .exe"),
    ("LICENSE", "unsupported file type (no file name extension)"),
])
def test_unsupported_types(name, reason):
    with pytest.raises(LoadError) as info:
        load_bytes(b"some bytes", name)
    assert reason in info.value.reason


def test_supported_extensions():
    assert all(e.startswith(".") and e == e.lower() for e in SUPPORTED_EXTENSIONS)
    required = {".txt", ".md", ".pdf", ".docx", ".pptx", ".html", ".htm", ".csv", ".tsv", ".xlsx", ".json",
                ".jsonl", ".odt", ".rtf", ".epub", ".eml", ".xml"}
    assert required <= SUPPORTED_EXTENSIONS
    assert load_bytes(b"# Upper\n\ntext", "NOTES.MD")[0].heading == "Upper"  # extension case-insensitive


def test_configured_extensions_are_all_supported():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((REPO / "configs" / "default.yaml").read_text(encoding="utf-8"))
    assert set(config["ingest"]["extensions"]) <= SUPPORTED_EXTENSIONS


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("a.docx", b"%PDF-1.7\n...",
     "not a DOCX file: the content does not match the .docx extension (it looks like a PDF)"),
    ("a.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "legacy binary Office file renamed .xlsx"),
    ("a.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + "EncryptedPackage".encode("utf-16-le") + bytes(64),
     "encrypted DOCX: a password is needed"),
    ("a.pptx", b"PK\x03\x04" + bytes(40), "corrupt or truncated PPTX"),
    ("a.rtf", b"plain words", "not an RTF document"),
    ("a.html", b"\x89PNG\r\n\x1a\n" + bytes(50), "it looks like a PNG image"),
    ("a.txt", bytes(range(256)) * 8, "cannot decode text: binary data"),
    ("a.txt", bytes(range(0x80, 0xA0)) * 10, "cannot decode text: not UTF-8/16/32, GB18030, Big5 or cp1252"),
    ("a.json", b"\xff\xfe" + b"\x00\xd8" * 3, "cannot decode text: starts with a UTF-16-LE byte-order mark"),
    ("a.csv", b"a,b\n\xff\xfe\xfd\x00\x01", "cannot decode text"),
])
def test_content_checks(name, data, reason):
    with pytest.raises(LoadError) as info:
        load_bytes(data, name)
    assert reason in info.value.reason


def test_rtf_details():
    rtf = (rb"{\rtf1\ansi\ansicpg1252\uc1 Emoji \u-10179?\u-8704? ok"
           rb"{\pict\bin6 {}}\'x} after{\*\unknowndest hidden} \'80 \u20013?\u25991?\par}")
    assert text_of(load_bytes(rtf, "x.rtf")) == "Emoji 😀 ok after € 中文"


def test_docx_made_from_another_package_is_refused(tmp_path):
    import zipfile

    buf = tmp_path / "x.docx"
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(LoadError, match="has no word/document.xml"):
        load_document(buf)


# ---------------------------------------------------------------------------------------------------------------
# Encoding detection

ZH = "知识库问答：中文文本的编码检测，不能出现乱码。第二句话在这里！"


@pytest.mark.parametrize(("data", "expected"), [
    (codecs.BOM_UTF8 + ZH.encode(), ZH),
    (codecs.BOM_UTF16_LE + ZH.encode("utf-16-le"), ZH),
    (codecs.BOM_UTF16_BE + ZH.encode("utf-16-be"), ZH),
    (codecs.BOM_UTF32_LE + ZH.encode("utf-32-le"), ZH),
    (codecs.BOM_UTF32_BE + ZH.encode("utf-32-be"), ZH),
    (("abc\n" + ZH).encode("utf-16-le"), "abc\n" + ZH),
    (("abc\n" + ZH).encode("utf-16-be"), "abc\n" + ZH),
    (("abc 😀\n" + ZH).encode("utf-32-le"), "abc 😀\n" + ZH),
    (ZH.encode("gbk"), ZH),
    (ZH.encode("gb18030"), ZH),
    ("这是一个测试。".encode("gbk"), "这是一个测试。"),
    ("中文".encode("gbk"), "中文"),  # four bytes: GB and Big5 both decode them; frequency decides
    ("中文".encode("big5"), "中文"),
    ("維基百科是自由的百科全書，任何人都可以編輯。".encode("big5"), "維基百科是自由的百科全書，任何人都可以編輯。"),
    ("Größe: 5 €, naïve café — “quoted”".encode("cp1252"), "Größe: 5 €, naïve café — “quoted”"),
    ("## können\n\nkönnen\n\näöüß\n".encode("latin-1"), "## können\n\nkönnen\n\näöüß\n"),
    (b"line1\r\nline2\rline3", "line1\nline2\nline3"),
    (b"", ""),
])
def test_decode_text(data, expected):
    assert decode_text(data) == expected


def test_decode_honours_declared_charset_only_for_markup():
    body = "简体中文网页".encode("gb2312")
    html = b'<html><head><meta charset="gb2312"></head><body>' + body + b"</body></html>"
    assert "简体中文网页" in decode_text(html, "page.html")
    xml = b'<?xml version="1.0" encoding="GBK"?><r>' + "标题".encode("gbk") + b"</r>"
    assert "标题" in decode_text(xml, "feed.xml")
    # a declaration that does not decode cleanly is ignored in favour of detection
    lying = b'<meta charset="utf-16"><p>' + "Café".encode("cp1252") + b"</p>"
    assert "Café" in decode_text(lying, "x.html")


@pytest.mark.parametrize("data", [
    bytes(range(256)),
    b"\x00\x01\x02\x03binary\x00\x00",
    bytes(range(0x80, 0xA0)) * 4,
    codecs.BOM_UTF8 + b"\xff\xfe bad utf-8",
])
def test_decode_refuses_what_is_not_text(data):
    with pytest.raises(DecodeError):
        decode_text(data)
    assert issubclass(DecodeError, ValueError)


def test_clean_text():
    raw = ("\ufeffTitle\r\n\r\n\r\n\r\nA  lot   of \t spaces\u00a0here.\x00\x07   \n"
           "    indented code\nﬁnd ⽤户\u200b\fnext")
    # runs of spaces collapse (a run with a tab becomes a tab: a column separator), indentation stays
    assert clean_text(raw) == "Title\n\nA lot of\tspaces here.\n    indented code\nfind 用户\n\nnext"
    assert clean_text("中文，标点。“引号”！") == "中文，标点。“引号”！"
    assert clean_text(" \n\t \n") == ""


def test_long_runs_of_blanks_take_linear_time():
    import time

    started = time.perf_counter()
    for text in (" " * 50000 + "x", ("\t" * 20000 + "y\n") * 3, "# " + " " * 50000 + "z"):
        assert clean_text(text).strip()
        load_bytes(text.encode(), "blank.md")
    assert time.perf_counter() - started < 2  # quadratic regex backtracking would take minutes


# ---------------------------------------------------------------------------------------------------------------
# Every document in the shared corpus, with its expected outcome

OK, ERR = "ok", "error"
CRYPTO_NOTE = "encrypted PDF: opening it needs the 'cryptography' package"
# path: (OK, phrases that must appear, headings that must appear) | (ERR, reason substring)
SHARED = {
    "README.md": (OK, ["Files that real users have"], ["Real documents for parser and ingestion tests"]),
    "chardet_encodings/Big5__ude_1.txt": (OK, ["維基大典（Wikipedia）者，網路為礎"], []),
    "chardet_encodings/Big5_sinica.edu.tw.xml": (OK, ["title: 「隨機部落格」之「線上演算法」", "title: 新年快樂"], []),
    "chardet_encodings/GB2312_14.blog.westca.com.xml": (OK, ["加西公社温哥华大队向阳生产队温暖小分队"], []),
    "chardet_encodings/GB2312__mozilla_bug171813_text.html": (OK, ["搜狐在线国庆免费大酬宾"], []),
    "chardet_encodings/GB2312_acnnewswire.net.xml": (OK, ["JCB 与中国银联（China UnionPay）完成ATM网关协议的签订"], []),
    "chardet_encodings/GB2312_cnblog.org.xml": (OK, ["出版商oreilly推出了开放图书项目"], []),
    "chardet_encodings/README_tests.txt": (OK, ["Universal Encoding Detector"], []),
    "chatchat_zh/LICENSE": (ERR, "unsupported file type (no file name extension)"),
    "chatchat_zh/langchain-ChatGLM_closed.csv": (OK, ["title: 加油~以及一些建议", "当前的运行环境是什么，windows还是Linux"], []),
    "chatchat_zh/langchain-ChatGLM_closed.xlsx": (OK, ["title: 加油~以及一些建议", "detail: 加油，我认为你的方向是对的。"],
                                                   ["Sheet1"]),
    "chatchat_zh/langchain.pdf": (OK, ["Creating Large Language Model Applications Utilizing LangChain"], []),
    "chatchat_zh/ocr_test.docx": (OK, ["我是文字", "我是表格1 | 我是表格2"], []),
    "chatchat_zh/ocr_test.pdf": (OK, ["我是文字"], []),
    "chatchat_zh/ocr_test.pptx": (OK, ["我是文字", "我是表格1 | 我是表格5"], []),
    "chatchat_zh/test.txt": (OK, ["如何向 ChatGPT 提问以获得高质量答案"], []),
    "chatchat_zh/分布式训练技术原理.md": (OK, ["FSDP算法是由来自DeepSpeed的ZeroRedundancyOptimizer技术驱动的"], ["分布式训练技术原理"]),
    "chatchat_zh/大模型应用技术原理.md": (OK, ["向量数据库"], ["大模型应用技术原理"]),
    "chatchat_zh/大模型技术栈-实战与应用.md": (OK, ["训练框架", "megatron-lm"], ["大模型技术栈-实战与应用"]),
    "chatchat_zh/大模型技术栈-算法与原理.md": (OK, ["tokenizer方法"], ["大模型技术栈-算法与原理"]),
    "chatchat_zh/大模型指令对齐训练原理.md": (OK, ["RLHF"], ["大模型指令对齐训练原理"]),
    "chatchat_zh/大模型推理优化策略.md": (OK, ["PagedAttention"], ["大模型推理优化策略"]),
    "mineru/docx_01.docx": (OK, ["MinerU supports DOCX document parsing now", "在这个日新月异、瞬息万变的时代背景下"],
                            ["MinerU supports DOCX document parsing now", "多级列表", "4 参考文献"]),
    "mineru/small_ocr.pdf": (ERR, "no text layer (scanned?): OCR is not configured"),
    "pymupdf_zh/chinese-tables.pdf": (OK, ["第七章 企业资信状况", "发行人历史信用评级情况"], []),
    "unstructured/LICENSE.md": (OK, ["Apache License", "TERMS AND CONDITIONS FOR USE"], []),
    "unstructured/README.md": (OK, ["layout-parser-paper.pdf"], ["Example Docs", "XBRL 10-K"]),
    "unstructured/UDHR_first_article_all.txt": (OK, ["All human beings are born free and equal in dignity and rights",
                                                     "人人生而自由，在尊严同权利上一律平等"], []),
    "unstructured/book-war-and-peace-1p.txt": (OK, ["so Genoa and Lucca are now just family estates"], []),
    "unstructured/codeblock.md": (OK, ["<body>Don't forget me this weekend!</body>"], ["HTML Example", "XML Example"]),
    "unstructured/copy-protected.pdf": (OK, ["LayoutParser: A Unified Toolkit for Deep"], [])
    if HAS_CRYPTOGRAPHY else (ERR, CRYPTO_NOTE),
    "unstructured/csv-with-escaped-commas.csv": (OK, ["A: A,A"], []),
    "unstructured/csv-with-long-lines.csv": (OK, ["SpearmanCorrelationCoefficient"], []),
    "unstructured/docx-hdrftr.docx": (OK, ["Main document"], []),
    "unstructured/docx-tables.docx": (OK, ["Header Col 1 | Header Col 2", "Table with merged cells"], []),
    "unstructured/embedded-cmap-cidfont.pdf": (OK, ["This text uses an embedded CMap"], []),
    "unstructured/empty.txt": (ERR, "empty document"),
    "unstructured/example-10k-1p.html": (OK, ["Galaxy Gaming, Inc.", "Common stock | GLXZ | OTCQB marketplace"], []),
    "unstructured/example-steelJIS-datasheet.html": (OK, ["SNB22-3"],
                                                     ["SNB22-3 Chemical composition, standards and properties"]),
    "unstructured/example-with-scripts.html": (OK, ["Belarusian forces remain unlikely to attack Ukraine"],
                                               ["Russian Offensive Campaign Assessment, December 13"]),
    "unstructured/fake-doc.rtf": (OK, ["My first paragraph.", "Row 2, Cell 1 | Row 2, Cell 2"], ["My First Heading"]),
    "unstructured/fake-html-cp1252.html": (OK, ["Die schöne Frau", "Der Preis betrug 15,50 €.", "El niño comió paella"],
                                           ["My First Heading"]),
    "unstructured/fake-html.html": (OK, ["- With sub-bullets!", "Row 1, Cell 1 | Row 1, Cell 2"],
                                    ["My Second Heading", "A Third Heading"]),
    "unstructured/fake-memo.pdf": (OK, ["20,000 bottles of water"], []),
    "unstructured/fake-power-point.pptx": (OK, ["Here is some text in a text box!"], ["Adding a Bullet Slide"]),
    "unstructured/fake-text-all-whitespace.txt": (ERR, "empty document"),
    "unstructured/fake-text-utf-16-be.txt": (OK, ["Doylestown, PA 18901", "Hamburgers are delicious"], []),
    "unstructured/fake-text-utf-16-le.txt": (OK, ["Doylestown, PA 18901", "Hamburgers are delicious"], []),
    "unstructured/fake-text-utf-16.txt": (OK, ["Doylestown, PA 18901", "Hamburgers are delicious"], []),
    "unstructured/fake-text-utf-32.txt": (OK, ["Doylestown, PA 18901", "Hamburgers are delicious"], []),
    "unstructured/fake-text.txt": (OK, ["Doylestown, PA 18901", "Hamburgers are delicious"], []),
    "unstructured/fake.doc": (ERR, "unsupported file type .doc"),
    "unstructured/fake.docx": (OK, ["Lorem ipsum dolor sit amet."], []),
    "unstructured/fake.odt": (OK, ["Lorem ipsum dolor sit amet.", "Color | Blue | Red | Green"], []),
    "unstructured/fake_table.docx": (OK, ["Lorem ipsum | A Link example", "Dolor sit amet"], []),
    "unstructured/handbook-1p.docx": (OK, ["ROLE OF THE UNITED STATES TRUSTEE"], []),
    "unstructured/ideas-page.html": (OK, ["Someone fed my essays into GPT"], ["How to Get New Ideas"]),
    "unstructured/korean-text-with-tables.pdf": (OK, ["적립 제외 대상"], []),
    "unstructured/layout-parser-paper-fast.pdf": (OK, ["LayoutParser: A Unified Toolkit for Deep"], []),
    "unstructured/list-item-example.pdf": (OK, ["Module One - Introduction to Product Development and Quality"], []),
    "unstructured/multi-column-2p.pdf": (OK, ["Dense Passage Retrieval for Open-Domain Question Answering"], []),
    "unstructured/norwich-city.txt": (OK, ["Iwan Roberts"], []),
    "unstructured/password.pdf": (ERR, "encrypted PDF: a password is needed"),
    "unstructured/pdf-with-ocr-text.pdf": (OK, ["progress of the Foundation"], []),
    "unstructured/reliance.pdf": (OK, ["Integrated Annual Report 2021-22"], []),
    "unstructured/semicolon-delimited.csv": (OK, ["Lorem, ipsum: consectetur"], []),
    "unstructured/simple-table.md": (OK, ["Juicy Apples | 1.99 | 739"], []),
    "unstructured/simple.docx": (OK, ["This is my first thought. This is my second thought."],
                                 ["These are a few of my favorite things:"]),
    "unstructured/simple.json": (OK, ["text: These are a few of my favorite things:", "filetype: application/"], []),
    "unstructured/single_table.pdf": (ERR, "no text layer (scanned?): OCR is not configured"),
    "unstructured/stanley-cups-utf-16.csv": (OK, ["Team: Maple Leafs\nLocation: TOR\nStanley Cups: 13"], []),
    "unstructured/stanley-cups-with-emoji.csv": (OK, ["Team: 👨", "Stanley Cups: 15"], []),
    "unstructured/stanley-cups.csv": (OK, ["Team: Maple Leafs\nLocation: TOR\nStanley Cups: 13"], []),
    "unstructured/stanley-cups.tsv": (OK, ["Team: Maple Leafs\nLocation: TOR\nStanley Cups: 13"], []),
    "unstructured/stanley-cups.xlsx": (OK, ["Team: Maple Leafs\nLocation: TOR\nStanley Cups: 13"],
                                       ["Stanley Cups", "Stanley Cups Since 67"]),
    "unstructured/table-multi-row-column-cells-actual.csv": (OK, ["Disability Category: Low Vision"], []),
    "unstructured/umlauts-non-utf8.md": (OK, ["können\n\näöüß"], ["können"]),
    "unstructured/umlauts-utf8.md": (OK, ["können\n\näöüß"], ["können"]),
}
# Text that must not survive loading (page furniture, scripts).
SHARED_ABSENT = {
    "unstructured/docx-hdrftr.docx": ["First header para", "para1"],
    "unstructured/example-with-scripts.html": ["switchTo5x", "text/javascript"],
}
PAGES = {
    "chatchat_zh/langchain.pdf": list(range(1, 9)),
    "unstructured/layout-parser-paper-fast.pdf": [1, 2],
    "unstructured/multi-column-2p.pdf": [1, 2],
    "pymupdf_zh/chinese-tables.pdf": [1],
    "unstructured/fake-power-point.pptx": [1],
}


def test_shared_corpus_table_is_complete():
    if not SHARED_DOCS.is_dir():
        pytest.skip(f"{SHARED_DOCS} not present")
    present = {p.relative_to(SHARED_DOCS).as_posix() for p in SHARED_DOCS.rglob("*") if p.is_file()}
    assert present == set(SHARED), f"new: {sorted(present - set(SHARED))}, gone: {sorted(set(SHARED) - present)}"


@pytest.mark.parametrize("rel", sorted(SHARED))
def test_shared_corpus(rel):
    if not SHARED_DOCS.is_dir():
        pytest.skip(f"{SHARED_DOCS} not present")
    path = SHARED_DOCS / rel
    expected = SHARED[rel]
    if expected[0] == ERR:
        with pytest.raises(LoadError) as info:
            load_document(path)
        assert expected[1] in info.value.reason
        return
    _, phrases, headings = expected
    sections = load_document(path)
    text = text_of(sections)
    assert_clean(text)
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not found"
    found = [s.heading for s in sections if s.heading]
    for heading in headings:
        assert heading in found, f"heading {heading!r} not in {found[:10]}"
    for absent in SHARED_ABSENT.get(rel, []):
        assert absent not in text
    if rel in PAGES:
        assert [s.page for s in sections] == PAGES[rel]
    elif not rel.endswith((".pdf", ".pptx")):
        assert all(s.page is None for s in sections)


# ---------------------------------------------------------------------------------------------------------------
# The sample knowledge base that ships with the project

def test_sample_knowledge_base_loads_and_splits():
    from kb_qa.ingest.splitter import split_sections

    folder = REPO / "knowledge_base" / "samples"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert 4 <= len(files) <= 6 and all(p.suffix in SUPPORTED_EXTENSIONS for p in files)
    assert sum(p.stat().st_size for p in files) < 200 * 1024
    all_text = ""
    for path in files:
        sections = load_document(path)
        chunks = split_sections(sections, path.name)
        assert chunks, path.name
        assert all(len(c.text) <= 300 for c in chunks)
        all_text += text_of(sections)
        assert_clean(text_of(sections))
    for phrase in ("人人生而自由", "All human beings are born free", "PagedAttention", "Genoa and Lucca",
                   "支持的文件格式", "Word | .docx | 保留标题层级和表格"):
        assert phrase in all_text
