"""Request and response bodies, and the OpenAPI shape of the bodies read by hand."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator


class QueryRequest(BaseModel):
    """A question; the answer has the same JSON shape as ``longrag ask --json``."""

    question: str = Field(description="The question (non-empty).")
    doc_ids: list[str] | None = Field(None, description="Restrict retrieval to these documents.")
    mode: str = Field("plain", description="Answer mode: plain, full, and any registered later.")
    k: int | None = Field(None, ge=1, le=200, description="Passages to retrieve.")
    retriever: str | None = Field(None, description="chunk | situated | bm25 | hybrid (default: the mode's).")
    kv: str | None = Field(None, description="full | sentencekv (default: by context length).")
    link_hop: int | None = Field(None, ge=0, le=50, description=(
        "Title-link hop: top passages read for titles of other documents, whose openings join the "
        "results; 0: off (default: LONGRAG_LINK_HOP)."))
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    options: dict[str, Any] | None = Field(None, description=(
        "The mode's options (GET /v1/modes lists the keys each mode reads; others are refused), e.g. "
        'rapid: {"drafter": "llm", "eta": 20, "tail": 0}.'))
    stream: bool = Field(False, description="Stream tokens as server-sent events.")

    @field_validator("question")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the question is empty")
        return v

    def payload(self) -> dict[str, Any]:
        """The question as a worker task receives it (no ``stream``, no unset fields)."""
        return self.model_dump(exclude={"stream"}, exclude_none=True)


class ConversationRequest(BaseModel):
    """A new conversation over a document set (none: the whole collection)."""

    doc_ids: list[str] | None = Field(None, description="The documents the conversation asks about.")
    title: str | None = Field(None, max_length=200)


class MessageRequest(QueryRequest):
    """A question in a conversation; ``doc_ids`` default to the conversation's."""


class Accepted(BaseModel):
    job_id: str
    doc_id: str | None = None
    state: str
    n_items: int | None = None


# The upload and batch routes read their bodies themselves (several content types); these give
# OpenAPI their shape.
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary"}, "title": {"type": "string"}}}},
            "application/json": {"schema": {"type": "object", "required": ["text"], "properties": {
                "text": {"type": "string"}, "title": {"type": "string"}}}},
        },
    }
}
BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [
                {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "object"}]}},
                {"type": "object", "properties": {"questions": {"type": "array"}}},
            ]}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary", "description": "JSONL, one question a line"}}}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}
