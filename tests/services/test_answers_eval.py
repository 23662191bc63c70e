"""``longrag eval --suites answers``: every question asked through ``QAPipeline.ask`` per mode,
spans checked against the parsed text, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longrag.services.answers_eval import run_answers_eval
from longrag.services.retrieval_eval import DOCS


def _two_questions(tmp_path: Path) -> Path:
    doc = json.loads(DOCS.read_text(encoding="utf-8"))[0]
    doc["questions"] = doc["questions"][:2]
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([doc]), encoding="utf-8")
    return path


def test_every_question_is_asked_in_every_mode_with_exact_spans(tiny_decoder_dir: Path, tmp_path: Path):
    seen = []
    report = run_answers_eval(decoder=str(tiny_decoder_dir), modes=["plain", "cfic"], docs_path=_two_questions(tmp_path),
                              progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (4, 4) and len(report.rows) == 4
    assert [(r.mode, r.error) for r in report.rows] == [("plain", None)] * 2 + [("cfic", None)] * 2
    assert all(r.exact and r.total_ms > 0 for r in report.rows)  # every cited span indexes the text
    [plain, cfic] = report.summary()
    assert (plain["mode"], cfic["mode"], plain["questions"]) == ("plain", "cfic", 2)
    assert 0 <= plain["evidence_hit@3"] <= 1 and plain["spans_exact"] is True
    assert "| cfic | 2 |" in report.table()
    json.dumps(report.to_dict())


def test_an_unknown_mode_is_a_clear_error(tiny_decoder_dir: Path):
    with pytest.raises(ValueError, match="unknown mode"):
        run_answers_eval(decoder=str(tiny_decoder_dir), modes=["plane"])
