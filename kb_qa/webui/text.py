"""The web page's words in English and Chinese, and which language a question is in.

The page is written in English; `translate(text, lang)` returns the Chinese of an English string (the string
itself when there is none, or for English). Strings with `{fields}` are translated first, then formatted.
Messages about an answer (no answer found, retrieval-only, stopped) follow the question's language, not the
interface's: `question_language`.
"""

from __future__ import annotations

LANGUAGES = {"en": "English", "zh": "中文"}

ZH = {
    "Ask questions about your own documents.": "就你自己的文档提问。",
    "Interface language": "界面语言",
    "Knowledge bases to ask": "要提问的知识库",
    "Choose one or several": "选择一个或多个",
    "Create one first": "请先创建知识库",
    "Answers search every selected knowledge base.": "回答会检索所有选中的知识库。",
    "Answer settings": "回答设置",
    "Passages (top_k)": "段落数 (top_k)",
    "Score threshold": "分数阈值",
    "Hybrid search (vectors + keywords)": "混合检索（向量 + 关键词）",
    "Temperature": "温度",
    "Max answer tokens": "最长回答（token）",
    "History rounds": "历史轮数",
    "Models": "模型",
    "Conversations": "对话",
    "New conversation": "新对话",
    "Delete conversation": "删除对话",
    "Your name (keeps your conversations on every browser)": "你的名字（在任何浏览器上保留你的对话）",
    "Chat": "对话",
    "Knowledge bases": "知识库",
    "Choose a knowledge base to ask in the sidebar, or create one under **Knowledge bases**.":
        "请在侧栏选择要提问的知识库，或在 **知识库** 中创建一个。",
    "Asking: {kbs}": "提问范围：{kbs}",
    "Ask a question about your documents…": "就你的文档提问…",
    "Export (.md)": "导出 (.md)",
    "Stop": "停止",
    "searching…": "检索中…",
    "generating…": "生成中…",
    "waiting for the model (another answer is being generated)…": "等待模型（正在生成另一个回答）…",
    "Regenerate": "重新生成",
    "Copy": "复制",
    "Sources": "来源",
    "Searched for: {query}": "检索语句：{query}",
    "Nothing on this page is lost: it is saved again at the next answer or change.":
        "本页内容没有丢失：下次回答或更改时会再次保存。",
    "View source": "查看来源",
    "Download the original": "下载原文件",
    "The original file is not in the knowledge base folder.": "原文件不在知识库文件夹中。",
    "New knowledge base": "新建知识库",
    "Name": "名称",
    "Chunk size (characters)": "分块大小（字符）",
    "Chunk overlap (characters)": "分块重叠（字符）",
    "Embedding model": "嵌入模型",
    "Create": "创建",
    "Knowledge base": "知识库",
    "Upload documents": "上传文档",
    "Files (up to {mb} MiB each)": "文件（每个最多 {mb} MiB）",
    "Add to {kb}": "添加到 {kb}",
    "Choose one or more files first.": "请先选择文件。",
    "Documents": "文档",
    "No documents yet.": "还没有文档。",
    "Document": "文档",
    "Remove document": "删除文档",
    "Rebuild index": "重建索引",
    "Remove '{doc}' from {kb} and delete its file?": "从 {kb} 删除 “{doc}” 并删除其文件？",
    "Yes, remove": "确认删除",
    "Cancel": "取消",
    "Not indexed": "未入库",
    "Remove file": "删除文件",
    "Delete this knowledge base": "删除此知识库",
    "Delete knowledge base": "删除知识库",
    "Chunks of the selected document": "所选文档的分块",
    "Feedback": "反馈",
    "Download ratings (.jsonl)": "下载评价 (.jsonl)",
    "Download 👍 as an evaluation set (.zip)": "将 👍 下载为评测集 (.zip)",
}

# Messages about one answer, in the question's language.
ANSWER_NOTES = {
    "retrieval-only": {
        "en": "Retrieval only: no language model is loaded, so these are the best-matching passages.",
        "zh": "仅检索：未加载语言模型，以下是最相关的段落。",
    },
    "no-answer": {
        "en": "Nothing in the selected knowledge bases was relevant enough to answer from.",
        "zh": "知识库中未找到相关内容。",
    },
    "chat": {
        "en": "Answered without documents (nothing relevant was found).",
        "zh": "未找到相关文档，以下回答未参考知识库。",
    },
    "stopped": {"en": "Stopped: the answer is what was generated until then.",
                "zh": "已停止：以上为停止前生成的内容。"},
    "interrupted": {"en": "Answering stopped before it finished.", "zh": "回答在完成前中断。"},
    "failed": {"en": "Answering failed: {error}", "zh": "回答失败：{error}"},
}


def translate(text: str, lang: str) -> str:
    return ZH.get(text, text) if lang == "zh" else text


def question_language(text: str) -> str:
    """'zh' when the question has CJK characters and they are at least a fifth of its letters, else 'en'."""
    cjk = sum(1 for ch in text if "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff")
    letters = sum(1 for ch in text if ch.isalpha())
    return "zh" if cjk and cjk * 5 >= letters else "en"


def answer_note(kind: str, lang: str, **fields: str) -> str:
    note = ANSWER_NOTES.get(kind)
    if not note:
        return ""
    return note.get(lang, note["en"]).format(**fields)
