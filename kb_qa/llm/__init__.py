"""The answering model: ChatGLM2-6B as transformers' native GlmForCausalLM (no remote code), or an OpenAI-compatible
endpoint, behind one handle and a LangChain LLM.

    from kb_qa.llm import load_llm
    handle = load_llm(settings.llm)              # None -> retrieval-only (resolve_llm also says why)
    handle.tokenizer.count_tokens(prompt)        # ChatGLM2's real token count, [gMASK] sop included
    for piece in handle.langchain_llm.stream(question, history=[(q, a)]): ...

Modules: config (checkpoint flags -> GlmConfig), weights (streaming name mapping), tokenizer (sentencepiece ids and
the chat prompt), loader (device, dtype, memory check, quantization), generation (streaming, lock, guards),
langchain_llm, openai_backend, factory, convert (`python -m kb_qa.llm.convert SRC DST`).
Importing this package loads neither torch nor transformers.
"""

from kb_qa.llm.factory import ApproxTokenCounter, LLMHandle, load_llm, resolve_llm, retrieval_only_reason
from kb_qa.llm.tokenizer import ChatGLM2Tokenizer, build_chat_prompt

__all__ = [
    "ApproxTokenCounter",
    "ChatGLM2Tokenizer",
    "LLMHandle",
    "build_chat_prompt",
    "load_llm",
    "resolve_llm",
    "retrieval_only_reason",
]
