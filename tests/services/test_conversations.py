"""Conversations: follow-up rewriting, the store, and the REST routes over a real uvicorn.

The tiny random decoder answers (the contract matters here, not answer quality).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from http_helpers import DOC, serve, sse_events, wait_job

from longrag.config import Settings, get_settings
from longrag.errors import NotFoundError
from longrag.services.conversations import ConversationStore, Turn, names_in, standalone_question
from longrag.services.db import connect, database_url

pytestmark = pytest.mark.usefixtures("each_backend")  # SQLite and PostgreSQL


def _turn(question: str, answer: str, standalone: str | None = None) -> Turn:
    return Turn(question, standalone or question, {"answer": answer}, 0.0)


def test_follow_ups_are_rewritten_from_the_last_turn():
    first = _turn("Where did Victor Frankenstein study?", "Ingolstadt")
    assert standalone_question([first], "And what did he build there?") == \
        "What did Victor Frankenstein build in Ingolstadt?"
    assert standalone_question([first], "What was his mother's name?") == "What was Victor Frankenstein's mother's name?"
    # after a question for a person, the person is its answer
    captain = _turn("Who is the captain of the Pequod?", "Ahab")
    assert standalone_question([captain], "Which whale took off his leg?") == "Which whale took off Ahab's leg?"
    patroness = _turn("Who is Mr. Collins's patroness?", "Lady Catherine de Bourgh")
    assert standalone_question([patroness], "What is the name of her residence?") == \
        "What is the name of Lady Catherine de Bourgh's residence?"
    assert standalone_question([patroness], "Whom does Mr. Collins marry after visiting her?") == \
        "Whom does Mr. Collins marry after visiting Lady Catherine de Bourgh?"
    residence = _turn("What is the name of her residence?", "Rosings",
                      "What is the name of Lady Catherine de Bourgh's residence?")
    assert standalone_question([patroness, residence], "Who is her nephew?") == "Who is Lady Catherine de Bourgh's nephew?"
    # a question that named no one: the person is the last answer
    assert standalone_question([_turn("What was found in the safe?", "Mr. Utterson's will.")], "Where is it now?") == \
        "Where is Mr. Utterson's will now?"
    # standalone questions and first questions pass through
    assert standalone_question([first], "Which ship picks up Ishmael?") == "Which ship picks up Ishmael?"
    assert standalone_question([first], "What is the name of the ship that sank?") == \
        "What is the name of the ship that sank?"
    assert standalone_question([], "Where did he live?") == "Where did he live?"


def test_names_in_drops_question_words_and_possessives():
    assert names_in("Who is Mr. Collins's patroness?") == ["Mr. Collins"]
    assert names_in("Where does Lady Catherine de Bourgh live?") == ["Lady Catherine de Bourgh"]
    assert names_in("What is the capital?") == []


def test_store_round_trip_and_unknown_ids(tmp_path: Path):
    store = ConversationStore(connect(database_url(get_settings())))
    conv = store.create(["d1"], "notes")
    assert store.add_turn(conv.conversation_id, "Who?", "Who?", {"answer": "A"}) == 0
    assert store.add_turn(conv.conversation_id, "Where did he go?", "Where did A go?", {"answer": "B"}) == 1
    got = ConversationStore(connect(database_url(get_settings()))).get(conv.conversation_id)  # another connection
    assert got.doc_ids == ["d1"] and got.title == "notes"
    assert [(t.question, t.standalone_question, t.answer["answer"]) for t in got.turns] == \
        [("Who?", "Who?", "A"), ("Where did he go?", "Where did A go?", "B")]
    with pytest.raises(NotFoundError):
        store.get("nope")
    with pytest.raises(NotFoundError):
        store.add_turn("nope", "Who?", "Who?", {})


def test_three_turn_conversation_over_http(tmp_path: Path, tiny_decoder_dir: Path):
    settings = Settings(data_dir=tmp_path / "conv", decoder=str(tiny_decoder_dir), broker_url=None, api_key=None,
                        answer_checks=False, max_new_tokens=6, top_k=2)
    with serve(settings) as api:
        up = api.post("/v1/documents", json={"text": DOC, "title": "Cape Wrath"}).json()
        assert wait_job(api, up["job_id"])["state"] == "succeeded"
        doc_id = up["doc_id"]
        r = api.post("/v1/conversations", json={"doc_ids": [doc_id], "title": "lighthouse"})
        assert r.status_code == 201, r.text
        cid = r.json()["conversation_id"]
        assert r.json()["turns"] == [] and r.json()["doc_ids"] == [doc_id]

        one = api.post(f"/v1/conversations/{cid}/messages", json={"question": "Who kept the lighthouse of Cape Wrath?"})
        assert one.status_code == 200, one.text
        assert one.json()["stats"]["standalone_question"] == "Who kept the lighthouse of Cape Wrath?"
        assert one.json()["stats"]["turn"] == 0
        assert all(DOC[e["start"]:e["end"]] == e["text"] for e in one.json()["evidence"])
        two = api.post(f"/v1/conversations/{cid}/messages", json={"question": "And when was it built?"}).json()
        assert two["stats"]["turn"] == 1 and "it" not in two["stats"]["standalone_question"].split()
        with api.stream("POST", f"/v1/conversations/{cid}/messages",
                        json={"question": "Where did he live?", "stream": True}) as resp:
            assert resp.status_code == 200
            events = list(sse_events(resp))
        assert events[-1][0] == "result" and events[-1][1]["stats"]["turn"] == 2
        assert events[-1][1]["stats"]["standalone_question"].startswith("Where did ")

        hist = api.get(f"/v1/conversations/{cid}").json()
        assert [t["question"] for t in hist["turns"]] == \
            ["Who kept the lighthouse of Cape Wrath?", "And when was it built?", "Where did he live?"]
        assert [t["standalone_question"] for t in hist["turns"]] == \
            [one.json()["stats"]["standalone_question"], two["stats"]["standalone_question"],
             events[-1][1]["stats"]["standalone_question"]]
        assert hist["turns"][0]["answer"]["answer"] == one.json()["answer"]

        # deleting the cited document keeps the history; a new question is a clear 404
        assert api.delete(f"/v1/documents/{doc_id}").status_code == 200
        kept = api.get(f"/v1/conversations/{cid}").json()
        assert kept["turns"] == hist["turns"]
        gone = api.post(f"/v1/conversations/{cid}/messages", json={"question": "Who?"})
        assert gone.status_code == 404 and doc_id in gone.json()["error"]["message"]
        assert len(api.get(f"/v1/conversations/{cid}").json()["turns"]) == 3  # a failed turn is not stored

        # bad input: unknown conversation, unknown document, empty question
        assert api.get("/v1/conversations/nope").status_code == 404
        miss = api.post("/v1/conversations/nope/messages", json={"question": "Who?"})
        assert miss.status_code == 404 and miss.json()["error"]["code"] == "not_found"
        assert api.post("/v1/conversations", json={"doc_ids": ["0123456789abcdef"]}).status_code == 404
        assert api.post(f"/v1/conversations/{cid}/messages", json={"question": "  "}).status_code == 422
