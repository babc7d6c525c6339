"""Request and response bodies of the HTTP API (pydantic), as the OpenAPI document shows them.

Three families: ChatGLM2's own `api.py` contract (`POST /`), the OpenAI chat-completions subset that clients use,
and knowledge-base management. Bounds are here (lengths, ranges), so out-of-range input is a 422 before any work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_TEXT = 200_000  # characters in one message/prompt; the 8K-token window is far smaller, this bounds parsing
MAX_TURNS = 256  # history entries / messages in one request
KBName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]


class ErrorBody(BaseModel):
    detail: Any = Field(description="What went wrong: a message, or a list of validation errors (422).")


ERROR_MEANINGS = {
    400: "Invalid name or request (e.g. a path that would leave its folder, a question too long for the window).",
    401: "Missing or wrong API key ('Authorization: Bearer <key>').",
    404: "No such knowledge base or document.",
    409: "The knowledge base is busy (another ingest or edit), already exists, or was built with another "
         "embedding model.",
    413: "The request body or an uploaded file is over its size limit.",
    500: "Unexpected server error (logged); the server keeps serving.",
    503: "No language model loaded (retrieval-only), or the generation queue is full (Retry-After).",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, all with the `{"detail": ...}` body."""
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


class ChatCompletionRequest(BaseModel):
    """The OpenAI fields clients send; unknown ones are ignored. The knowledge base is chosen by `model`
    (`kb:<name>`) or by the extra field `knowledge_base`; any other model name is plain chat with the LLM."""

    model_config = ConfigDict(extra="allow")
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_TURNS)]
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0, description="0 is treated as greedy decoding.")
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    n: int | None = Field(default=None, ge=1, le=1, description="Only 1 is supported.")
    stop: Annotated[str, StringConstraints(min_length=1, max_length=200)] | Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=200)]], Field(max_length=4)] | None = Field(
        default=None, description="Up to 4 strings; the answer ends before the first of them.")
    knowledge_base: KBName | None = Field(default=None, description="Extra: answer from this knowledge base.")
    top_k: int | None = Field(default=None, ge=1, le=100, description="Extra: passages retrieved.")

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
    finish_reason: Literal["stop", "length"] = "stop"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    sources: list[SourceOut] | None = Field(default=None, description="Extra: the passages the answer cites.")
    mode: str | None = Field(default=None, description="Extra: 'llm', 'retrieval-only', 'no-answer' or 'chat'.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kb_qa"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


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
    query: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
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
