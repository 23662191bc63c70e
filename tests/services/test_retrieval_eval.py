"""``longrag eval --suites retrieval``: the short-sentence documents, every retriever through
``Corpus.search``, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from longrag.services.retrieval_eval import DOCS, load_docs, run_retrieval_eval


def test_the_documents_hold_each_evidence_once_and_name_the_subject_only_in_the_heading():
    docs = load_docs()
    assert {d["kind"] for d in docs} == {"profiles", "minutes", "contract"}
    for d in docs:
        headings = [line[3:] for line in d["text"].splitlines() if line.startswith("## ")]
        assert len(headings) >= 7 and len(d["questions"]) >= 12
        for q in d["questions"]:
            assert d["text"].count(q["evidence"]) == 1 and q["answer"] in q["evidence"]
            assert not any(h in q["evidence"] for h in headings)  # the sentence alone does not say whose


def test_load_docs_refuses_an_evidence_that_is_not_in_the_text(tmp_path):
    docs = json.loads(DOCS.read_text(encoding="utf-8"))[:1]
    docs[0]["questions"][0]["evidence"] = "A sentence the document does not hold."
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(docs), encoding="utf-8")
    with pytest.raises(ValueError, match="exactly once"):
        load_docs(bad)


@pytest.mark.integration
def test_every_question_is_ranked_by_every_retriever_and_situated_beats_chunk_only():
    seen = []
    report = run_retrieval_eval(retrievers=["chunk", "situated"], progress=lambda d, t: seen.append((d, t)))
    n = sum(len(d["questions"]) for d in load_docs())
    assert len(report.rows) == 2 * n and seen[-1] == (2 * n, 2 * n)
    summary = {(s["doc"], s["retriever"]): s for s in report.summary()}
    chunk, situated = summary[("all", "chunk")], summary[("all", "situated")]
    assert chunk["questions"] == situated["questions"] == n
    assert 0 <= chunk["r@1"] <= chunk["r@3"] <= 1
    # the heading is the context of the chunks under it: measured 0.609 -> 0.783
    assert situated["r@3"] >= chunk["r@3"] + 0.1
    assert "| all | situated |" in report.table()
    json.dumps(report.to_dict())


def test_bad_retriever_and_suite_are_clear_errors():
    with pytest.raises(ValueError, match="unknown retriever"):
        run_retrieval_eval(retrievers=["magic"])
    out = subprocess.run([sys.executable, "-m", "longrag", "eval", "--suites", "nope"], capture_output=True,
                         text=True, env=dict(os.environ), timeout=300)
    assert out.returncode == 2 and "--suites" in out.stderr


@pytest.mark.integration
def test_cli_runs_the_retrieval_suite_alone_as_json(tmp_path):
    out_file = tmp_path / "eval.json"
    out = subprocess.run([sys.executable, "-m", "longrag", "eval", "--suites", "retrieval", "--json",
                          "--out", str(out_file)], capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert set(body) == {"retrieval"} and json.loads(out_file.read_text()) == body
    assert {s["retriever"] for s in body["retrieval"]["summary"]} == {"chunk", "situated", "bm25", "hybrid"}
