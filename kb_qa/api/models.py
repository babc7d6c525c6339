"""Request and response bodies of the HTTP API (pydantic), as the OpenAPI document shows them.

Three families: ChatGLM2's own `api.py` contract (`POST /`), the OpenAI chat-completions subset that clients use,
and knowledge-base management. Bounds are here (lengths, ranges), so out-of-range input is a 422 before any work.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_TEXT = 200_000  # characters in one message/prompt; the 8K-token window is far smaller, this bounds parsing
MAX_TURNS = 256  # history entries / messages in one request
MAX_INPUTS = 2048  # texts in one embeddings request (OpenAI's own limit)
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _valid_unicode(text: str) -> str:
    """JSON may carry a lone surrogate (\\ud800) that no UTF-8 encoder accepts: refuse it here (400) rather than
    fail later in the tokenizer, the store or the reply itself."""
    if _SURROGATE.search(text):
        raise ValueError("text holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid Unicode")
    return text


Unicode = AfterValidator(_valid_unicode)
KBName = Annotated[str, StringConstraints(min_length=1, max_length=64), Unicode]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), Unicode]
Short = Annotated[str, StringConstraints(min_length=1, max_length=200), Unicode]


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and, where there is one, the fix.")
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, conflict_error, "
                                  "rate_limit_error or server_error.")
    param: str | None = Field(default=None, description="The request field at fault, e.g. 'messages[0].content'.")
    code: str | int | None = Field(default=None, description="e.g. model_not_found, server_busy.")


class ErrorBody(BaseModel):
    """OpenAI's error shape, for every error of this API."""

    error: ErrorDetail


ERROR_MEANINGS = {
    400: "Invalid name, parameter or request (e.g. a path that would leave its folder, a question too long for the "
         "window, an unsupported parameter), or a configuration problem (the message says the fix).",
    401: "Missing or wrong API key ('Authorization: Bearer <key>').",
    404: "No such knowledge base, document or model (code model_not_found).",
    409: "The knowledge base is busy (another ingest or edit), already exists, or was built with another "
         "embedding model.",
    413: "The request body or an uploaded file is over its size limit.",
    500: "Unexpected server error (logged); the server keeps serving.",
    429: "The generation queue is full (api.max_queue); retry after Retry-After seconds.",
    502: "The upstream OpenAI-compatible model server failed (llm.backend openai).",
    503: "Waited too long for the model, or out of GPU memory; retry after Retry-After seconds.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, all with OpenAI's `{"error": {...}}` body."""
    return {code: {"model": ErrorBody, "description": ERROR_MEANINGS[code]} for code in codes}


class SourceOut(BaseModel):
    """One retrieved passage: where it is (knowledge base, document path, page, heading) and how close it is."""

    index: int = Field(description="1-based citation number, as the answer cites it: [index].")
    kb: str
    source: str = Field(description="Document path inside its knowledge base.")
    page: int | None = None
    heading: str | None = None
    score: float = Field(description="Relevance in [0, 1], higher = closer.")
    text: str = Field(description="The passage text.")


# -- ChatGLM2 api.py ---------------------------------------------------------------------------------------------
class ChatGLMRequest(BaseModel):
    """ChatGLM2's `api.py` request. `knowledge_base` (extra) answers from that knowledge base with sources."""

    prompt: Text
    history: Annotated[list[tuple[Text, Text]], Field(max_length=MAX_TURNS)] | None = Field(
        default=None, description="[[question, answer], ...], oldest first.")
    max_length: int | None = Field(default=None, ge=1, le=1_000_000,
                                   description="Prompt + answer tokens (ChatGLM2's meaning); capped by the settings.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    knowledge_base: KBName | None = Field(default=None, description="Answer from this knowledge base.")
    top_k: int | None = Field(default=None, ge=1, le=100, description="Passages retrieved (knowledge_base only).")


class ChatGLMResponse(BaseModel):
    response: str
    history: list[tuple[str, str]]
    status: int = 200
    time: str = Field(description="Server time, 'YYYY-mm-dd HH:MM:SS'.")
    sources: list[SourceOut] | None = Field(default=None, description="With knowledge_base only.")
    mode: str | None = Field(default=None, description="'llm', 'retrieval-only', 'no-answer' or 'chat'.")


# -- OpenAI chat completions -------------------------------------------------------------------------------------
class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Annotated[str, StringConstraints(max_length=64)]
    text: Text | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ... are accepted and ignored
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Text | Annotated[list[ContentPart], Field(max_length=64)] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = Field(default=False, description="Send a last chunk with `usage` (and no choices).")


class ChatCompletionRequest(BaseModel):
    """The OpenAI fields clients send; unknown ones are ignored. The knowledge base is chosen by `model`
    (`kb:<name>`) or by the extra field `knowledge_base`; otherwise `model` must be the LLM's id (GET /v1/models).
    Parameters this server cannot honour (`n` > 1, `tools`, `response_format` other than text, `logprobs`) are a
    400 naming the parameter, never silently ignored."""

    model_config = ConfigDict(extra="allow")
    model: Short
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_TURNS)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0, description="0 is treated as greedy decoding.")
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64,
                             description="Same seed, same request, same model: the same sampled answer.")
    n: int | None = Field(default=None, ge=1, le=128, description="Only 1 is supported (400 otherwise).")
    stop: Short | Annotated[list[Short], Field(max_length=4)] | None = Field(
        default=None, description="Up to 4 strings; the answer ends before the first of them.")
    tools: list[Any] | None = Field(default=None, description="Not supported: 400 when non-empty.")
    tool_choice: Any = Field(default=None, description="Only 'none' / 'auto' without tools.")
    functions: list[Any] | None = Field(default=None, description="Not supported: 400 when non-empty.")
    response_format: dict[str, Any] | None = Field(default=None, description="Only {'type': 'text'}.")
    logprobs: bool | None = Field(default=None, description="Not supported: 400 when true.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="Not supported: 400 when > 0.")
    knowledge_base: KBName | None = Field(default=None, description="Extra: answer from this knowledge base.")
    top_k: int | None = Field(default=None, ge=1, le=100, description="Extra: passages retrieved.")
    include_sources: bool | None = Field(
        default=None, description="Extra: append a Markdown 'Sources' block to the answer text (for clients that "
                                  "drop the `sources` field, e.g. langchain-openai); unset = the server's "
                                  "api.sources_block setting.")

    @field_validator("messages")
    @classmethod
    def _last_is_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != "user":
            raise ValueError("the last message must have role 'user'")
        return messages


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] = Field(
        default="stop", description="'length': the answer stopped at max_tokens / max_length or the window.")


class Usage(BaseModel):
    """Tokens counted with the answering model's tokenizer (ChatGLM2's); 0 when no model ran (retrieval-only)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage
    sources: list[SourceOut] | None = Field(default=None, description="Extra: the passages the answer cites.")
    mode: str | None = Field(default=None, description="Extra: 'llm', 'retrieval-only', 'no-answer' or 'chat'.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kb_qa"
    kind: Literal["chat", "knowledge_base", "embedding"] | None = Field(
        default=None, description="Extra: what the id is for (chat completions or embeddings).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- OpenAI embeddings -------------------------------------------------------------------------------------------
class EmbeddingRequest(BaseModel):
    """`model`: the embedding model's id (GET /v1/models), or `kb:<name>` for the model that knowledge base was
    built with. `input`: one text or a list of texts (token-id arrays are refused: they would be another
    tokenizer's ids)."""

    model_config = ConfigDict(extra="allow")
    model: Short
    input: Text | Annotated[list[Any], Field(min_length=1, max_length=MAX_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=65536, description="Must equal the model's dimension.")
    user: Annotated[str, StringConstraints(max_length=256)] | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32 values.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens by the embedding model's own tokenizer.")
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


# -- knowledge bases ---------------------------------------------------------------------------------------------
class KBCreate(BaseModel):
    name: KBName


class KBInfo(BaseModel):
    name: str
    documents: int
    chunks: int
    embedding_model: str | None
    dimension: int | None


class DocumentInfo(BaseModel):
    source: str = Field(description="Path inside the knowledge base; use it to remove the document.")
    chunks: int
    bytes: int
    sha256: str
    updated_at: float = Field(description="Unix time of the last change.")


class FileResult(BaseModel):
    source: str
    status: Literal["added", "updated", "unchanged", "failed", "removed"]
    chunks: int = 0
    reason: str | None = None


class IngestResult(BaseModel):
    kb: str
    files: list[FileResult]
    chunks_embedded: int
    seconds: float


class Deleted(BaseModel):
    deleted: str


class SearchRequest(BaseModel):
    query: Annotated[str, StringConstraints(min_length=1, max_length=10_000), Unicode]
    top_k: int | None = Field(default=None, ge=1, le=100)
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class SearchResult(BaseModel):
    kb: str
    query: str
    results: list[SourceOut]
    took_ms: float


# -- health ------------------------------------------------------------------------------------------------------
class ModelState(BaseModel):
    name: str | None
    state: Literal["loaded", "not-loaded", "loading", "unavailable"]
    detail: str | None = Field(default=None, description="What is loaded, or why nothing is.")


class QueueState(BaseModel):
    model: str
    busy: bool
    waiting: int
    max_queue: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    mode: Literal["llm", "retrieval-only", "starting"] = Field(
        description="'llm': answers are generated; 'retrieval-only': no LLM (see llm.detail); 'starting': the LLM "
                    "is configured and not loaded yet.")
    embedding: ModelState
    llm: ModelState
    generation: QueueState | None = None
