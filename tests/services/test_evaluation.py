"""``longrag eval``: needle documents with exact offsets, the product path per mode, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longrag.services.evaluation import HAYSTACK, NEEDLES, needle_document, run_eval


def _words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("tokens", [1024, 8192])
def test_needle_documents_hold_every_needle_at_spread_depths(tokens: int):
    doc, spans = needle_document(HAYSTACK.read_text(encoding="utf-8"), tokens, NEEDLES, _words)
    assert _words(doc) <= tokens
    for (start, end, depth), needle in zip(spans, NEEDLES):
        assert doc[start:end] == needle.fact
        assert needle.answer.lower() not in HAYSTACK.read_text(encoding="utf-8").lower()  # facts of our own
    depths = [d for _, _, d in spans]
    assert depths[0] == pytest.approx(0.05) and depths[-1] == pytest.approx(0.95)
    starts = [s for s, _, _ in spans]
    assert starts == sorted(starts) and starts[-1] / len(doc) > 0.8


def test_run_eval_asks_every_needle_in_every_mode(tiny_decoder_dir: Path):
    seen = []
    report = run_eval(decoder=str(tiny_decoder_dir), modes=["plain", "full"], lengths=[512], needles=2,
                      progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (4, 4) and len(report.rows) == 4
    assert {(r.mode, r.needle) for r in report.rows} == {("plain", 0), ("plain", 1), ("full", 0), ("full", 1)}
    assert all(r.error is None and r.total_ms > 0 for r in report.rows)
    [plain, full] = report.summary()
    assert (plain["mode"], full["mode"]) == ("plain", "full") and plain["questions"] == 2
    assert full["kv_fraction"] == 1.0  # a full cache holds all of itself
    assert "| plain | 512 | 2 |" in report.table()
    json.dumps(report.to_dict())  # the report is JSON


def test_eval_bad_options_are_clear_errors(tiny_decoder_dir: Path):
    with pytest.raises(ValueError, match="unknown mode"):
        run_eval(decoder=str(tiny_decoder_dir), modes=["plane"], lengths=[512], needles=1)
    with pytest.raises(ValueError, match="needles"):
        run_eval(decoder=str(tiny_decoder_dir), modes=["plain"], lengths=[512], needles=13)
    env = {**os.environ, "LONGRAG_DECODER": str(tiny_decoder_dir)}
    out = subprocess.run([sys.executable, "-m", "longrag", "eval", "--lengths", "2x"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 2 and "--lengths" in out.stderr
    out = subprocess.run([sys.executable, "-m", "longrag", "eval", "--lengths", "100"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 2 and "at least 256" in out.stderr
