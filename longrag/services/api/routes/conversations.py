"""``/v1/conversations``: a conversation over a document set, and questions asked in it."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from longrag.services.api.answers import answer
from longrag.services.api.schemas import ConversationRequest, MessageRequest
from longrag.services.api.state import State
from longrag.services.conversations import standalone_question

router = APIRouter(tags=["conversations"])


@router.post("/v1/conversations", status_code=201)
async def create_conversation(body: ConversationRequest, st: State) -> dict[str, Any]:
    """Start a conversation; follow-up questions go to ``POST /v1/conversations/{id}/messages``."""
    doc_ids = st.corpus.check_docs(body.doc_ids) if body.doc_ids else []
    return (await asyncio.to_thread(st.conversations.create, doc_ids, body.title)).public()


@router.get("/v1/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, st: State) -> dict[str, Any]:
    """The conversation and its turns: each question, its standalone rewrite and the answer JSON."""
    return (await asyncio.to_thread(st.conversations.get, conversation_id)).public()


@router.post("/v1/conversations/{conversation_id}/messages")
async def conversation_message(conversation_id: str, body: MessageRequest, st: State) -> Response:
    """Ask in a conversation: the question is rewritten to stand alone from the turns before it
    (``stats.standalone_question``), answered like ``POST /v1/query`` (streamed with ``stream``),
    and stored as the next turn (``stats.turn``)."""
    conv = await asyncio.to_thread(st.conversations.get, conversation_id)
    payload = body.payload()
    standalone = standalone_question(conv.turns, body.question)
    payload["question"] = standalone
    if "doc_ids" not in payload and conv.doc_ids:
        # documents deleted since the conversation began are left out; its stored turns stay
        payload["doc_ids"] = [d for d in conv.doc_ids if st.corpus.store.exists(d)] or conv.doc_ids

    def store(result: dict[str, Any]) -> dict[str, Any]:
        return st.conversations.record(conversation_id, body.question, standalone, result)

    return await answer(st, payload, stream=body.stream, on_result=store)
