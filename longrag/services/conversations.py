"""Conversations: follow-up questions over a document set, stored with their answers.

A follow-up ("And where did he study?") is rewritten into a standalone question before
retrieval, from the conversation so far (:func:`standalone_question`):

1. A question without a pronoun that points back ("he", "she", "it", "they", "there", ...) is
   already standalone.
2. Otherwise the referent is taken from the last turn. A person pronoun ("he", "his", "they",
   ...) points at the last answer when the last question asked for a person ("Who is the
   captain of the Pequod?" "Ahab." "Which whale took off his leg?") or named no one, else at the
   names of the last (standalone) question; "it", "its" and "there" point at the last answer
   (the thing or place it named).
3. Each pointing pronoun is replaced by its referent ("his" -> "Victor Frankenstein's",
   "there" -> "in Ingolstadt"), and a leading "And" / "So" is dropped.

The rewrite is shown in the answer's ``stats.standalone_question``. Turns are stored in the
service's database with the whole answer JSON, so a conversation keeps what it cited
even after a document is deleted.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

from longrag.errors import NotFoundError
from longrag.services.db import Database, Executor, open_database

@dataclass
class Turn:
    question: str  # as the user asked it
    standalone_question: str  # what retrieval and the decoder were given
    answer: dict[str, Any]  # the answer JSON (``longrag ask --json``)
    created_at: float


@dataclass
class Conversation:
    conversation_id: str
    title: str | None
    doc_ids: list[str]  # empty: the whole collection
    created_at: float
    turns: list[Turn] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return asdict(self)


class ConversationStore:
    """Typed access to the ``conversations`` and ``conversation_turns`` tables."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn = db

    def _tx(self) -> AbstractContextManager[Executor]:
        return self._conn.transaction()

    def create(self, doc_ids: Sequence[str] | None = None, title: str | None = None) -> Conversation:
        conv = Conversation(uuid.uuid4().hex, title, list(doc_ids or []), time.time())
        with self._tx() as c:
            c.execute("INSERT INTO conversations (conversation_id, title, doc_ids, created_at) VALUES (?,?,?,?)",
                      (conv.conversation_id, title, json.dumps(conv.doc_ids), conv.created_at))
        return conv

    def get(self, conversation_id: str) -> Conversation:
        row = self._conn.execute("SELECT title, doc_ids, created_at FROM conversations WHERE conversation_id=?",
                                 (conversation_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no conversation with id {conversation_id!r}")
        turns = self._conn.execute(
            "SELECT question, standalone_question, answer, created_at FROM conversation_turns "
            "WHERE conversation_id=? ORDER BY idx", (conversation_id,)).fetchall()
        return Conversation(conversation_id, row[0], json.loads(row[1]), row[2],
                            [Turn(q, s, json.loads(a), t) for q, s, a, t in turns])

    def record(self, conversation_id: str, question: str, standalone: str, answer: dict[str, Any]) -> dict[str, Any]:
        """Store an answered question as the next turn; returns the answer JSON with
        ``stats.standalone_question`` and ``stats.turn`` (its index, 0 for the first)."""
        answer = {**answer, "stats": {**answer.get("stats", {}), "standalone_question": standalone}}
        answer["stats"]["turn"] = self.add_turn(conversation_id, question, standalone, answer)
        return answer

    def add_turn(self, conversation_id: str, question: str, standalone: str, answer: dict[str, Any]) -> int:
        """Append a turn; returns its index (0 for the first)."""
        with self._tx() as c:
            if c.execute("SELECT 1 FROM conversations WHERE conversation_id=?", (conversation_id,)).fetchone() is None:
                raise NotFoundError(f"no conversation with id {conversation_id!r}")
            idx = c.execute("SELECT COUNT(*) FROM conversation_turns WHERE conversation_id=?",
                            (conversation_id,)).fetchone()[0]
            c.execute("INSERT INTO conversation_turns (conversation_id, idx, question, standalone_question, answer, "
                      "created_at) VALUES (?,?,?,?,?,?)",
                      (conversation_id, idx, question, standalone, json.dumps(answer, ensure_ascii=False), time.time()))
        return idx


_stores: dict[str, ConversationStore] = {}
_stores_lock = threading.Lock()


def get_conversations(settings: Any) -> ConversationStore:
    """The per-process conversation store of the configured database."""
    db = open_database(settings)
    with _stores_lock:
        store = _stores.get(db.url)
        if store is None or store.db is not db:
            store = _stores[db.url] = ConversationStore(db)
        return store


# -- follow-up rewriting ---------------------------------------------------------------------
_PERSON = {"he": "", "him": "", "she": "", "they": "", "them": "", "his": "'s", "her": "", "their": "'s",
           "hers": "'s", "theirs": "'s"}
_THING = {"it": "", "its": "", "there": "in "}
_POINTING = re.compile(r"\b(" + "|".join(sorted({*_PERSON, *_THING}, key=len, reverse=True)) + r")\b", re.I)
_ASKS_PERSON = re.compile(r"\s*(who|whom)\b", re.I)
_POSSESSED = re.compile(r"\s+(?!(?:to|in|at|and|or|with|for|of|about|from|by|on|as|the|a|an|that|if|when)\b)[a-z]")
_LEAD = re.compile(r"^\s*(and|so|then|also)\b[,\s]*", re.I)
_NAME = re.compile(r"(?:(?:Mr|Mrs|Ms|Miss|Dr|St|Sir|Lady|Lord|Captain|Professor)\.?\s+)?"
                   r"[A-Z][\w'’-]+(?:\s+(?:(?:de|of|van|von|the)\s+)?[A-Z][\w'’-]+)*")
_QUESTION_WORDS = frozenset({"who", "whom", "whose", "what", "which", "where", "when", "why", "how", "is", "are",
                             "was", "were", "does", "did", "do", "can", "in", "on", "at", "and", "the", "a", "an"})


def names_in(text: str) -> list[str]:
    """Capitalised names in ``text`` (titles kept, possessive ``'s`` and question words dropped)."""
    out = []
    for m in _NAME.finditer(text):
        name = re.sub(r"['’]s$", "", m.group(0))
        words = name.split()
        while words and words[0].lower() in _QUESTION_WORDS:
            words = words[1:]
        if words:
            out.append(" ".join(words))
    return out


def standalone_question(history: Sequence[Turn], question: str) -> str:
    """The follow-up ``question`` rewritten to stand alone, given the conversation so far."""
    if not history or not _POINTING.search(question):
        return question.strip()
    last = history[-1]
    answer = (last.answer.get("answer") or "").strip().rstrip(".")
    named = names_in(last.standalone_question)
    asked_person = bool(_ASKS_PERSON.match(last.standalone_question))
    person = (answer if asked_person or not named else named[0]) or (named[0] if named else None)
    thing = answer or (named[0] if named else None)

    def swap(m: re.Match[str]) -> str:
        word = m.group(1).lower()
        if word in _PERSON and person:
            possessive = word == "her" and _POSSESSED.match(m.string, m.end()) is not None  # "her residence"
            return person + ("'s" if possessive else _PERSON[word])
        if word in _THING and thing:
            return _THING[word] + thing + ("'s" if word == "its" else "")
        return m.group(0)

    rewritten = _POINTING.sub(swap, _LEAD.sub("", question.strip()))
    return rewritten[:1].upper() + rewritten[1:]
